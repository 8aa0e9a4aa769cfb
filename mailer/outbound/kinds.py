"""How the send engine makes a message of each kind: the seam where publishing and sequences plug in.

The engine knows no kind by name. The edge (mailer.message_kinds, through Runtime) registers one
MessageKind per outbox `kind`: which rows share one prepared message, how to prepare it (premailer runs
there, once per run), what is personal to each recipient, and which consent rule the send-time
re-check applies. Adding a kind is one more entry in that registry.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mailer.outbound.messages import PreparedMessage
    from mailer.outbound.store import Claimed, RefusalRule


@dataclass(frozen=True, slots=True)
class MessageKind:
    """One kind of message. `prepare` raises LookupError when the message cannot be made (a deleted
    campaign): the rows that needed it are skipped with that reason."""

    # The send-time consent re-check, a key of store.RECHECK_SQL ("campaign", "followup", "confirm", ...).
    consent: str
    # The rows that share one prepared message (a campaign id, a sequence step): prepared once per run.
    shared_by: Callable[[Claimed], Hashable]
    prepare: Callable[[Session, Claimed], PreparedMessage]
    # One recipient's display name (To) and personal values (the placeholders: name, links).
    personalise: Callable[[Claimed], tuple[str, dict[str, str]]]
    # For a message that does not go to the row's contact (a staff notice): its address and the
    # re-check's parameters, learnt when it was prepared; None when it cannot be sent.
    addressed: Callable[[Claimed], tuple[str, dict[str, int | str]] | None] | None = None


class Kinds(dict[str, MessageKind]):
    """The registry: outbox kind -> MessageKind, and what a permanent refusal of a message does to its
    recipient (`refusals`; None: a refused address is suppressed as a hard bounce, nothing more)."""

    def __init__(self, kinds: Mapping[str, MessageKind] | None = None, *,
                 refusals: RefusalRule | None = None) -> None:
        super().__init__(kinds or {})
        self.refusals = refusals
