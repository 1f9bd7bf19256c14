"""The auditor: judges a simulated quarter only by what reached the fakes (each send's time, step and send
key, and the event being handled when it came) and by the facts of the simulated world (who the leads are,
what they wrote and when). It never reads the bot's state or timeline.

Violation classes:

- ``quiet_hours``: an automated send outside the configured window in the lead's own zone (its time zone,
  else its state's zones, else its area code's, else every US zone).
- ``strict_area_code``: an automated send outside the strictest reading: inside the window in *every* zone
  the time zone, state and area code point at, with the strictest state window among the state and the
  area code's state (FL, OK, WA, MD: 08:00-20:00).
- ``daily_cap``: a fourth automated send within 24 hours.
- ``after_opt_out``: anything sent after the lead opted out but the one confirmation, on the channel the
  opt-out came in on.
- ``dnd``: a send GHL or Retell accepted on a channel whose DND the lead had on.
- ``duplicate_step``: a timed step sent twice in one enrollment (nurture within 20 days, a stall-breaker
  within 36 hours of the last).
- ``duplicate_reply``: two sends of one kind (reply, CMA, confirmation) for one inbound message.
- ``missed_step``: a silent lead's step (it never wrote, was enrolled once and can be reached on the
  step's channel) not sent within 36 hours of its due time.

Replies to a lead's own message are not automated: the lead just wrote, so quiet hours and the cap do not
apply to them (the bot's design; the auditor follows it).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from ghl_real_estate_ai.compliance.world import Delivery, Lead, Played
from ghl_real_estate_ai.sequence import QuietHours, Window
from ghl_real_estate_ai.us_geo import ALL_US_ZONES, STATE_ZONES, area_code_state, normalize_state

CLASSES = ("quiet_hours", "strict_area_code", "daily_cap", "after_opt_out", "dnd", "duplicate_step",
           "duplicate_reply", "missed_step")
AUTOMATED = frozenset({"day_3", "day_7", "day_14", "day_30", "nurture", "stall_breaker"})
TIMED_ONCE = ("day_3", "day_7", "day_14", "day_30")
STRICT_STATES = {"FL", "OK", "WA", "MD"}
STRICT_WINDOW = Window(time(8), time(20))
# When each step of a silent lead is due, counted from enrollment, and on which channel.
CADENCE = (("day_3", 0, "sms"), ("day_7", 4, "call"), ("day_14", 11, "email"), ("day_30", 27, "sms"))
NURTURE_FIRST, NURTURE_EVERY = 57, 30
MISSED_AFTER = timedelta(hours=36)


@dataclass
class Violation:
    kind: str
    contact_id: str
    at: datetime | None
    detail: str


@dataclass
class Report:
    played: Played
    violations: list[Violation] = field(default_factory=list)
    sends: int = 0
    refused: int = 0
    expected_silent_sends: int = 0
    cap_reached: int = 0  # leads that got 3 automated sends within 24 hours (the cap was exercised)
    opt_outs: int = 0

    def counts(self) -> dict[str, int]:
        found = Counter(v.kind for v in self.violations)
        return {kind: found.get(kind, 0) for kind in CLASSES}

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        p = self.played
        rate = p.events / p.seconds if p.seconds else 0.0
        counts = ", ".join(f"{k} {n}" for k, n in self.counts().items())
        return (
            f"{len(p.leads)} leads x {(p.end - p.start).days} days: {p.events} events in {p.seconds:.1f} s "
            f"({rate:.0f} events/s), peak RSS {p.peak_bytes / 2**20:.0f} MiB; {self.sends} sends, "
            f"{self.refused} refused by the fakes; {self.opt_outs} opt-outs; {self.expected_silent_sends} "
            f"expected sends to silent leads; daily cap reached by {self.cap_reached} leads; "
            f"{p.redeliveries} webhook redeliveries, {p.double_fires} double and {p.late_fires} late job "
            f"fires. Violations: {counts}"
        )


def _zone_ok(when: datetime, zone: str, window: Window) -> bool:
    local = when.astimezone(ZoneInfo(zone)).time()
    return window.start <= local < window.end


def _valid_zone(name: str | None) -> str | None:
    try:
        return name if name and ZoneInfo(name) else None
    except Exception:
        return None


def own_zones(lead: Lead) -> tuple[str, ...]:
    """The lead's zone by the plain reading: time zone, else state, else area code, else everywhere."""
    record = lead.record
    zone = _valid_zone(record.get("timezone"))
    if zone:
        return (zone,)
    state = normalize_state(record.get("state")) or area_code_state(record.get("phone"))
    return STATE_ZONES[state] if state else ALL_US_ZONES


def strict_zones(lead: Lead) -> tuple[str, ...]:
    """Every zone the time zone, the state and the area code's state point at (a state's own zones narrow
    to the time zone when it is one of them)."""
    record = lead.record
    zone = _valid_zone(record.get("timezone"))
    zones: list[str] = [zone] if zone else []
    for state in (normalize_state(record.get("state")), area_code_state(record.get("phone"))):
        if state:
            zones.extend([zone] if zone in STATE_ZONES[state] else STATE_ZONES[state])
    return tuple(dict.fromkeys(zones)) or ALL_US_ZONES


def strict_window(lead: Lead, quiet: QuietHours) -> Window:
    states = {normalize_state(lead.record.get("state")), area_code_state(lead.record.get("phone"))} - {None}
    if not states and not _valid_zone(lead.record.get("timezone")):
        return quiet.strictest()
    window = quiet.default
    for state in states:
        window = window.intersect(quiet.states.get(state or "", quiet.default))
        if state in STRICT_STATES:
            window = window.intersect(STRICT_WINDOW)
    return window


