"""Entry point for ``langgraph dev`` / Studio: the lead graph compiled WITHOUT a checkpointer (the server
brings its own persistence)."""

from ghl_real_estate_ai.agents.lead_bot import build_graph

graph = build_graph().compile(name="lead_bot")
