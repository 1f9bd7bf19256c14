"""The Studio graph in-process (compiled with ``InMemorySaver``): its virtual clock, its settings, its worlds.
The same graph under a real ``langgraph dev`` server is ``test_langgraph_dev``."""

from __future__ import annotations

import runpy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from ghl_real_estate_ai.config import Settings
from ghl_real_estate_ai.errors import StudioSettingError
from ghl_real_estate_ai.sandbox.fakes import FakeCrm
from ghl_real_estate_ai.sandbox.studio import StudioContext, build_studio_graph, run_time
from ghl_real_estate_ai.sandbox.world import Worlds
from ghl_real_estate_ai.testing.ghl_server import FakeGHLServer

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # 09:00 in Austin
WALL = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def at(delta_days: float) -> str:
    return (T0 + timedelta(days=delta_days)).isoformat().replace("+00:00", "Z")


ENROLLED: dict[str, Any] = {
    "contact_id": "c1",
    "sequence": {"enrolled_at": at(0), "next_step": "day_7", "next_due_at": at(4)},
    "timeline": [{"at": at(0), "action": "enroll"}, {"at": at(0.5), "action": "day_3"}],
}


@pytest.mark.parametrize(
    ("settings", "state", "expected"),
    [
        # an explicit now wins over everything
        (StudioContext(now="2026-03-10T10:00:00Z"), {**ENROLLED, "event": {"type": "step_due"}},
         datetime(2026, 3, 10, 10, tzinfo=UTC)),
        # an offset-less now is UTC
        (StudioContext(now="2026-03-10T10:00:00"), {**ENROLLED, "event": {"type": "enroll"}},
         datetime(2026, 3, 10, 10, tzinfo=UTC)),
        # then the event's own time
        (StudioContext(), {**ENROLLED, "event": {"type": "inbound_message", "at": at(2)}}, T0 + timedelta(2)),
        # step_due: when the next step is due
        (StudioContext(), {**ENROLLED, "event": {"type": "step_due"}}, T0 + timedelta(4)),
        # no event at all is a step_due
        (StudioContext(), dict(ENROLLED), T0 + timedelta(4)),
        # anything else: wall time
        (StudioContext(), {**ENROLLED, "event": {"type": "inbound_message"}}, WALL),
        # a new thread: wall time
        (StudioContext(), {"contact_id": "c1", "event": {"type": "enroll"}}, WALL),
        # never before what the thread already recorded
        (StudioContext(), {**ENROLLED, "sequence": {"next_step": "day_7", "next_due_at": at(-1)},
                           "event": {"type": "step_due"}}, T0 + timedelta(0.5)),
        (StudioContext(), {**ENROLLED, "timeline": [{"at": "2026-07-01T00:00:00Z"}],
                           "event": {"type": "pause"}}, datetime(2026, 7, 1, tzinfo=UTC)),
        # nothing due (a finished sequence): wall time
        (StudioContext(), {**ENROLLED, "sequence": {"next_step": None, "next_due_at": None},
                           "event": {"type": "step_due"}}, WALL),
    ],
)
def test_the_run_time(settings: StudioContext, state: Any, expected: datetime) -> None:
    assert run_time(settings, state, WALL) == expected


@pytest.mark.parametrize(
    ("fields", "setting"),
    [({"world": "mars"}, "world"), ({"now": "tomorrow"}, "now"), ({"quiet_hours": "9-5"}, "quiet_hours")],
)
def test_bad_settings_name_themselves_in_one_line(fields: dict[str, str], setting: str) -> None:
    with pytest.raises(StudioSettingError) as caught:
        StudioContext(**fields)  # type: ignore[arg-type]
    assert str(caught.value).startswith(f"{setting}: ") and "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)  # the LangGraph server shows a ValueError's message


def test_the_exported_graph_has_only_json_settings_and_no_checkpointer() -> None:
    graph = runpy.run_path(str(ROOT / "graphs" / "lead_bot.py"))["graph"]
    assert graph.checkpointer is None
    schema = graph.get_context_jsonschema()
    assert set(schema["properties"]) == {"world", "now", "quiet_hours", "agent_name", "program_name",
                                         "agent_contact"}
    assert {spec["type"] for spec in schema["properties"].values()} == {"string"}
    assert {"determine_path", "day_3", "day_7", "day_14", "day_30", "nurture", "stall_breaker",
            "due_now"} <= set(graph.get_graph().nodes)


class Studio:
    def __init__(self, worlds: Worlds | None = None) -> None:
        self.worlds = worlds or Worlds()
        self.graph = build_studio_graph(self.worlds).compile(checkpointer=InMemorySaver())

    async def run(self, thread: str, event: dict[str, Any], contact_id: str = "demo-maria",
                  **context: str) -> dict[str, Any]:
        return dict(await self.graph.ainvoke(
            {"contact_id": contact_id, "event": event}, {"configurable": {"thread_id": thread}},
            context=context or None,
        ))

    def crm(self, thread: str) -> FakeCrm:
        crm = self.worlds.get("demo", thread).crm
        assert isinstance(crm, FakeCrm)
        return crm


