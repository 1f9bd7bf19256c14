"""The test helper that runs a private redis-server: a script that never closes it leaves nothing behind."""

from __future__ import annotations

import itertools
import socket
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


def test_slot_ranges_split_every_slot_once() -> None:
    from ghl_real_estate_ai.testing.redis_cluster import SLOTS, slot_ranges

    for masters in (1, 3, 7):
        ranges = slot_ranges(masters)
        assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))


def test_a_local_cluster_forms_serves_every_slot_and_stops_on_exit() -> None:
    from ghl_real_estate_ai.testing.redis_cluster import LocalRedisCluster

    with LocalRedisCluster(3) as cluster:
        ports = [node.port for node in cluster.nodes]
        client = redis.RedisCluster.from_url(cluster.url)
        try:
            assert sorted(n.port for n in client.get_primaries()) == sorted(ports)
            owners = {client.get_node_from_key(f"key-{i}").port for i in range(60)}
            assert owners == set(ports)
            for i in range(60):
                client.set(f"key-{i}", i)
            assert client.dbsize(target_nodes=redis.RedisCluster.PRIMARIES) == 60  # summed over the masters
        finally:
            client.close()
    for port in ports:  # every node is gone: its port refuses connections
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
