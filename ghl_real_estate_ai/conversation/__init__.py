"""Conversation: what a lead's reply means (``intents``), what to answer (``templates``, ``responders``) and
the comparable-sales estimate (``cma``). Pure parts the graph's conversation nodes are built on."""

from ghl_real_estate_ai.conversation.cma import (
    CompsProvider,
    CsvCompsProvider,
    ListCompsProvider,
    NoComparablesError,
    Sale,
    Subject,
    Valuation,
    estimate,
    select_comparables,
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
    "CompsProvider",
    "CsvCompsProvider",
    "Intent",
    "LLMResponder",
    "ListCompsProvider",
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
    "estimate",
    "select_comparables",
    "subject_from_contact",
]
