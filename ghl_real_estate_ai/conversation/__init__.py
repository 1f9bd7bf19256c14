"""Conversation: what a lead's reply means (``intents``), what to answer (``templates``, ``responders``) and
the CMA (``cma``: subjects, sales and valuations; ``appraisal``: the estimate). Pure parts the graph's
conversation nodes are built on."""

from ghl_real_estate_ai.conversation.cma import (
    NoComparablesError,
    Sale,
    Subject,
    Valuation,
    subject_from_contact,
)
from ghl_real_estate_ai.conversation.intents import COMPLIANCE_INTENTS, Classification, Intent, classify
from ghl_real_estate_ai.conversation.responders import (
    LLMResponder,
    Reply,
    Responder,
    RuleResponder,
    Turn,
    build_chat_model,
)

__all__ = [
    "COMPLIANCE_INTENTS",
    "Classification",
    "Intent",
    "LLMResponder",
    "NoComparablesError",
    "Reply",
    "Responder",
    "RuleResponder",
    "Sale",
    "Subject",
    "Turn",
    "Valuation",
    "build_chat_model",
    "classify",
    "subject_from_contact",
]
