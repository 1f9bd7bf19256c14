"""Helpers of the service tests: a real ``lead-bot serve`` subprocess on a real Redis, with the fake GHL and
Retell servers over HTTP. ``Stack`` bundles them; ``wait_for`` polls with a deadline (no fixed sleeps)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

from ghl_real_estate_ai.testing import keys, webhooks
from ghl_real_estate_ai.testing.ghl_server import FakeGHLServer
from ghl_real_estate_ai.testing.redis_server import RedisServer, free_port
from ghl_real_estate_ai.testing.retell_server import DEFAULT_FROM_NUMBER, FakeRetellServer

API_TOKEN = "test-operator-token-0123456789"
SECRET_KEY = "Vh0bG7e7mV9Yy3m1mS2yJ8R8o0C1O0rKq3oN2y1S5xQ="  # a Fernet key for the tests' token vault


def intake_backlog(client: redis.Redis, partitions: int = 16) -> int:
    """Entries the service accepted and has not finished, over every intake partition."""
    return sum(int(client.xlen(f"lead-bot:{{intake:{p}}}")) for p in range(partitions))


T = TypeVar("T")

_OUR_VARIABLES = ("REDIS_URL", "GHL_", "RETELL_", "LEAD_BOT_")


def wait_for(check: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.02,
             what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what} (last value: {value!r})")
        time.sleep(interval)


def base_env(**extra: str) -> dict[str, str]:
    """The parent environment without any Lead Bot setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OUR_VARIABLES)}
    env.update(extra)
    return env


