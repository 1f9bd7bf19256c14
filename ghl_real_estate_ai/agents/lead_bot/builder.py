"""The uncompiled lead graph. Compile it at the edge: without a checkpointer (``graphs/``), with
``InMemorySaver`` (tests, notebooks, demo) or with the Redis saver (the service).

    START → determine_path ─┬─ enroll / day_3 / day_7 / day_14 / day_30 / nurture / stall_breaker
                            ├─ defer / skip / pause / resume / cancel / opt_out / fail / contact_update
                            └─ converse / human_takeover / call_result (conversation turns)
                            each → END

Every node after the router ends by planning the lead's next step (``sequence.plan``: the step and its
send time, which the scheduler acts on) in the same superstep, so an event costs two supersteps after
its input: the router's decision, then the action with its plan. The Studio graph (``sandbox.studio``) is
this graph with JSON settings as its context and each action followed by ``due_now`` instead of ``END``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from ghl_real_estate_ai.agents.lead_bot.context import Context
from ghl_real_estate_ai.agents.lead_bot.nodes import conversation, operations, sequence
from ghl_real_estate_ai.agents.lead_bot.nodes.common import io_retry
from ghl_real_estate_ai.agents.lead_bot.state import LeadState, combine_updates


class Node(Protocol):
    def __call__(self, state: LeadState, runtime: Runtime[Context]) -> Awaitable[dict[str, Any]]: ...

IO_NODES = {
    "enroll": sequence.enroll,
    "day_3": sequence.day_3,
    "day_7": sequence.day_7,
    "day_14": sequence.day_14,
    "day_30": sequence.day_30,
    "nurture": sequence.nurture,
    "stall_breaker": sequence.stall_breaker,
    "opt_out": operations.opt_out,
    "converse": conversation.converse,
    "call_result": conversation.call_result,
}
PURE_NODES = {
    "defer": sequence.defer,
    "skip": operations.skip,
    "pause": operations.pause,
    "resume": operations.resume,
    "cancel": operations.cancel,
    "fail": operations.fail,
    "contact_update": operations.contact_update,
    "human_takeover": conversation.human_takeover,
}


def then_plan(node: Node) -> Node:
    """``node``, then ``sequence.plan`` on the state as ``node`` leaves it; returns both updates as one."""

    @functools.wraps(node)
    async def run(state: LeadState, runtime: Runtime[Context]) -> dict[str, Any]:
        update = await node(state, runtime)
        after = combine_updates(dict(state), update)
        return combine_updates(update, await sequence.plan(after, runtime))  # type: ignore[arg-type]

    return run


# Wraps a node so that it runs under another context schema: given the node's name and the node (which
# wants ``Runtime[Context]``), returns the node the graph runs (``sandbox.studio``: JSON settings ->
# services).
AnyNode = Callable[..., Awaitable[Any]]
NodeWrapper = Callable[[str, AnyNode], AnyNode]


def build_graph(
    *,
    context_schema: type[Any] = Context,
    wrap_node: NodeWrapper | None = None,
    then: tuple[str, Callable[..., Awaitable[Any]], tuple[str, ...]] | None = None,
    time_scale: float = 1.0,
) -> StateGraph[LeadState, Any]:
    """The lead bot's ``StateGraph`` (uncompiled). By default its nodes take their services from a
    ``Context``; a graph whose context is something else (Studio's JSON settings) passes that
    ``context_schema`` and a ``wrap_node`` that builds the ``Context`` for each node. ``then`` is
    ``(name, node, destinations)``: a node every action node goes to instead of ``END``, which ends the run
    or sends it on with a ``Command`` (Studio's ``due_now`` runs what has come due, as the scheduler
    would). ``time_scale`` is the clock's (virtual seconds per real second): node retries wait in real time,
    so they are scaled to it (see ``io_retry``)."""

    def node_for(name: str, node: AnyNode) -> Any:
        return wrap_node(name, node) if wrap_node is not None else node

    builder: StateGraph[LeadState, Any] = StateGraph(LeadState, context_schema=context_schema)
    targets = (*IO_NODES, *PURE_NODES)
    builder.add_node("determine_path", node_for("determine_path", sequence.determine_path),
                     destinations=targets)
    retry = io_retry(time_scale)
    for name, node in IO_NODES.items():
        builder.add_node(name, node_for(name, then_plan(node)), retry_policy=retry)
    for name, node in PURE_NODES.items():
        builder.add_node(name, node_for(name, then_plan(node)))
    builder.add_edge(START, "determine_path")
    finish = END
    if then is not None:
        finish, finish_node, destinations = then
        builder.add_node(finish, node_for(finish, finish_node), destinations=destinations)
    for name in targets:
        builder.add_edge(name, finish)
    return builder
