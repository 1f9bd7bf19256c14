"""The ``lead-bot`` commands other than ``demo``: ``serve`` and the operator commands.

``serve`` starts a :class:`~ghl_real_estate_ai.service.LeadBotService` (refusing to start without
``GHL_API_TOKEN`` or a reachable Redis), binds the port, and serves until SIGTERM/SIGINT; then it stops
accepting connections, finishes in-flight requests, lets the intake worker finish the events it holds, stops
the scheduler (releasing its lease) and closes everything.

``enroll``/``pause``/``resume``/``cancel`` never touch a lead's graph themselves: they append the action to
the intake stream the webhooks use, so the running service applies it under the lead's lock, in order with
the lead's other events, and reschedules it. By default they wait (``LEAD_BOT_OPERATOR_WAIT_SECONDS``) for
the service to apply it and print the lead's resulting status; ``--no-wait`` only queues. ``status`` reads
the checkpointed state directly (no GHL, no running service needed). ``dead-letters`` lists the intake
entries that failed for good and ``--retry`` requeues them. ``reconcile`` repairs the scheduler's jobs
from the leads' states.

Exit codes: 0 done; 1 the action was not applied (refused by the lead's state, failed, or not applied in
time); 2 bad input or an unreachable service (a one-line error on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import re
import signal
import socket
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError

from ghl_real_estate_ai import heap
from ghl_real_estate_ai.config import Settings
from ghl_real_estate_ai.errors import ConfigurationError, InvalidEventError, LeadBotError
from ghl_real_estate_ai.sequence import parse_time

log = logging.getLogger(__name__)

_CONTACT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}")
ACTIONS = ("enroll", "pause", "resume", "cancel")


def _out(text: str = "") -> None:
    print(text, flush=True)


def _err(command: str, text: str) -> None:
    print(f"lead-bot {command}: {text}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    """Run one command; returns the exit code. Errors are one line on stderr."""
    command = args.command
    try:
        if command == "locations" and args.words[:1] == ["check"]:
            return check_locations(args.words)
        settings = Settings.from_env()
        if command == "serve":
            return await serve(settings, args.host, args.port, role=args.role)
        if command in ACTIONS:
            return await act(settings, command, _contact_id(args.contact_id), reason=args.reason,
                             wait=not args.no_wait, location=getattr(args, "location", None))
        if command == "status":
            return await status(settings, _contact_id(args.contact_id), as_json=args.json)
        if command == "dead-letters":
            return await dead_letters(settings, args.retry)
        if command == "reconcile":
            return await reconcile(settings)
        if command == "install-url":
            return install_url(settings)
        if command == "locations":
            return await locations(settings, args.words, as_json=args.json)
    except (LeadBotError, OSError) as exc:
        _err(command, str(exc))
        return 2
    except RedisError as exc:
        _err(command, f"Redis error: {exc}")
        return 2
    _err(command, "unknown command")
    return 2


def _contact_id(value: str) -> str:
    if not _CONTACT_ID.fullmatch(value or ""):
        raise InvalidEventError(
            f"invalid contact id {value!r}: use the GHL contact id (letters, digits, _.:@+-; at most 128)"
        )
    return value


def _service(settings: Settings) -> Any:
    from ghl_real_estate_ai.service import LeadBotService

    return LeadBotService(settings, role="operator")


# -- serve -----------------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise ConfigurationError("--port", f"must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigurationError("--host", f"cannot resolve {host!r}: {exc}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigurationError("--port", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a captured SIGTERM/SIGINT only stops serving: it is not re-raised
        afterwards (uvicorn's default), so the service can shut down cleanly after the listener."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            try:
                yield
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

    return Server


async def serve(settings: Settings, host: str, port: int, *, role: str = "all") -> int:
    """``lead-bot serve``: the port, then the service (one-line errors), then serve until a signal.

    The port is bound first because it makes the instance's identity (host name and port) exclusive: only
    one live process can hold it, so a restart under the same identity may take back at once the scheduler
    lease, lead locks and intake entries its dead predecessor held.
    """
    import uvicorn

    from ghl_real_estate_ai.api.app import create_app
    from ghl_real_estate_ai.service import LeadBotService

    if type(asyncio.get_running_loop()).__module__.split(".")[0] != "uvloop":
        log.info("serving on asyncio's default event loop; on uvloop the webhook throughput roughly doubles")
    sock = _bind(host, port)
    bound = sock.getsockname()
    service = LeadBotService(settings, role="serve", instance=f"{socket.gethostname()}:{bound[1]}",
                             serve_role=role)
    # The web app and uvicorn's config are built, and everything loaded so far (modules, the app) is moved
    # out of the cyclic collector's full passes, before the service starts: its worker and scheduler begin
    # at once (a restarted process has overdue steps to run), and these ~0.1 s of CPU would hold them up.
    app = create_app(settings, service=service)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", proxy_headers=False,
                            timeout_graceful_shutdown=20, server_header=False)
    config.load()
    gc.collect()
    gc.freeze()
    try:
        await service.start()
    except BaseException:
        sock.close()
        raise
    # What the start built (the compiled graph, clients) lives as long as the process too; collecting only
    # the objects made since the first freeze is quick. Then the collector's thresholds for a service.
    heap.settle()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    # SIGHUP re-reads LEAD_BOT_LOCATIONS_FILE; a file that fails the check leaves the old settings in force.
    loop.add_signal_handler(signal.SIGHUP, service.reload_locations)
    try:
        server = _server_class()(config)
        redis_at = service.redis_url.rpartition("@")[2]
        _out(f"lead-bot serve: listening on http://{bound[0]}:{bound[1]} "
             f"(role {role}, Redis {redis_at}, time scale {settings.time_scale:g})")
        await server.serve(sockets=[sock])
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        # A second signal during shutdown is noted, not fatal: stopping is already under way.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        try:
            await service.stop()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    _out("lead-bot serve: stopped")
    return 0


# -- locations -------------------------------------------------------------------------------------


def install_url(settings: Settings) -> int:
    """``lead-bot install-url``: the consent URL (Marketplace mode)."""
    from ghl_real_estate_ai.integrations.oauth import consent_url

    if not settings.ghl_oauth_client_id:
        raise ConfigurationError("GHL_OAUTH_CLIENT_ID", "is not set; install-url is for Marketplace mode")
    if not settings.oauth_redirect_uri:
        raise ConfigurationError("LEAD_BOT_PUBLIC_URL", "is not set; the consent URL redirects to "
                                 "LEAD_BOT_PUBLIC_URL/oauth/callback")
    _out(consent_url(settings.ghl_oauth_client_id, settings.oauth_redirect_uri))
    return 0


def check_locations(words: list[str]) -> int:
    """``lead-bot locations check FILE``: 0 and a summary when the file is good, else one line and 2."""
    from ghl_real_estate_ai.locations_config import check_locations_file

    if len(words) != 2:
        raise InvalidEventError("usage: lead-bot locations check FILE")
    checked = check_locations_file(words[1], Settings.from_env().quiet_hours)
    _out(f"{words[1]}: ok ({len(checked.locations)} location(s) and the defaults)")
    return 0


async def locations(settings: Settings, words: list[str], *, as_json: bool) -> int:
    """``lead-bot locations [--json]``: one row per location."""
    if words:
        raise InvalidEventError(f"unknown locations command {words[0]!r}; use `lead-bot locations` or "
                                "`lead-bot locations check FILE`")
    async with _service(settings) as service:
        rows = await service.location_rows()
    if as_json:
        _out(json.dumps(rows, indent=2))
        return 0
    _out(f"{'LOCATION':<28} {'STATE':<19} {'TOKEN EXPIRES':<21} {'SENDS TODAY':>11} {'429s/1h':>8}  LEADS")
    for row in rows:
        leads = ", ".join(f"{k} {v}" for k, v in row["leads"].items()) or "-"
        _out(f"{row['location_id']:<28} {row['state']:<19} {row['token_expires_at'] or '-':<21} "
             f"{row['sends_today']:>11} {row['rate_limited_last_hour']:>8}  {leads}")
        if row.get("reason"):
            _out(f"{'':<28} ({row['reason']})")
    return 0


# -- operator actions ------------------------------------------------------------------------------


async def act(settings: Settings, action: str, contact_id: str, *, reason: str | None, wait: bool,
              location: str | None = None) -> int:
    """Queue an operator action on the intake stream; by default wait for the service to apply it.
    ``location``: Marketplace mode's enroll names the contact's location."""
    from ghl_real_estate_ai.api.routes.leads import operator_event

    event = operator_event(action, reason)  # type: ignore[arg-type]
    if location:
        if action != "enroll" or not settings.marketplace:
            raise InvalidEventError("--location is for `enroll` in Marketplace mode")
        event["location_id"] = location
    async with _service(settings) as service:
        queued = await service.intake.request(contact_id, event, source="operator")
        if not wait:
            _out(f"{action} queued for {contact_id} (request {queued.request_id})")
            return 0
        result = await service.intake.wait_result(queued.request_id, settings.operator_wait_seconds)
    if result is None:
        waited = settings.operator_wait_seconds
        _err(action, f"queued, but not applied within {waited:g}s: is `lead-bot serve` running on this "
                     f"Redis? (request {queued.request_id}; it stays queued)")
        return 1
    if not result.get("ok", True):
        _err(action, str(result.get("error") or "failed"))
        return 1
    lead = result.get("lead")
    if not result.get("applied", True):
        _err(action, f"not applied: {result.get('reason') or 'refused'}")
        if lead:
            _out(_status_line(lead))
        return 1
    _out(f"{action}: done. {_status_line(lead) if lead else ''}".rstrip())
    return 0


def _status_line(lead: dict[str, Any]) -> str:
    status = lead.get("status") or "-"
    reason = lead.get("status_reason")
    nxt = lead.get("next_step")
    due = lead.get("next_due_at")
    text = f"{lead.get('contact_id')}: {status}"
    if reason:
        text += f" ({reason})"
    text += f"; next: {nxt} at {due}" if nxt and due else "; next: -"
    return text


# -- status ----------------------------------------------------------------------------------------


async def status(settings: Settings, contact_id: str, *, as_json: bool) -> int:
    """Print the lead's sequence state, next due step and time, and its timeline (``--json``: as JSON)."""
    async with _service(settings) as service:
        view = await service.lead_view(contact_id)
    if as_json:
        _out(json.dumps(view, indent=2, default=str))
        return 0
    _out(render_status(view))
    return 0