class ServeProcess:
    """``python -m ghl_real_estate_ai.cli serve`` in a temporary working directory (no ``.env`` read)."""

    def __init__(self, env: dict[str, str], workdir: Path, *, port: int | None = None,
                 role: str = "all") -> None:
        self.env = env
        self.workdir = workdir
        self.role = role
        self.port = port or free_port()
        self.log_path = workdir / f"serve-{self.port}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 40.0) -> ServeProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ghl_real_estate_ai.cli", "serve", "--port", str(self.port),
             "--role", self.role],
            env=self.env, cwd=self.workdir, stdout=log, stderr=log,
        )
        log.close()

        # One client for the whole wait: each new httpx client loads the CA bundle (about 25 ms with the GIL
        # held), and polling with fresh ones stalled the fakes served from this test process.
        with httpx.Client(timeout=2) as probe:

            def healthy() -> bool:
                assert self.process is not None
                if self.process.poll() is not None:
                    pytest.fail(f"lead-bot serve exited with {self.process.returncode}:\n{self.logs()}")
                with contextlib.suppress(httpx.HTTPError):
                    return probe.get(self.url + "/healthz").status_code == 200
                return False

            wait_for(healthy, timeout=timeout, interval=0.05, what="lead-bot serve to become healthy")
        return self

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 40.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Stack:
    """Redis + fake GHL + fake Retell + one ``lead-bot serve``."""

    redis: RedisServer
    ghl: FakeGHLServer
    retell: FakeRetellServer
    workdir: Path
    time_scale: float = 86400.0
    extra_env: dict[str, str] = field(default_factory=dict)
    serve: ServeProcess | None = None
    marketplace: bool = False  # GHL_OAUTH_CLIENT_ID/_SECRET instead of GHL_API_TOKEN (many locations)

    def env(self) -> dict[str, str]:
        if self.marketplace:
            ghl = {"GHL_OAUTH_CLIENT_ID": self.ghl.oauth_client_id,
                   "GHL_OAUTH_CLIENT_SECRET": self.ghl.oauth_client_secret,
                   "LEAD_BOT_SECRET_KEY": SECRET_KEY, "LEAD_BOT_PUBLIC_URL": "https://bot.example.com"}
        else:
            ghl = {"GHL_API_TOKEN": self.ghl.token, "GHL_LOCATION_ID": self.ghl.location_id}
        return base_env(
            REDIS_URL=self.redis.url,
            GHL_API_BASE_URL=self.ghl.base_url,
            **ghl,
            GHL_WEBHOOK_PUBLIC_KEY=keys.TEST_ED25519_PUBLIC_PEM,
            GHL_WEBHOOK_RSA_PUBLIC_KEY=keys.rsa_public_pem(),
            RETELL_API_BASE_URL=self.retell.base_url,
            RETELL_API_KEY=keys.TEST_RETELL_API_KEY,
            RETELL_FROM_NUMBER=DEFAULT_FROM_NUMBER,
            LEAD_BOT_API_TOKEN=API_TOKEN,
            LEAD_BOT_TIME_SCALE=f"{self.time_scale:g}",
            LEAD_BOT_OPERATOR_WAIT_SECONDS="20",
            **self.extra_env,
        )

    def start(self) -> Stack:
        self.serve = ServeProcess(self.env(), self.workdir).start()
        return self

    @property
    def url(self) -> str:
        assert self.serve is not None
        return self.serve.url

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30)

    # -- helpers the tests share ---------------------------------------------------------------

    def add_lead(self, **contact: Any) -> str:
        return str(self.ghl.add_contact(**contact)["id"])

    def enroll(self, contact_id: str) -> dict[str, Any]:
        with self.api() as api:
            response = api.post(f"/api/leads/{contact_id}/enroll", params={"wait": 20})
        assert response.status_code == 200, response.text
        return response.json()["lead"]  # type: ignore[no-any-return]

    def lead(self, contact_id: str) -> dict[str, Any] | None:
        with self.api() as api:
            response = api.get(f"/api/leads/{contact_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def post_ghl(self, payload: dict[str, Any], *, headers: dict[str, str] | None = None,
                 body: bytes | None = None) -> httpx.Response:
        signed = webhooks.sign_ghl_webhook(payload)
        return httpx.post(self.url + "/webhooks/ghl", content=body if body is not None else signed.body,
                          headers=headers if headers is not None else signed.headers, timeout=30)

    def post_retell(self, payload: dict[str, Any], *, ts_ms: int | None = None) -> httpx.Response:
        signed = webhooks.sign_retell_webhook(payload, ts_ms=ts_ms)
        return httpx.post(self.url + "/webhooks/retell", content=signed.body, headers=signed.headers,
                          timeout=30)

    def inbound(self, contact_id: str, text: str, **kwargs: Any) -> dict[str, Any]:
        return self.ghl.inbound_message_payload(contact_id, text, **kwargs)

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Wait until the service processed every event it accepted (the intake stream is empty)."""
        client = redis.Redis.from_url(self.redis.url)
        try:
            wait_for(lambda: intake_backlog(client) == 0, timeout=timeout, what="an empty intake")
        finally:
            client.close()

    def replies(self, contact_id: str) -> list[str]:
        """The bot's SMS answers to questions (the tests ask questions; sequence steps and stall-breakers
        are other texts)."""
        return [m for m in self.ghl.sent_sms(contact_id) if m.startswith("Good question")]

    def close(self) -> None:
        if self.serve is not None:
            self.serve.stop()
            self.serve = None


@contextlib.contextmanager
def running_stack(*, time_scale: float = 86400.0, appendonly: bool = False, start: bool = True,
                  ghl_kwargs: dict[str, Any] | None = None, marketplace: bool = False,
                  **extra_env: str) -> Iterator[Stack]:
    """A fresh stack: its own Redis, fakes and service (torn down afterwards, logs kept on failure)."""
    workdir = Path(tempfile.mkdtemp(prefix="lead-bot-service-test-"))
    with RedisServer(workdir / "redis", appendonly=appendonly) as redis, \
            FakeGHLServer(**(ghl_kwargs or {})) as ghl, FakeRetellServer() as retell:
        stack = Stack(redis, ghl, retell, workdir, time_scale, dict(extra_env), marketplace=marketplace)
        try:
            if start:
                stack.start()
            yield stack
        except BaseException:
            if stack.serve is not None:
                sys.stderr.write(f"--- lead-bot serve log ---\n{stack.serve.logs()[-20000:]}\n")
            raise
        finally:
            stack.close()
    shutil.rmtree(workdir, ignore_errors=True)
