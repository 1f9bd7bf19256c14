"""The uncompiled lead graph. Compile it at the edge: without a checkpointer (``graphs/``), with
``InMemorySaver`` (tests, notebooks, demo) or with the Redis saver (the service).

    START → determine_path ─┬─ enroll / day_3 / day_7 / day_14 / day_30 / nurture / stall_breaker
                            ├─ defer / skip / pause / resume / cancel / opt_out / fail / contact_update
                            └─ converse / human_takeover / call_result (conversation turns)
                            each → plan_next → END
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from ghl_real_estate_ai.agents.lead_bot.context import Context
from ghl_real_estate_ai.agents.lead_bot.nodes import conversation, operations, sequence
from ghl_real_estate_ai.agents.lead_bot.nodes.common import IO_RETRY
from ghl_real_estate_ai.agents.lead_bot.routing import route_after_determine_path
from ghl_real_estate_ai.agents.lead_bot.state import LeadState

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


def build_graph() -> StateGraph[LeadState, Context]:
    """The lead bot's ``StateGraph`` (uncompiled)."""
    builder: StateGraph[LeadState, Context] = StateGraph(LeadState, context_schema=Context)
    builder.add_node("determine_path", sequence.determine_path)
    for name, node in IO_NODES.items():
        builder.add_node(name, node, retry_policy=IO_RETRY)
    for name, node in PURE_NODES.items():
        builder.add_node(name, node)
    builder.add_node("plan_next", sequence.plan)
    builder.add_edge(START, "determine_path")
    targets = [*IO_NODES, *PURE_NODES]
    builder.add_conditional_edges("determine_path", route_after_determine_path, targets)
    for name in targets:
        builder.add_edge(name, "plan_next")
    builder.add_edge("plan_next", END)
    return builder
