"""What a LangGraph Studio user does, against a real ``langgraph dev`` server driven over its HTTP API.

The server is started once for the module, on a free loopback port, without reload or browser, from a
scratch directory (its ``.langgraph_api`` store and any ``.env`` stay out of the repository) with the
repository's ``langgraph.json`` (paths made absolute) and no GHL or Retell settings in its environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ghl_real_estate_ai.testing.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
MARIA = "demo-maria"
# Monday 2026-03-02 15:00 UTC: 09:00 in Austin, inside Maria's window.
START = "2026-03-02T15:00:00Z"
QUESTION = {"type": "inbound_message", "text": "what's my house worth?", "channel": "sms", "message_id": "m1"}

pytestmark = pytest.mark.slow


def _langgraph_cli() -> Path:
    cli = Path(sys.executable).with_name("langgraph")
    assert cli.exists(), f"{cli} is missing: install the dev extra (langgraph-cli[inmem])"
    return cli


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    workdir = tmp_path_factory.mktemp("langgraph-dev")
    config = json.loads((ROOT / "langgraph.json").read_text())
    config["dependencies"] = [str(ROOT)]
    config["graphs"] = {
        name: str(ROOT / spec.removeprefix("./")) for name, spec in config["graphs"].items()
    }
    config["http"]["app"] = str(ROOT / config["http"]["app"].removeprefix("./"))
    (workdir / "langgraph.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GHL_", "RETELL_", "LEAD_BOT_"))}
    env.update(LANGGRAPH_CLI_NO_ANALYTICS="1", LANGSMITH_TRACING="false", PYTHONUNBUFFERED="1")
    port = free_port()
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(_langgraph_cli()), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
             "--port", str(port), "--config", str(workdir / "langgraph.json")],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                tail = log_path.read_text()[-4000:]
                pytest.fail(f"langgraph dev exited with {process.returncode}:\n{tail}")
            try:
                if client.get("/ok").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"langgraph dev did not answer /ok in 90 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.25)
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def new_thread(server: httpx.Client) -> str:
    response = server.post("/threads", json={})
    response.raise_for_status()
    return str(response.json()["thread_id"])


def run(
    server: httpx.Client,
    thread_id: str | None,
    event: dict[str, Any],
    *,
    contact_id: str = MARIA,
    context: dict[str, Any] | None = None,
    checkpoint_id: str | None = None,
) -> dict[str, Any]:
    """One run to completion (``runs/wait``); returns the thread's values, or the ``__error__`` body."""
    body: dict[str, Any] = {"assistant_id": "lead_bot", "input": {"contact_id": contact_id, "event": event}}
    if context is not None:
        body["context"] = context
    if checkpoint_id is not None:
        body["checkpoint_id"] = checkpoint_id
    path = f"/threads/{thread_id}/runs/wait" if thread_id else "/runs/wait"
    response = server.post(path, json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def ok(values: dict[str, Any]) -> dict[str, Any]:
    assert "__error__" not in values, values["__error__"]
    return values


def enrolled_thread(server: httpx.Client) -> str:
    thread_id = new_thread(server)
    ok(run(server, thread_id, {"type": "enroll"}, context={"now": START}))
    return thread_id


def state(server: httpx.Client, thread_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    path = f"/threads/{thread_id}/state" + (f"/{checkpoint_id}" if checkpoint_id else "")
    response = server.get(path)
    response.raise_for_status()
    return dict(response.json())


def history(server: httpx.Client, thread_id: str) -> list[dict[str, Any]]:
    response = server.post(f"/threads/{thread_id}/history", json={"limit": 200})
    response.raise_for_status()
    return list(response.json())


def test_the_graph_is_served_with_a_json_context_schema(server: httpx.Client) -> None:
    assistants = server.post("/assistants/search", json={"graph_id": "lead_bot"}).json()
    assert assistants, "langgraph dev made no assistant for lead_bot"
    schemas = server.get(f"/assistants/{assistants[0]['assistant_id']}/schemas").json()
    fields = schemas["context_schema"]["properties"]
    assert {"world", "now", "quiet_hours", "agent_name"} <= set(fields)
    assert fields["world"]["enum"] == ["demo", "live"]
    assert all(spec["type"] == "string" for spec in fields.values())


def test_enroll_on_a_new_thread_sends_day_3_to_the_demo_ghl(server: httpx.Client) -> None:
    thread_id = enrolled_thread(server)
    values = state(server, thread_id)["values"]
    timeline = values["timeline"]
    assert [(t["action"], t["outcome"]) for t in timeline] == [("enroll", "done"), ("day_3", "sent")]
    day_3 = timeline[1]
    assert day_3["channel"] == "sms" and day_3["at"] == START
    assert day_3["detail"]["message_id"].startswith("msg-")  # the id the demo world's GHL fake gave it
    assert values["contact"]["first_name"] == "Maria"  # the seeded demo lead, read from the fake
    # What the thread's demo world received, as the fake GHL recorded it (``sandbox.api``):
    world = server.get(f"/sandbox/threads/{thread_id}").json()
    assert [(s["step"], s["channel"], s["id"], s["at"]) for s in world["sent"]] == [
        ("day_3", "sms", day_3["detail"]["message_id"], START)
    ]
    assert world["sent"][0]["contact_id"] == MARIA and "Maria" in world["sent"][0]["body"]
    assert world["sent"][0]["key"] == f"{MARIA}|{START}|day_3|0"
    assert values["sequence"]["status"] == "active"
    assert values["sequence"]["next_step"] == "day_7"
    assert values["sequence"]["next_due_at"] == "2026-03-06T15:00:00Z"


def test_step_due_without_a_step_runs_whatever_is_due_next(server: httpx.Client) -> None:
    thread_id = enrolled_thread(server)
    expected = [
        ("day_7", "call", "2026-03-06"), ("day_14", "email", "2026-03-13"), ("day_30", "sms", "2026-03-29")
    ]
    for step, channel, day in expected:
        values = ok(run(server, thread_id, {"type": "step_due"}))
        last = values["timeline"][-1]
        assert (last["action"], last["outcome"], last["channel"]) == (step, "sent", channel)
        assert last["at"] == last["due_at"] and last["at"].startswith(day)
    assert values["sequence"]["next_step"] == "nurture"


def test_an_inbound_question_gets_a_reply_in_the_state(server: httpx.Client) -> None:
    thread_id = enrolled_thread(server)
    values = ok(run(server, thread_id, QUESTION))
    kinds = [m["type"] for m in values["messages"]]
    assert kinds == ["human", "ai"]
    assert values["messages"][0]["content"] == "what's my house worth?"
    assert "Maria" in values["messages"][1]["content"]
    replies = [t for t in values["timeline"] if t["action"] == "reply"]
    assert replies and replies[0]["outcome"] == "sent" and replies[0]["channel"] == "sms"
    assert values["engagement"]["replies"] == 1


def test_history_lists_each_checkpoint_and_a_fork_leaves_the_main_line_unchanged(
    server: httpx.Client,
) -> None:
    thread_id = enrolled_thread(server)
    after_day_3 = state(server, thread_id)["checkpoint"]["checkpoint_id"]
    ok(run(server, thread_id, {"type": "step_due"}))
    ok(run(server, thread_id, QUESTION))
    main = state(server, thread_id)
    main_head, main_values = main["checkpoint"]["checkpoint_id"], main["values"]

    checkpoints = history(server, thread_id)
    # Every superstep of the three runs, newest first: input, router, action, due_now (and again for day_3).
    steps = [c["metadata"]["step"] for c in checkpoints]
    assert steps == sorted(steps, reverse=True) and steps[-1] == -1
    ran = [tuple(c["next"]) for c in reversed(checkpoints)]
    for node in ("determine_path", "enroll", "day_3", "day_7", "converse", "due_now"):
        assert (node,) in ran, f"no checkpoint before {node}: {ran}"
    assert after_day_3 in {c["checkpoint"]["checkpoint_id"] for c in checkpoints}

    fork_event = {"type": "inbound_message", "text": "Yes! Can you call me Saturday morning?",
                  "channel": "sms", "message_id": "m2"}
    fork = ok(run(server, thread_id, fork_event, checkpoint_id=after_day_3))
    assert [m["content"] for m in fork["messages"] if m["type"] == "human"] == [fork_event["text"]]
    assert "day_7" not in {t["action"] for t in fork["timeline"]}  # the fork starts after day_3
    assert fork["sequence"]["status"] == "qualified"

    # The main line's head is still there, with the same values, and the fork branches off after day_3.
    assert state(server, thread_id, main_head)["values"] == main_values
    assert main_values["sequence"]["status"] == "active"
    assert [m["content"] for m in main_values["messages"] if m["type"] == "human"] == [QUESTION["text"]]
    by_id = {c["checkpoint"]["checkpoint_id"]: c for c in history(server, thread_id)}
    fork_head = state(server, thread_id)["checkpoint"]["checkpoint_id"]
    assert fork_head != main_head and main_head in by_id
    parent = fork_head
    while parent != after_day_3:
        parent = by_id[parent]["parent_checkpoint"]["checkpoint_id"]
        assert parent not in (None, main_head)


def test_an_edited_state_is_what_the_next_run_reads(server: httpx.Client) -> None:
    thread_id = enrolled_thread(server)
    response = server.post(f"/threads/{thread_id}/state",
                           json={"values": {"sequence": {"next_due_at": "2026-03-03T15:00:00Z"}}})
    assert response.status_code == 200, response.text
    values = ok(run(server, thread_id, {"type": "step_due"}))
    last = values["timeline"][-1]
    assert (last["action"], last["at"], last["due_at"]) == ("day_7", "2026-03-03T15:00:00Z",
                                                            "2026-03-03T15:00:00Z")


def test_the_sandbox_view_of_a_thread_that_never_ran_is_a_404(server: httpx.Client) -> None:
    response = server.get(f"/sandbox/threads/{uuid.uuid4()}")
    assert response.status_code == 404 and "no demo world" in response.json()["error"]


def test_a_live_world_without_ghl_settings_fails_with_one_line_saying_what_to_set(
    server: httpx.Client,
) -> None:
    values = run(server, None, {"type": "enroll"}, context={"world": "live"})
    error = values["__error__"]
    assert error["error"] == "StudioSettingError"
    assert "GHL_API_TOKEN" in error["message"] and "GHL_LOCATION_ID" in error["message"]
    assert "\n" not in error["message"] and "Traceback" not in error["message"]


@pytest.mark.parametrize(
    ("context", "setting"),
    [
        ({"now": "next tuesday"}, "now"),
        ({"quiet_hours": "late"}, "quiet_hours"),
        ({"world": "mars"}, "world"),
    ],
)
def test_a_bad_setting_fails_with_one_line_naming_it(
    server: httpx.Client, context: dict[str, str], setting: str
) -> None:
    error = run(server, None, {"type": "enroll"}, context=context)["__error__"]
    assert error["message"].startswith(f"{setting}: ") and "\n" not in error["message"]


def test_an_unknown_contact_id_gets_a_generated_contact(server: httpx.Client) -> None:
    contact_id = f"studio-{uuid.uuid4().hex[:8]}"
    values = ok(run(server, new_thread(server), {"type": "enroll"}, contact_id=contact_id,
                    context={"now": START}))
    assert values["contact"]["id"] == contact_id and values["contact"]["phone"]
    assert [t["action"] for t in values["timeline"]] == ["enroll", "day_3"]