def _ago(now: datetime | None, when: str | None) -> str:
    at = parse_time(when) if when else None
    if at is None or now is None:
        return ""
    seconds = (at - now).total_seconds()
    days, rest = divmod(abs(int(seconds)), 86400)
    hours, rest = divmod(rest, 3600)
    span = f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m"
    return f" (in {span})" if seconds >= 0 else f" ({span} ago)"


def render_status(view: dict[str, Any]) -> str:
    """The human-readable ``lead-bot status`` text."""
    now = parse_time(view.get("now"))
    eng = view.get("engagement") or {}
    name = f" ({view['name']})" if view.get("name") else ""
    status_text = view.get("status") or "-"
    if view.get("status_reason"):
        status_text += f" - {view['status_reason']}"
    nxt = view.get("next_step")
    lines = [
        f"Lead {view.get('contact_id')}{name}",
        f"  status:       {status_text}",
        f"  current step: {view.get('current_step') or '-'}",
        f"  next:         {nxt} at {view.get('next_due_at')}{_ago(now, view.get('next_due_at'))}"
        if nxt else "  next:         - (nothing scheduled)",
        f"  enrolled:     {view.get('enrolled_at') or '-'}",
        f"  engagement:   {eng.get('temperature', 'cold')}, {eng.get('replies', 0)} repl"
        f"{'y' if eng.get('replies', 0) == 1 else 'ies'}, last inbound {eng.get('last_inbound_at') or '-'}, "
        f"last outbound {eng.get('last_outbound_at') or '-'}",
        f"  now:          {view.get('now')} (virtual)",
        "Timeline (virtual time, UTC):",
    ]
    timeline = view.get("timeline") or []
    if not timeline:
        lines.append("  (empty)")
    for item in timeline:
        due = f" (due {item['due_at']})" if item.get("due_at") else ""
        lines.append(
            f"  {item.get('at', ''):<27} {item.get('action', ''):<22} {item.get('channel') or '':<5} "
            f"{item.get('outcome', ''):<8} {item.get('reason', '')}{due}"
        )
    return "\n".join(lines)


