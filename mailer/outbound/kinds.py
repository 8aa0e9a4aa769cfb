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
    from mailer.outbound.store import Claimed


@dataclass(frozen=True, slots=True)
class MessageKind:
    """One kind of message. `prepare` raises LookupError when the message cannot be made (a deleted
    campaign): the rows that needed it are skipped with that reason."""

    # The send-time consent re-check: "campaign", "followup" or "confirm" (store.RECHECK_SQL).
    consent: str
    # The rows that share one prepared message (a campaign id, a sequence step): prepared once per run.
    shared_by: Callable[[Claimed], Hashable]
    prepare: Callable[[Session, Claimed], PreparedMessage]
    # One recipient's display name (To) and personal values (the placeholders: name, links).
    personalise: Callable[[Claimed], tuple[str, dict[str, str]]]


Kinds = Mapping[str, MessageKind]