def audit(played: Played, quiet: QuietHours | None = None) -> Report:
    quiet = quiet or QuietHours()
    report = Report(played)
    by_lead: dict[str, list[Delivery]] = defaultdict(list)
    for d in played.deliveries:
        if d.refused:
            report.refused += 1
        else:
            report.sends += 1
            by_lead[d.sent.contact_id].append(d)
    for lead in played.leads:
        sends = sorted(by_lead.get(lead.id, []), key=lambda d: d.sent.at)
        report.violations.extend(_check_lead(lead, sends, quiet, played, report))
    return report


def _check_lead(lead: Lead, sends: list[Delivery], quiet: QuietHours, played: Played,
                report: Report) -> list[Violation]:
    found: list[Violation] = []
    cid = lead.id

    def flag(kind: str, at: datetime | None, detail: str) -> None:
        found.append(Violation(kind, cid, at, detail))

    automated = [d for d in sends if d.sent.step in AUTOMATED]
    plain, strict, strict_win = own_zones(lead), strict_zones(lead), strict_window(lead, quiet)
    for d in automated:
        at = d.sent.at
        if not all(_zone_ok(at, z, quiet.default) for z in plain):
            flag("quiet_hours", at,
                 f"{d.sent.step} at {at:%Y-%m-%d %H:%M} UTC outside {quiet.default} in {plain}")
        elif not all(_zone_ok(at, z, strict_win) for z in strict):
            flag("strict_area_code", at,
                 f"{d.sent.step} at {at:%Y-%m-%d %H:%M} UTC outside {strict_win} in {strict}")
    times = [d.sent.at for d in automated]
    reached = False
    for i, at in enumerate(times):
        window = [t for t in times[: i + 1] if t > at - timedelta(hours=24)]
        if len(window) >= 3:
            reached = True
        if len(window) > 3:
            flag("daily_cap", at, f"{len(window)} automated sends in the 24 hours to {at:%Y-%m-%d %H:%M}")
    report.cap_reached += reached

    opt_out = lead.opt_out
    if opt_out is not None:
        report.opt_outs += 1
        confirmations = 0
        for d in sends:
            if d.sent.at < opt_out.at:
                continue
            if (d.sent.step == "opt_out_confirmation" and d.message_id == opt_out.message_id
                    and d.sent.channel == opt_out.channel and confirmations == 0):
                confirmations += 1
                continue
            flag("after_opt_out", d.sent.at,
                 f"{d.sent.step or 'send'} by {d.sent.channel} after an opt-out by {opt_out.channel}")

    dnd = {key.lower(): v.get("status") for key, v in (lead.record.get("dndSettings") or {}).items()}
    for d in sends:
        if dnd.get(d.sent.channel) in ("active", "permanent"):
            flag("dnd", d.sent.at, f"{d.sent.step} by {d.sent.channel} under {d.sent.channel} DND")

    # Duplicates, per enrollment epoch.
    epochs = sorted(lead.enrolls)
    def epoch(at: datetime) -> int:
        return sum(1 for e in epochs if e <= at)
    seen: Counter[tuple[int, str]] = Counter()
    last: dict[str, datetime] = {}
    for d in automated:
        step, at = d.sent.step, d.sent.at
        if step in TIMED_ONCE:
            seen[(epoch(at), step)] += 1
            if seen[(epoch(at), step)] > 1:
                flag("duplicate_step", at, f"{step} sent again in the same enrollment")
        limit = {"nurture": timedelta(days=20), "stall_breaker": timedelta(hours=36)}.get(step)
        if limit is not None and step in last and at - last[step] < limit:
            flag("duplicate_step", at, f"{step} again {at - last[step]} after the last one")
        last[step] = at
    replies: Counter[tuple[str, str]] = Counter()
    for d in sends:
        if d.message_id and d.sent.step not in AUTOMATED:
            replies[(d.message_id, d.sent.step)] += 1
            if replies[(d.message_id, d.sent.step)] > 1:
                flag("duplicate_reply", d.sent.at, f"a second {d.sent.step} for message {d.message_id}")

    if lead.behaviour == "silent" and len(lead.enrolls) == 1 and not lead.inbound:
        found.extend(_missed(lead, automated, played, report))
    return found


def _reachable(lead: Lead, channel: str) -> bool:
    record = lead.record
    dnd = {key.lower(): v.get("status") for key, v in (record.get("dndSettings") or {}).items()}
    if channel == "email":
        return (bool(record.get("email")) and dnd.get("email") != "active") or _reachable(lead, "sms")
    if not record.get("phone"):
        return False
    return dnd.get(channel) != "active"


def _missed(lead: Lead, automated: list[Delivery], played: Played, report: Report) -> list[Violation]:
    enrolled = lead.enrolls[0]
    expected = [(step, enrolled + timedelta(days=days), channel) for step, days, channel in CADENCE]
    due = enrolled + timedelta(days=NURTURE_FIRST)
    while due < played.end:
        expected.append(("nurture", due, "sms"))
        due += timedelta(days=NURTURE_EVERY)
    found: list[Violation] = []
    used: set[int] = set()
    for step, due, channel in expected:
        if due + MISSED_AFTER > played.end or not _reachable(lead, channel):
            continue
        report.expected_silent_sends += 1
        match = next((i for i, d in enumerate(automated)
                      if i not in used and d.sent.step == step and due - timedelta(minutes=1) <= d.sent.at
                      <= due + MISSED_AFTER), None)
        if match is None:
            found.append(Violation("missed_step", lead.id, due,
                                   f"{step} due {due:%Y-%m-%d %H:%M} never sent"))
        else:
            used.add(match)
    return found
