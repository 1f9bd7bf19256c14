"""The send window guard: a send may only *leave* while the lead's send window is still open.

A step node decides to send inside the lead's allowed hours, but the request can leave much later: the
rate limiter may hold it, a 429 or 5xx answer is retried after a backoff. At a high time scale a second of
waiting is a virtual day; at any scale a retry can cross the window's end. So the node sets a guard for
the duration of its send (:func:`send_window`), and the GHL and Retell clients call
:func:`check_send_window` right before each attempt of a send: when the window has closed meanwhile they
raise :class:`~ghl_real_estate_ai.errors.SendWindowClosedError` instead of sending (nothing left, so the
node can defer the step to the next window).

The guard travels in a ``ContextVar``, so it reaches the clients through any wrapper without widening the
``Crm``/``VoiceCaller`` protocols, and concurrent runs of other leads never see each other's guard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ghl_real_estate_ai.errors import SendWindowClosedError

# Returns None while a send may leave, or why it may not.
WindowCheck = Callable[[], str | None]

_current: ContextVar[WindowCheck | None] = ContextVar("lead_bot_send_window", default=None)


@contextmanager
def send_window(check: WindowCheck) -> Iterator[None]:
    """Guard every send attempt made inside the block with ``check``."""
    token = _current.set(check)
    try:
        yield
    finally:
        _current.reset(token)


def check_send_window(service: str, operation: str) -> None:
    """Raise ``SendWindowClosedError`` when a guard is set and says the window has closed."""
    check = _current.get()
    if check is None:
        return
    why = check()
    if why is not None:
        raise SendWindowClosedError(service, operation, why)
