"""Message-IDs: made once per outbox message, read back from the headers of bounces and replies."""

from __future__ import annotations

from mailer.outbound.messages import make_message_id, message_ids_in, outbox_id_of, replied_to

SECRET = "test-secret-key-0123456789"


def test_a_message_id_names_its_outbox_row_and_only_with_our_key() -> None:
    made = make_message_id(SECRET, 4711, "therapycentral.example")
    assert made.startswith("<4711.") and made.endswith("@therapycentral.example>")
    assert outbox_id_of(SECRET, made) == 4711
    assert outbox_id_of(SECRET, f"  {made}\r\n") == 4711  # as a header value may carry it
    assert outbox_id_of("another-key", made) is None
    forged = made.replace("<4711.", "<4712.")
    assert outbox_id_of(SECRET, forged) is None
    assert outbox_id_of(SECRET, "<CAF=abc123@mail.gmail.com>") is None
    assert outbox_id_of(SECRET, None) is None and outbox_id_of(SECRET, "") is None


def test_ids_are_read_from_folded_header_values_in_order_once() -> None:
    value = "<a@x.example>\r\n <b@y.example> <a@x.example>\tnot-an-id <c@z.example>"
    assert message_ids_in(value) == ["<a@x.example>", "<b@y.example>", "<c@z.example>"]
    assert message_ids_in(None) == []


def test_a_reply_names_the_message_it_answers_first() -> None:
    first, second = (make_message_id(SECRET, n, "therapycentral.example") for n in (10, 20))
    stranger = "<x1@mail.example>"
    # In-Reply-To names the message answered; References run oldest first.
    assert replied_to(SECRET, second, f"{first} {stranger} {second}") == [20, 10]
    # A client that keeps only References: the newest of ours comes first.
    assert replied_to(SECRET, None, f"{first} {second} {stranger}") == [20, 10]
    assert replied_to(SECRET, stranger, stranger) == []
