"""The test helper that runs a private redis-server: a script that never closes it leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis

SCRIPT = """
from ghl_real_estate_ai.testing.redis_server import RedisServer
server = RedisServer().start()
print(server.port, server.data_dir, flush=True)
{ending}
"""


@pytest.mark.parametrize(
    "ending",
    ["pass", "raise SystemExit(3)", "del server; import gc; gc.collect(); print('collected', flush=True)"],
)
def test_a_server_its_owner_never_closes_is_stopped(ending: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(ending=ending)], capture_output=True, text=True, timeout=60
    )
    port, data_dir = out.stdout.split()[:2]
    client = redis.Redis(port=int(port), socket_connect_timeout=0.2)
    try:
        deadline = time.monotonic() + 5
        while True:  # the server is gone (its port refuses) once the owner has exited
            try:
                client.ping()
            except redis.ConnectionError:
                break
            assert time.monotonic() < deadline, "redis-server outlived the process that started it"
            time.sleep(0.05)
    finally:
        client.close()
    from pathlib import Path

    assert not Path(data_dir).exists()