async def test_enroll_runs_day_3_when_it_is_due_and_step_due_walks_on() -> None:
    studio = Studio()
    values = await studio.run("t", {"type": "enroll"}, now=at(0))
    assert [t["action"] for t in values["timeline"]] == ["enroll", "day_3"]
    sent = studio.crm("t").sent
    assert [(s.step, s.channel, s.at) for s in sent] == [("day_3", "sms", T0)]
    assert "Sam Rivera" in sent[0].body and "Acme Realty" in sent[0].body  # the demo world's names
    values = await studio.run("t", {"type": "step_due"})
    assert values["timeline"][-1]["action"] == "day_7"
    assert [(s.step, s.at) for s in studio.crm("t").sent][-1] == ("day_7", T0 + timedelta(4))


async def test_enroll_in_quiet_hours_waits_for_step_due() -> None:
    studio = Studio()
    night = "2026-03-02T05:00:00Z"  # 23:00 in Austin
    values = await studio.run("t", {"type": "enroll"}, now=night)
    assert [t["action"] for t in values["timeline"]] == ["enroll"]
    assert values["sequence"]["next_due_at"] == "2026-03-02T14:00:00Z"  # 08:00 in Austin
    values = await studio.run("t", {"type": "step_due"})
    assert values["timeline"][-1]["action"] == "day_3"
    assert values["timeline"][-1]["at"] == "2026-03-02T14:00:00Z"


async def test_the_context_settings_reach_the_messages_and_the_window() -> None:
    studio = Studio()
    values = await studio.run("t", {"type": "enroll"}, now=at(0), quiet_hours="10:00-18:00",
                              agent_name="Pat Kim", program_name="Hill Country Homes")
    assert [t["action"] for t in values["timeline"]] == ["enroll"]  # 09:00 in Austin: not yet
    assert values["sequence"]["next_due_at"] == "2026-03-02T16:00:00Z"
    await studio.run("t", {"type": "step_due"}, agent_name="Pat Kim", program_name="Hill Country Homes")
    body = studio.crm("t").sent[0].body
    assert "Pat Kim" in body and "Hill Country Homes" in body


async def test_each_thread_has_its_own_demo_world_and_unknown_ids_get_a_contact() -> None:
    studio = Studio()
    await studio.run("a", {"type": "enroll"}, now=at(0))
    await studio.run("b", {"type": "enroll"}, now=at(0))  # same contact, same time: a separate world
    assert [s.step for s in studio.crm("a").sent] == ["day_3"]
    assert [s.step for s in studio.crm("b").sent] == ["day_3"]
    values = await studio.run("c", {"type": "enroll"}, contact_id="zillow-lead-42", now=at(0))
    assert values["contact"]["last_name"] == "zillow-lead-42"
    assert [s.contact_id for s in studio.crm("c").sent] == ["zillow-lead-42"]


async def test_a_fork_acts_on_its_threads_world_and_never_sends_a_step_twice() -> None:
    studio = Studio()
    await studio.run("t", {"type": "enroll"}, now=at(0))
    after_day_3 = (await studio.graph.aget_state({"configurable": {"thread_id": "t"}})).config
    await studio.run("t", {"type": "step_due"})  # day_7 on the main line
    step_due = {"contact_id": "demo-maria", "event": {"type": "step_due"}}
    forked = await studio.graph.ainvoke(step_due, after_day_3)
    last = forked["timeline"][-1]
    assert (last["action"], last["outcome"]) == ("day_7", "skipped")
    assert "already handled" in last["reason"]
    assert [s.step for s in studio.crm("t").sent] == ["day_3", "day_7"]


async def test_a_run_without_a_contact_id_says_what_the_input_needs() -> None:
    studio = Studio()
    with pytest.raises(StudioSettingError, match=r"^contact_id: missing from the input"):
        await studio.graph.ainvoke({"event": {"type": "enroll"}}, {"configurable": {"thread_id": "t"}})


async def test_the_live_world_talks_to_ghl_with_the_env_settings() -> None:
    with FakeGHLServer(rate_limit=None) as ghl:
        contact = ghl.add_contact(first_name="Rosa")
        settings = Settings(ghl_api_base_url=ghl.base_url, ghl_api_token=ghl.token,
                            ghl_location_id=ghl.location_id, agent_name="Lee Park")
        studio = Studio(Worlds(lambda: settings))
        values = await studio.run("t", {"type": "enroll"}, contact_id=contact["id"], world="live",
                                  now=datetime.now(UTC).replace(hour=17).isoformat())
        assert [(t["action"], t["outcome"]) for t in values["timeline"]] == [("enroll", "done"),
                                                                              ("day_3", "sent")]
        sms = ghl.sent_sms(contact["id"])
        assert len(sms) == 1 and "Rosa" in sms[0] and "Lee Park" in sms[0]


async def test_the_live_world_without_settings_names_them() -> None:
    studio = Studio(Worlds(lambda: Settings()))
    with pytest.raises(StudioSettingError, match=r"^GHL_API_TOKEN and GHL_LOCATION_ID: not set"):
        await studio.run("t", {"type": "enroll"}, world="live")
