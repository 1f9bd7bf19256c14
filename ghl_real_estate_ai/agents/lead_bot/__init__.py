"""The Lead Bot graph: state, context, routing, nodes and the builder."""

from ghl_real_estate_ai.agents.lead_bot.builder import build_graph
from ghl_real_estate_ai.agents.lead_bot.context import Context, Rules
from ghl_real_estate_ai.agents.lead_bot.state import Event, LeadState

__all__ = ["Context", "Event", "LeadState", "Rules", "build_graph"]
