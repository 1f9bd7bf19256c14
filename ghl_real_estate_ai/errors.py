"""The Lead Bot's one exception tree.

    LeadBotError                      base of everything the bot raises on purpose
    ├── ConfigurationError            a setting is missing or malformed; fix the environment
    │   └── StudioSettingError        the same, for a run in LangGraph Studio (also a ValueError)
    ├── InvalidEventError             an event or request body the bot cannot accept (maps to a 4xx)
    ├── LeadNotFoundError             no sequence exists for that contact id
    ├── LockTimeoutError              another run holds the lead's lock for too long
    └── IntegrationError              a call to GHL or Retell failed; ``transient`` says whether to retry
        ├── TransientIntegrationError 429, 5xx, timeouts, connection errors: retry later
        │   ├── OutcomeUnknownError   the request left but no answer came: it may have been carried out
        │   └── SendWindowClosedError the lead's send window closed before the send could leave (not sent)
        └── PermanentIntegrationError other 4xx: retrying cannot help
            ├── AuthenticationError   401/403 that a token refresh did not fix
            ├── NotFoundError         the contact (or other resource) does not exist
            └── SendBlockedError      the provider refused the send (for example DND is active)

HTTP clients translate transport and status errors into this tree once, at the boundary; nodes and the
scheduler only ever look at ``IntegrationError.transient`` and ``IntegrationError.outcome_unknown`` (a send
whose outcome is unknown is never retried blindly: the step nodes read the provider back first).
"""

from __future__ import annotations


class LeadBotError(Exception):
    """Base class of every error the Lead Bot raises on purpose."""


class ConfigurationError(LeadBotError):
    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class StudioSettingError(ConfigurationError, ValueError):
    """A ``ConfigurationError`` met by a run under ``langgraph dev`` (a Studio setting, the input, or the
    environment the live world needs). It is a ``ValueError`` too because the LangGraph server shows the
    message of ``ValueError``s to the user and replaces any other exception's with "An internal error
    occurred"."""


class InvalidEventError(LeadBotError):
    """An event, webhook body or command argument that the bot cannot accept."""


class LeadNotFoundError(LeadBotError):
    def __init__(self, contact_id: str) -> None:
        self.contact_id = contact_id
        super().__init__(f"no lead sequence for contact {contact_id!r}; enroll it first")


class LockTimeoutError(LeadBotError):
    def __init__(self, contact_id: str, seconds: float) -> None:
        self.contact_id = contact_id
        self.seconds = seconds
        super().__init__(f"lead {contact_id!r} is busy: its lock was not free within {seconds:g}s")


class IntegrationError(LeadBotError):
    """A call to an external API failed."""

    transient: bool = False
    outcome_unknown: bool = False

    def __init__(self, service: str, operation: str, message: str, *, status: int | None = None) -> None:
        self.service = service
        self.operation = operation
        self.status = status
        self.detail = message
        where = f"{service} {operation}"
        code = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{where} failed{code}: {message}")


class TransientIntegrationError(IntegrationError):
    """Worth retrying later: rate limits, server errors, timeouts, connection failures."""

    transient = True

    def __init__(
        self,
        service: str,
        operation: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(service, operation, message, status=status)
        self.retry_after = retry_after


class OutcomeUnknownError(TransientIntegrationError):
    """A non-idempotent request (a send, a call) may or may not have been carried out: it left the client
    but no answer came back. Retrying may duplicate the effect."""

    outcome_unknown = True


class SendWindowClosedError(TransientIntegrationError):
    """A send was not started because the lead's send window closed while it waited (rate limit, retry
    backoff). Nothing left the client; the step waits for the next window."""


class PermanentIntegrationError(IntegrationError):
    """Retrying cannot help: the request itself is wrong or refused."""


class AuthenticationError(PermanentIntegrationError):
    """The token was rejected, and refreshing it (where possible) did not help."""


class NotFoundError(PermanentIntegrationError):
    """The contact or other resource does not exist."""


class SendBlockedError(PermanentIntegrationError):
    """The provider refused to deliver, for example because DND is active for the channel."""
