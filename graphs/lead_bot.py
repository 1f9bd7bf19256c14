"""Entry point for ``langgraph dev`` / Studio: the lead graph compiled WITHOUT a checkpointer (the server
brings its own persistence). Its context is ``StudioContext`` (plain JSON settings): by default every run
acts on the demo world (in-process fakes of GHL and Retell holding the demo's leads) on a virtual clock;
see ``ghl_real_estate_ai.sandbox.studio``."""

from ghl_real_estate_ai.sandbox.studio import build_studio_graph

graph = build_studio_graph().compile(name="lead_bot")
