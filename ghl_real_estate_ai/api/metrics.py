"""Prometheus metrics of one service instance, on a registry of its own (never the global one), so two
apps in one process (tests) do not collide. ``GET /metrics`` renders it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ghl_real_estate_ai.api.intake import IntakeEntry, IntakeObserver

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


class Metrics(IntakeObserver):
    """Every metric the service exports. Update methods are cheap and never raise."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.webhooks = Counter(
            "lead_bot_webhooks", "Webhooks received, by source, event type and result",
            ["source", "type", "result"], registry=r,
        )
        self.webhook_seconds = Histogram(
            "lead_bot_webhook_ack_seconds", "Time to acknowledge a webhook", ["source"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.sends = Counter(
            "lead_bot_sends", "Outbound messages and calls, by channel and outcome",
            ["channel", "outcome"], registry=r,
        )
        self.due_lag = Histogram(
            "lead_bot_step_due_lag_seconds",
            "Real seconds between a step's due time and the run that handled it",
            buckets=_LAG_BUCKETS, registry=r,
        )
        self.intake_processed = Counter(
            "lead_bot_intake_processed", "Intake entries handled, by source and outcome",
            ["source", "outcome"], registry=r,
        )
        self.intake_seconds = Histogram(
            "lead_bot_intake_processing_seconds", "Time to process one intake entry",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.intake_backlog = Gauge(
            "lead_bot_intake_backlog", "Intake entries stored and not yet processed", registry=r
        )
        self.intake_pending = Gauge(
            "lead_bot_intake_pending", "Intake entries taken by a worker and not yet acknowledged", registry=r
        )
        self.partition_backlog = Gauge(
            "lead_bot_intake_partition_backlog", "Intake entries not yet processed, by partition",
            ["partition"], registry=r,
        )
        self.partition_lag = Gauge(
            "lead_bot_intake_partition_lag_seconds",
            "Age of the oldest unprocessed intake entry, by partition (0 when empty)", ["partition"],
            registry=r,
        )
        self.partitions_owned = Gauge(
            "lead_bot_intake_partitions_owned", "Intake partitions this process consumes", registry=r
        )
        self.role = Gauge("lead_bot_role", "The parts this process runs (1 per part)", ["part"], registry=r)
        self.dead_letters = Gauge(
            "lead_bot_intake_dead_letters", "Entries in the dead-letter stream", registry=r
        )
        self.errors = Counter("lead_bot_errors", "Errors, by where they happened", ["where"], registry=r)
        self.scheduler_leader = Gauge(
            "lead_bot_scheduler_leader", "1 while this process holds the scheduler lease", registry=r
        )
        self.scheduler_jobs = Gauge("lead_bot_scheduler_jobs", "Jobs scheduled in this process", registry=r)
        self.scheduler_runs = Gauge(
            "lead_bot_scheduler_runs", "Scheduler job runs since start, by outcome", ["outcome"], registry=r
        )
        self.up = Gauge("lead_bot_up", "1 when Redis and the scheduler are up", registry=r)

    # -- IntakeObserver
    def processed(self, entry: IntakeEntry, outcome: str, seconds: float) -> None:
        self.intake_processed.labels(entry.source, outcome).inc()
        if outcome == "ok":
            self.intake_seconds.observe(seconds)
        elif outcome in ("dead_letter", "retry"):
            self.errors.labels("intake").inc()

    def webhook(self, source: str, event_type: str, result: str, seconds: float | None = None) -> None:
        self.webhooks.labels(source, event_type[:40] or "-", result).inc()
        if seconds is not None:
            self.webhook_seconds.labels(source).observe(seconds)

    def send(self, channel: str, outcome: str) -> None:
        self.sends.labels(channel, outcome).inc()

    def error(self, where: str) -> None:
        self.errors.labels(where).inc()

    async def render(self, refresh: Callable[[Metrics], Awaitable[None]] | None = None) -> bytes:
        """The text exposition; ``refresh`` updates the gauges that are read on demand first."""
        if refresh is not None:
            try:
                await refresh(self)
            except Exception:
                self.errors.labels("metrics").inc()
        return generate_latest(self.registry)
