"""The machinery shared by the fake GHL and Retell servers: a real HTTP server (uvicorn, on a free
127.0.0.1 port, in a background thread with its own event loop), a request log, and fault injection.

Faults are :class:`Fault` values taken per request, first from scripted queues (in order), then from a
seeded random plan. A fault with a ``status`` answers that error *instead of* handling the request; a
fault with only a ``delay`` handles the request (so the effect happens) and then holds the answer back,
which is how a client timeout with an unknown outcome is produced.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class VirtualTime:
    """A monotonic seconds clock that moves only when someone sleeps on it or calls :meth:`advance`.

    Pass ``clock`` to fakes and rate limiters and ``sleep`` to clients to run minutes of rate-limited
    traffic in milliseconds. Reads are thread-safe (the fakes read it from their server thread).
    """

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def clock(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour. ``status`` None means "answer normally" (after ``delay`` seconds)."""

    status: int | None = None
    delay: float = 0.0
    retry_after: float | None = None
    body: Any = None


@dataclass
class RecordedRequest:
    """A request as the fake saw it. ``headers`` keys are lower-case; ``status`` is what it answered."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    json: Any
    at: float
    status: int = 0
    fault: Fault | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class _Script:
    faults: deque[Fault | None]
    method: str | None
    path: str | None


@dataclass
class _RandomPlan:
    error_rate: float
    statuses: tuple[int, ...]
    delay_rate: float
    delay: float
    method: str | None
    path: str | None


def _matches(method: str | None, path: str | None, req_method: str, req_path: str) -> bool:
    if method is not None and method.upper() != req_method:
        return False
    return path is None or req_path == path or req_path.startswith(path.rstrip("/") + "/")


class FakeHTTPServer(abc.ABC):
    """Base class of the fakes. Subclasses implement :meth:`handle`.

    Use as a context manager or call :meth:`start`/:meth:`stop`. ``clock`` stamps recorded requests and
    drives anything time-based in the fake (rate windows); inject a virtual clock to test time logic
    without sleeping. ``seed`` makes generated ids and random faults repeatable.
    """

    service_name = "fake"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
    ) -> None:
        self.host = host
        self._port = port
        self.clock = clock
        self._lock = threading.RLock()
        # Seeded per class so a GHL fake and a Retell fake with the same seed do not mint equal ids.
        self._rng = random.Random(f"{type(self).__name__}:{seed}")
        self._fault_rng = random.Random(f"{type(self).__name__}:faults:{seed}")
        self._requests: list[RecordedRequest] = []
        self._scripts: list[_Script] = []
        self._random_plan: _RandomPlan | None = None
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return int(self._socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this; without it Nagle + delayed ACK add ~40 ms to every answer.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.host, self._port))
        self._socket = sock
        config = uvicorn.Config(
            self._asgi,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            interface="asgi3",
            ws="none",
            loop="asyncio",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"{type(self).__name__}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{type(self).__name__} did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
        self._server = None
        self._thread = None
        self._socket = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request log -------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Requests filtered by method and exact path or path prefix (``/contacts`` matches sub-paths)."""
        with self._lock:
            return [r for r in self._requests if _matches(method, path, r.method, r.path)]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- faults ------------------------------------------------------------------------------------

    def script_faults(
        self, faults: Iterable[Fault | int | None], *, method: str | None = None, path: str | None = None
    ) -> None:
        """Queue faults for the next matching requests, in order. ``None`` = one normal answer; an int is a
        status (``[429, 500, None]``: a 429, then a 500, then normal). Scripts are consulted in the order
        they were added; an exhausted script is dropped.
        """
        queue: deque[Fault | None] = deque(
            Fault(status=f) if isinstance(f, int) else f for f in faults
        )
        with self._lock:
            self._scripts.append(_Script(queue, method.upper() if method else None, path))

    def set_random_faults(
        self,
        *,
        error_rate: float = 0.0,
        statuses: tuple[int, ...] = (429, 500),
        delay_rate: float = 0.0,
        delay: float = 0.0,
        seed: int | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Fail a fraction ``error_rate`` of matching requests with a status drawn from ``statuses``, and
        delay a fraction ``delay_rate`` of the others by ``delay`` seconds. Repeatable for a given seed
        and request order.
        """
        with self._lock:
            if seed is not None:
                self._fault_rng = random.Random(seed)
            self._random_plan = _RandomPlan(error_rate, tuple(statuses), delay_rate, delay,
                                            method.upper() if method else None, path)

    def clear_faults(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._random_plan = None

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The fault for this request, if any (consumes one scripted entry)."""
        with self._lock:
            for script in list(self._scripts):
                if _matches(script.method, script.path, method, path):
                    fault = script.faults.popleft() if script.faults else None
                    if not script.faults:
                        self._scripts.remove(script)
                    return fault
            plan = self._random_plan
            if plan is None or not _matches(plan.method, plan.path, method, path):
                return None
            if plan.error_rate and self._fault_rng.random() < plan.error_rate:
                return Fault(status=self._fault_rng.choice(plan.statuses))
            if plan.delay_rate and self._fault_rng.random() < plan.delay_rate:
                return Fault(delay=plan.delay)
            return None

    # -- helpers for subclasses --------------------------------------------------------------------

    def new_id(self, length: int = 20, alphabet: str = _ID_ALPHABET) -> str:
        """A random id in GHL's style (20 alphanumerics), repeatable for a given seed."""
        with self._lock:
            return "".join(self._rng.choice(alphabet) for _ in range(length))

    @abc.abstractmethod
    async def handle(self, request: Request, record: RecordedRequest) -> Response:
        """Answer one request (the fake's API); faults and recording are done around it."""

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            json=parsed,
            at=self.clock(),
        )
        with self._lock:
            self._requests.append(record)
        try:
            response = await self.handle(request, record)
        except Exception:  # a bug in the fake must show up as a 500, not a hung client
            logger.exception("%s crashed on %s %s", type(self).__name__, record.method, record.path)
            response = JSONResponse({"statusCode": 500, "message": "fake server error"}, status_code=500)
        record.status = response.status_code
        delay = record.fault.delay if record.fault is not None else 0.0
        if delay > 0:
            await self._pause(delay)
        await response(scope, receive, send)

    async def _pause(self, seconds: float) -> None:
        # Sleep in short steps so stop() does not wait for a long injected delay.
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.05))
