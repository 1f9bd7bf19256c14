"""The demo worlds over HTTP, beside ``langgraph dev``'s own API (``langgraph.json`` mounts it): what each
Studio thread's fake GHL and Retell received, as the outside world saw it, not as the bot recorded it.

    GET /sandbox/threads/{thread_id}  ->  {"thread_id", "sent": [...], "refused": [...], "notes": [...],
                                           "tasks": [...]}   (404 {"error": ...} before the thread's first
                                                              demo run)
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ghl_real_estate_ai.sandbox.fakes import FakeCrm, Sent
from ghl_real_estate_ai.sandbox.world import Worlds
from ghl_real_estate_ai.sequence import iso


def sent_view(sent: Sent) -> dict[str, Any]:
    """One send (or refused attempt) as JSON: when the bot sent it (virtual time), for which step, under
    which send key, and what it said."""
    view: dict[str, Any] = {
        "contact_id": sent.contact_id,
        "channel": sent.channel,
        "at": iso(sent.at),
        "step": sent.step,
        "key": sent.key,
        "id": sent.id,
        "body": sent.body,
    }
    if sent.subject is not None:
        view["subject"] = sent.subject
    if sent.metadata:
        view["metadata"] = sent.metadata
    if sent.refused:
        view["refused"] = sent.refused
    return view


def create_app(worlds: Worlds) -> Starlette:
    async def thread_world(request: Request) -> JSONResponse:
        thread_id = request.path_params["thread_id"]
        world = worlds.demo_of(thread_id)
        if world is None or not isinstance(world.crm, FakeCrm):
            return JSONResponse(
                {"error": f"no demo world for thread {thread_id}: it has not run on the demo world yet"},
                status_code=404,
            )
        crm = world.crm
        return JSONResponse({
            "thread_id": thread_id,
            "sent": [sent_view(s) for s in crm.sent],
            "refused": [sent_view(s) for s in crm.refused],
            "notes": [{"contact_id": cid, "body": body} for cid, body in crm.notes],
            "tasks": list(crm.tasks),
        })

    return Starlette(routes=[Route("/sandbox/threads/{thread_id}", thread_world, methods=["GET"])])