# -- dead letters and reconcile --------------------------------------------------------------------


async def dead_letters(settings: Settings, retry: list[str] | None) -> int:
    """List dead letters, or requeue them (``--retry`` alone: all of them)."""
    async with _service(settings) as service:
        if retry is not None:
            done = await service.intake.retry_dead_letters(retry or None)
            for dead_id, new_id in done:
                _out(f"requeued {dead_id} as {new_id}")
            _out(f"{len(done)} dead letter(s) requeued")
            return 0
        letters = await service.intake.dead_letters()
    if not letters:
        _out("no dead letters")
        return 0
    _out(f"{'id':<17} {'contact':<22} {'event':<16} {'source':<9} {'tries':>5}  error")
    for letter in letters:
        error = letter.error.replace("\n", " ")
        _out(f"{letter.id:<17} {letter.contact_id[:22]:<22} {str(letter.event.get('type', '-'))[:16]:<16} "
             f"{letter.source[:9]:<9} {letter.attempts:>5}  {error[:120]}")
    _out(f"{len(letters)} dead letter(s); retry with `lead-bot dead-letters --retry [ID ...]`")
    return 0


async def reconcile(settings: Settings) -> int:
    """Repair the scheduler's jobs from the leads' states, once, and print what changed."""
    from ghl_real_estate_ai.service import LeadBotService

    async with LeadBotService(settings, role="operator") as service:
        report = await service.reconcile_once()
    _out(f"reconcile: {report}")
    return 0
