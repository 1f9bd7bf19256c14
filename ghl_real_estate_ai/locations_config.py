"""Per-location settings and words from a TOML file (``LEAD_BOT_LOCATIONS_FILE``), and their check.

The file has a ``[defaults]`` table and one ``[locations."<location id>"]`` table per location; a
location's table overrides the defaults key by key (its ``[...templates]`` table template by template)::

    [defaults]
    agent_name = "Sam Reyes"
    program_name = "Reyes Home Team"

    [locations."Loc123"]
    quiet_hours = "09:00-19:00"          # narrows the service's LEAD_BOT_QUIET_HOURS, never widens it
    [locations."Loc123".templates]
    day_3_sms = "Hey {first_name}, {agent_name} here ... Reply STOP to opt out."

Keys: ``agent_name``, ``program_name``, ``agent_contact``, ``quiet_hours``, ``retell_agent_id``,
``retell_from_number``, ``llm_responder`` (bool) and ``templates``. Template names and the ``{fields}``
each may use are :data:`TEMPLATE_FIELDS`; list-valued ones (``nurture_sms``, ``stall_breaker_sms``) take a
list of variants. :func:`check_locations_file` refuses (``LocationsFileError``, naming the location and
the key): unknown keys and templates, unknown ``{fields}``, a ``day_3_sms`` (the first text) without the
opt-out footer ("STOP"), and an SMS template that could exceed ``SMS_LIMIT`` with the longest values
the bot inserts. The opt-out confirmation is not a template a location can change (it is the
compliance text the bot recognises so it is sent at most once). Without a file, the built-in words of
``messages.py`` and ``conversation/templates.py`` are the defaults.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ghl_real_estate_ai.errors import LeadBotError
from ghl_real_estate_ai.sequence import QuietHours

SMS_LIMIT = 320
_SEQ = frozenset({"first_name", "agent_name", "program_name", "area"})

TEMPLATE_FIELDS: Mapping[str, frozenset[str]] = {
    # the timed sequence (messages.py)
    "day_3_sms": _SEQ,
    "day_7_sms": _SEQ,  # the call step's SMS fallback
    "day_14_sms": _SEQ,  # the email step's SMS fallback
    "day_14_email_subject": _SEQ,
    "day_14_email_html": _SEQ,
    "day_30_sms": _SEQ,
    "nurture_sms": _SEQ,
    "stall_breaker_sms": _SEQ,
    # replies (conversation/templates.py)
    "opt_in_confirmation": frozenset({"program"}),
    "help_reply": frozenset({"program", "agent", "reach", "frequency"}),
    "handoff_confirmation": frozenset({"first_name", "agent", "when"}),
    "home_value_ack": frozenset({"first_name", "place"}),
    "cma_by_agent": frozenset({"first_name", "place", "agent"}),
    "cma_ask_address": frozenset({"first_name"}),
    "not_interested_close": frozenset({"first_name"}),
    "has_agent_close": frozenset({"first_name"}),
    "already_sold_close": frozenset({"first_name"}),
    "question_reply": frozenset({"first_name", "agent", "about"}),
    "other_reply": frozenset({"first_name", "agent"}),
    "cma_sms": frozenset({"first_name", "subject", "value", "low", "high", "count", "size_hint", "agent"}),
    "cma_email_subject": frozenset({"value"}),
}
LIST_TEMPLATES = frozenset({"nurture_sms", "stall_breaker_sms"})
NOT_SMS = frozenset({"day_14_email_subject", "day_14_email_html", "cma_email_subject"})

# The longest value the bot inserts for each field (templates.py clips to these), for the length check.
_LONGEST = {
    "first_name": "x" * 30, "agent_name": "x" * 40, "program_name": "x" * 40, "area": " in " + "x" * 40,
    "program": "x" * 40, "agent": "x" * 40, "reach": "Questions? Call or text " + "x" * 60 + ".",
    "frequency": "Msg frequency varies.", "when": "to confirm " + "x" * 40, "place": "x" * 60,
    "about": " on " + "x" * 60, "subject": "homes like " + "x" * 60, "value": "$12,345,678",
    "low": "$12,345,678", "high": "$12,345,678", "count": "12",
    "size_hint": " Send your home's square footage for a sharper number.",
}

SCALAR_KEYS = {"agent_name": str, "program_name": str, "agent_contact": str, "quiet_hours": str,
               "retell_agent_id": str, "retell_from_number": str, "llm_responder": bool}


class LocationsFileError(LeadBotError):
    """The locations file is unreadable or wrong; names the table (location) and the key."""

    def __init__(self, path: str, where: str, key: str | None, problem: str) -> None:
        self.where = where
        self.key = key
        spot = f"{where}, key {key!r}" if key else where
        super().__init__(f"{path}: {spot}: {problem}")


@dataclass(frozen=True)
class LocationSettings:
    """What one location may set; ``None``/empty means "the service's setting"."""

    agent_name: str | None = None
    program_name: str | None = None
    agent_contact: str | None = None
    quiet_hours: str | None = None
    retell_agent_id: str | None = None
    retell_from_number: str | None = None
    llm_responder: bool | None = None
    templates: Mapping[str, Any] = field(default_factory=dict)

    def over(self, base: LocationSettings) -> LocationSettings:
        """These settings on top of ``base`` (templates merged name by name)."""
        values = {k: getattr(self, k) for k in SCALAR_KEYS if getattr(self, k) is not None}
        return replace(base, **values, templates={**base.templates, **self.templates})


@dataclass(frozen=True)
class LocationsFile:
    defaults: LocationSettings = field(default_factory=LocationSettings)
    locations: Mapping[str, LocationSettings] = field(default_factory=dict)

    def for_location(self, location_id: str) -> LocationSettings:
        own = self.locations.get(location_id)
        return own.over(self.defaults) if own is not None else self.defaults


def narrowed(base: QuietHours, spec: str) -> QuietHours:
    """``base`` narrowed by ``spec`` (a ``QuietHours`` spec): every window is the intersection."""
    extra = QuietHours.parse(spec)
    states = {s: base.window_for(s).intersect(w) for s, w in extra.states.items()}
    for state, window in base.states.items():
        states.setdefault(state, window.intersect(extra.default))
    return QuietHours(base.default.intersect(extra.default), states)


def _fields(template: str) -> set[str]:
    names = set()
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            names.add(name.split(".")[0].split("[")[0])
    return names


def _check_template(path: str, where: str, name: str, value: Any) -> Any:
    key = f"templates.{name}"
    allowed = TEMPLATE_FIELDS.get(name)
    if allowed is None:
        known = ", ".join(sorted(TEMPLATE_FIELDS))
        raise LocationsFileError(path, where, key, f"unknown template (known: {known})")
    variants = value if name in LIST_TEMPLATES else [value]
    if name in LIST_TEMPLATES and (not isinstance(value, list) or not value):
        raise LocationsFileError(path, where, key, "must be a non-empty list of strings")
    for text in variants:
        if not isinstance(text, str) or not text.strip():
            raise LocationsFileError(path, where, key, "must be a non-empty string")
        try:
            used = _fields(text)
        except ValueError as exc:
            raise LocationsFileError(path, where, key, f"is not a valid template ({exc})") from None
        unknown = used - allowed
        if unknown:
            raise LocationsFileError(path, where, key, f"unknown field {{{sorted(unknown)[0]}}} "
                                     f"(allowed: {', '.join('{' + f + '}' for f in sorted(allowed))})")
        if name == "day_3_sms" and "STOP" not in text.upper():
            raise LocationsFileError(path, where, key, "the first SMS must carry the opt-out footer "
                                     "(e.g. \"Reply STOP to opt out.\")")
        if name not in NOT_SMS:
            longest = len(text.format(**{f: _LONGEST.get(f, "") for f in used}))
            if longest > SMS_LIMIT:
                raise LocationsFileError(path, where, key, f"can reach {longest} characters with the longest "
                                         f"names; an SMS may have at most {SMS_LIMIT}")
    return list(value) if name in LIST_TEMPLATES else value


def _settings(path: str, where: str, table: Any, base_quiet: QuietHours) -> LocationSettings:
    if not isinstance(table, dict):
        raise LocationsFileError(path, where, None, "must be a table")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "templates":
            if not isinstance(value, dict):
                raise LocationsFileError(path, where, key, "must be a table of templates")
            values["templates"] = {n: _check_template(path, where, n, t) for n, t in value.items()}
            continue
        kind = SCALAR_KEYS.get(key)
        if kind is None:
            known = ", ".join([*SCALAR_KEYS, "templates"])
            raise LocationsFileError(path, where, key, f"unknown key (known: {known})")
        if not isinstance(value, kind):
            raise LocationsFileError(path, where, key, f"must be a {'boolean' if kind is bool else 'string'}")
        if key == "quiet_hours" and isinstance(value, str):
            try:
                narrowed(base_quiet, value)
            except ValueError as exc:
                raise LocationsFileError(path, where, key, str(exc)) from None
        values[key] = value
    return LocationSettings(**values)


def check_locations_file(path: str | Path, base_quiet: QuietHours | None = None) -> LocationsFile:
    """Read and validate the file; ``LocationsFileError`` names the location and key of the first problem."""
    shown = str(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise LocationsFileError(shown, "file", None, f"cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise LocationsFileError(shown, "file", None, f"is not valid TOML ({exc})") from None
    quiet = base_quiet or QuietHours()
    for key in data:
        if key not in ("defaults", "locations"):
            raise LocationsFileError(shown, "top level", key, "unknown table (use [defaults] and "
                                     "[locations.\"<location id>\"])")
    defaults = _settings(shown, "[defaults]", data.get("defaults", {}), quiet)
    locations_table = data.get("locations", {})
    if not isinstance(locations_table, dict):
        raise LocationsFileError(shown, "top level", "locations", "must be a table of locations")
    locations = {str(loc): _settings(shown, f'[locations."{loc}"]', table, quiet)
                 for loc, table in locations_table.items()}
    return LocationsFile(defaults, locations)
