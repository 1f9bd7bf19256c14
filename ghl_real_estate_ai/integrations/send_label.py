"""What a send is for, as seen by whoever receives it: the step (``day_3``, ``reply``, ``cma``, ...) and the
send key it was claimed under.

``deliver_once`` sets the label around each send. The real GHL and Retell clients have nowhere to put it
(the APIs carry no such field, except Retell's metadata, which carries the key already); the in-process
fakes record it beside every send, so an auditor can tell a duplicate step from two different touches
without trusting the bot's own records. Like the send window guard it travels in a ``ContextVar``, so the
``Crm``/``VoiceCaller`` protocols stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class SendLabel:
    step: str  # "day_3" ... "nurture", "stall_breaker", "reply", "cma", "opt_out_confirmation", ...
    key: str  # the send-ledger key the send was claimed under


_current: ContextVar[SendLabel | None] = ContextVar("lead_bot_send_label", default=None)


@contextmanager
def labelled(step: str, key: str) -> Iterator[None]:
    """Label every send made inside the block."""
    token = _current.set(SendLabel(step, key))
    try:
        yield
    finally:
        _current.reset(token)


def current_label() -> SendLabel | None:
    """The label of the send being made, or None outside ``labelled``."""
    return _current.get()
