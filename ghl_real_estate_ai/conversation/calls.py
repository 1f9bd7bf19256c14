"""What a Retell call result means for the sequence. Pure."""

from __future__ import annotations

from typing import Any, Literal

CallOutcome = Literal["answered_positive", "answered", "voicemail", "no_answer", "failed", "in_progress"]

NO_ANSWER_REASONS = frozenset({"dial_no_answer", "dial_busy", "user_declined", "registered_call_timeout"})
FAILED_REASONS = frozenset(
    {
        "dial_failed",
        "invalid_destination",
        "telephony_provider_permission_denied",
        "telephony_provider_unavailable",
        "sip_routing_error",
        "marked_as_spam",
        "concurrency_limit_reached",
        "no_concurrency_fallback",
        "no_valid_payment",
        "scam_detected",
        "error_user_not_joined",
    }
)
VOICEMAIL_REASONS = frozenset({"voicemail_reached", "ivr_reached"})


def call_outcome(event: str, call: dict[str, Any]) -> CallOutcome:
    """Classify a Retell webhook: ``call_analyzed`` decides answered calls; ``call_ended`` settles calls that
    never connected (there will be no useful analysis for them)."""
    if event == "call_started":
        return "in_progress"
    reason = str(call.get("disconnection_reason") or "")
    analysis = call.get("call_analysis") or {}
    if analysis.get("in_voicemail") or reason in VOICEMAIL_REASONS:
        return "voicemail"
    if reason in NO_ANSWER_REASONS:
        return "no_answer"
    if reason in FAILED_REASONS or reason.startswith("error_"):
        return "failed"
    if event != "call_analyzed":
        return "in_progress"  # answered: wait for the analysis to know how it went
    if analysis.get("call_successful") and analysis.get("user_sentiment") == "Positive":
        return "answered_positive"
    return "answered"
