"""Custom routes for ``langgraph dev`` (``langgraph.json`` ``http.app``): ``GET /sandbox/threads/{id}``
shows what a Studio thread's demo world (the fake GHL and Retell) received. See
``ghl_real_estate_ai.sandbox.api``."""

from ghl_real_estate_ai.sandbox.api import create_app
from ghl_real_estate_ai.sandbox.studio import server_worlds

app = create_app(server_worlds())
