"""Settings: the only place that reads the environment (and a ``.env`` file)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ghl_real_estate_ai.errors import ConfigurationError
from ghl_real_estate_ai.sequence import QuietHours

DEFAULT_GHL_API_BASE_URL = "https://services.leadconnectorhq.com"
DEFAULT_RETELL_API_BASE_URL = "https://api.retellai.com"


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(name, f"expected a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigurationError(name, f"must be positive, got {raw!r}")
    return value


def _partitions(env: Mapping[str, str]) -> int:
    """``LEAD_BOT_INTAKE_PARTITIONS``: how many intake streams; every process must use the same number."""
    value = _float(env, "LEAD_BOT_INTAKE_PARTITIONS", 16)
    if value != int(value) or not 1 <= value <= 1024:
        raise ConfigurationError("LEAD_BOT_INTAKE_PARTITIONS", f"must be a whole number from 1 to 1024, got "
                                 f"{env.get('LEAD_BOT_INTAKE_PARTITIONS')!r}")
    return int(value)


def _optional(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value not in (None, "") else None


@dataclass(frozen=True)
class Settings:
    """Everything configurable, validated once. Build with ``Settings.from_env()``."""

    redis_url: str | None = None
    data_dir: Path = Path(".lead-bot")
    ghl_api_base_url: str = DEFAULT_GHL_API_BASE_URL
    ghl_api_token: str | None = None
    ghl_location_id: str | None = None
    ghl_oauth_client_id: str | None = None
    ghl_oauth_client_secret: str | None = None
    ghl_oauth_refresh_token: str | None = None
    public_url: str | None = None
    secret_key: str | None = None
    locations_file: Path | None = None
    ghl_webhook_public_key: str | None = None
    ghl_webhook_rsa_public_key: str | None = None
    ghl_webhook_tolerance_seconds: float = 300.0
    # GHL grants 100 requests per 10 s per location; a longer window paces the bot below that (room for
    # other apps on the same locations). Never shorter than GHL's own.
    ghl_rate_window_seconds: float = 10.0
    retell_api_base_url: str = DEFAULT_RETELL_API_BASE_URL
    retell_api_key: str | None = None
    retell_from_number: str | None = None
    retell_agent_id: str | None = None
    api_token: str | None = None
    time_scale: float = 1.0
    quiet_hours: QuietHours = field(default_factory=QuietHours)
    program_name: str = "Lead Bot"
    agent_name: str = "your agent"
    agent_contact: str = ""
    human_takeover_days: float = 7.0
    checkpointer: str = "auto"
    # record format the plain saver writes: 3, or 2 while processes of the release before still run
    checkpoint_format: int = 3
    llm: str | None = None
    intake_concurrency: int = 32
    intake_claim_idle_seconds: float = 60.0
    intake_partitions: int = 16
    intake_lease_seconds: float = 10.0
    operator_wait_seconds: float = 30.0
    comps: str = "demo"
    reso_url: str | None = None
    reso_token: str | None = None
    reso_client_id: str | None = None
    reso_client_secret: str | None = None
    reso_token_url: str | None = None
    reso_scope: str = "api"
    reso_page_size: int = 200
    reso_requests_per_second: float = 2.0

    @property
    def marketplace(self) -> bool:
        """Marketplace mode (many locations): an OAuth client id and secret and no ``GHL_API_TOKEN``.
        ``GHL_API_TOKEN`` (with ``GHL_LOCATION_ID``) is single-location mode."""
        return not self.ghl_api_token and bool(self.ghl_oauth_client_id and self.ghl_oauth_client_secret)

    @property
    def oauth_redirect_uri(self) -> str | None:
        return f"{self.public_url}/oauth/callback" if self.public_url else None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, dotenv: str | os.PathLike[str] | None = ".env"
    ) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``) over an optional ``.env`` file."""
        env: dict[str, str] = {}
        if dotenv is not None and Path(dotenv).is_file():
            from dotenv import dotenv_values

            env.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
        env.update(os.environ if environ is None else environ)

        quiet_spec = _optional(env, "LEAD_BOT_QUIET_HOURS")
        try:
            quiet = QuietHours.parse(quiet_spec) if quiet_spec else QuietHours()
        except ValueError as exc:
            raise ConfigurationError("LEAD_BOT_QUIET_HOURS", str(exc)) from None
        mode = env.get("LEAD_BOT_CHECKPOINTER", "auto")
        if mode not in ("auto", "plain", "official"):
            raise ConfigurationError(
                "LEAD_BOT_CHECKPOINTER", f"expected auto, plain or official, got {mode!r}"
            )
        record_format = (env.get("LEAD_BOT_CHECKPOINT_FORMAT") or "3").strip()
        if record_format not in ("2", "3"):
            raise ConfigurationError(
                "LEAD_BOT_CHECKPOINT_FORMAT", f"expected 2 or 3, got {record_format!r}"
            )
        comps = (env.get("LEAD_BOT_COMPS") or "demo").strip().lower()
        if comps not in ("demo", "store", "reso"):
            raise ConfigurationError("LEAD_BOT_COMPS", f"expected demo, store or reso, got {comps!r}")
        reso_url = _optional(env, "LEAD_BOT_RESO_URL")
        reso_token = _optional(env, "LEAD_BOT_RESO_TOKEN")
        reso_client_id = _optional(env, "LEAD_BOT_RESO_CLIENT_ID")
        reso_client_secret = _optional(env, "LEAD_BOT_RESO_CLIENT_SECRET")
        reso_token_url = _optional(env, "LEAD_BOT_RESO_TOKEN_URL")
        if comps == "reso":
            if not reso_url:
                raise ConfigurationError("LEAD_BOT_RESO_URL", "is not set; LEAD_BOT_COMPS=reso needs the "
                                         "RESO Web API service root (…/odata)")
            if not reso_token and not (reso_client_id and reso_client_secret and reso_token_url):
                raise ConfigurationError("LEAD_BOT_RESO_TOKEN", "is not set; LEAD_BOT_COMPS=reso needs a "
                                         "bearer token, or LEAD_BOT_RESO_CLIENT_ID, _CLIENT_SECRET and "
                                         "_TOKEN_URL")
        return cls(
            comps=comps,
            reso_url=reso_url.rstrip("/") if reso_url else None,
            reso_token=reso_token,
            reso_client_id=reso_client_id,
            reso_client_secret=reso_client_secret,
            reso_token_url=reso_token_url,
            reso_scope=env.get("LEAD_BOT_RESO_SCOPE") or "api",
            reso_page_size=max(1, int(_float(env, "LEAD_BOT_RESO_PAGE_SIZE", 200))),
            reso_requests_per_second=_float(env, "LEAD_BOT_RESO_REQUESTS_PER_SECOND", 2.0),
            redis_url=_optional(env, "REDIS_URL"),
            data_dir=Path(env.get("LEAD_BOT_DATA_DIR") or ".lead-bot"),
            ghl_api_base_url=(env.get("GHL_API_BASE_URL") or DEFAULT_GHL_API_BASE_URL).rstrip("/"),
            ghl_api_token=_optional(env, "GHL_API_TOKEN"),
            ghl_location_id=_optional(env, "GHL_LOCATION_ID"),
            ghl_oauth_client_id=_optional(env, "GHL_OAUTH_CLIENT_ID"),
            ghl_oauth_client_secret=_optional(env, "GHL_OAUTH_CLIENT_SECRET"),
            ghl_oauth_refresh_token=_optional(env, "GHL_OAUTH_REFRESH_TOKEN"),
            public_url=(_optional(env, "LEAD_BOT_PUBLIC_URL") or "").rstrip("/") or None,
            secret_key=_optional(env, "LEAD_BOT_SECRET_KEY"),
            locations_file=Path(env["LEAD_BOT_LOCATIONS_FILE"]) if _optional(env, "LEAD_BOT_LOCATIONS_FILE")
            else None,
            ghl_webhook_public_key=_optional(env, "GHL_WEBHOOK_PUBLIC_KEY"),
            ghl_webhook_rsa_public_key=_optional(env, "GHL_WEBHOOK_RSA_PUBLIC_KEY"),
            ghl_webhook_tolerance_seconds=_float(env, "LEAD_BOT_WEBHOOK_TOLERANCE_SECONDS", 300.0),
            ghl_rate_window_seconds=max(10.0, _float(env, "LEAD_BOT_GHL_RATE_WINDOW_SECONDS", 10.0)),
            retell_api_base_url=(env.get("RETELL_API_BASE_URL") or DEFAULT_RETELL_API_BASE_URL).rstrip("/"),
            retell_api_key=_optional(env, "RETELL_API_KEY"),
            retell_from_number=_optional(env, "RETELL_FROM_NUMBER"),
            retell_agent_id=_optional(env, "RETELL_AGENT_ID"),
            api_token=_optional(env, "LEAD_BOT_API_TOKEN"),
            time_scale=_float(env, "LEAD_BOT_TIME_SCALE", 1.0),
            quiet_hours=quiet,
            program_name=env.get("LEAD_BOT_PROGRAM_NAME") or "Lead Bot",
            agent_name=env.get("LEAD_BOT_AGENT_NAME") or "your agent",
            agent_contact=env.get("LEAD_BOT_AGENT_CONTACT") or "",
            human_takeover_days=_float(env, "LEAD_BOT_HUMAN_TAKEOVER_DAYS", 7.0),
            checkpointer=mode,
            checkpoint_format=int(record_format),
            llm=_optional(env, "LEAD_BOT_LLM"),
            intake_concurrency=max(1, int(_float(env, "LEAD_BOT_INTAKE_CONCURRENCY", 32))),
            intake_claim_idle_seconds=_float(env, "LEAD_BOT_INTAKE_CLAIM_IDLE_SECONDS", 60.0),
            intake_partitions=_partitions(env),
            intake_lease_seconds=_float(env, "LEAD_BOT_INTAKE_LEASE_SECONDS", 10.0),
            operator_wait_seconds=_float(env, "LEAD_BOT_OPERATOR_WAIT_SECONDS", 30.0),
        )
