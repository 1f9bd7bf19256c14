"""Webhook authenticity checks: GHL (Ed25519 ``X-GHL-Signature``, legacy RSA ``x-wh-signature``), Retell
(HMAC ``x-retell-signature``) and GHL event freshness. Pure functions: no I/O, no clock of their own.

Every verifier raises :class:`SignatureError` (an ``InvalidEventError``) for anything it cannot accept,
whatever the bytes and headers; a malformed *configured* key raises ``ConfigurationError`` instead.
Signatures are always checked over the raw received body bytes, never over a re-serialised parse.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ghl_real_estate_ai.errors import ConfigurationError, InvalidEventError

__all__ = [
    "GHL_ED25519_HEADER",
    "GHL_ED25519_PUBLIC_KEY_PEM",
    "GHL_RSA_HEADER",
    "GHL_RSA_PUBLIC_KEY_PEM",
    "RETELL_SIGNATURE_HEADER",
    "SignatureError",
    "check_timestamp",
    "verify_ghl_webhook",
    "verify_retell_signature",
]

GHL_ED25519_HEADER: Final = "x-ghl-signature"
GHL_RSA_HEADER: Final = "x-wh-signature"
RETELL_SIGNATURE_HEADER: Final = "x-retell-signature"

# GHL's published Ed25519 webhook key (Webhook Integration Guide, as copied by many integrations).
GHL_ED25519_PUBLIC_KEY_PEM: Final = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=\n"
    "-----END PUBLIC KEY-----\n"
)

# GHL's published legacy RSA key (WebhookAuthentication.md of GoHighLevel/highlevel-api-docs), used for
# x-wh-signature, which GHL retires in favour of X-GHL-Signature in 2026.
GHL_RSA_PUBLIC_KEY_PEM: Final[str | None] = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSC\n"
    "Frm602qYV0MaAiNnX9O8KxMbiyRKWeL9JpCpVpt4XHIcBOK4u3cLSqJGOLaPuXw6\n"
    "dO0t6Q/ZVdAV5Phz+ZtzPL16iCGeK9po6D6JHBpbi989mmzMryUnQJezlYJ3DVfB\n"
    "csedpinheNnyYeFXolrJvcsjDtfAeRx5ByHQmTnSdFUzuAnC9/GepgLT9SM4nCpv\n"
    "uxmZMxrJt5Rw+VUaQ9B8JSvbMPpez4peKaJPZHBbU3OdeCVx5klVXXZQGNHOs8gF\n"
    "3kvoV5rTnXV0IknLBXlcKKAQLZcY/Q9rG6Ifi9c+5vqlvHPCUJFT5XUGG5RKgOKU\n"
    "J062fRtN+rLYZUV+BjafxQauvC8wSWeYja63VSUruvmNj8xkx2zE/Juc+yjLjTXp\n"
    "IocmaiFeAO6fUtNjDeFVkhf5LNb59vECyrHD2SQIrhgXpO4Q3dVNA5rw576PwTzN\n"
    "h/AMfHKIjE4xQA1SZuYJmNnmVZLIZBlQAF9Ntd03rfadZ+yDiOXCCs9FkHibELhC\n"
    "HULgCsnuDJHcrGNd5/Ddm5hxGQ0ASitgHeMZ0kcIOwKDOzOU53lDza6/Y09T7sYJ\n"
    "PQe7z0cvj7aE4B+Ax1ZoZGPzpJlZtGXCsu9aTEGEnKzmsFqwcSsnw3JB31IGKAyk\n"
    "T1hhTiaCeIY/OwwwNUY2yvcCAwEAAQ==\n"
    "-----END PUBLIC KEY-----\n"
)

_RETELL_HEADER_RE: Final = re.compile(r"v=([0-9]{1,16}),d=([0-9a-f]{64})")
_MAX_SIGNATURE_HEADER = 4096


class SignatureError(InvalidEventError):
    """A webhook's signature or timestamp does not check out. ``reason`` is a short machine label."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"webhook rejected ({reason}): {detail}")


def verify_ghl_webhook(
    raw_body: bytes,
    headers: Mapping[str, str],
    ed25519_pem: str | bytes | None = GHL_ED25519_PUBLIC_KEY_PEM,
    rsa_pem: str | bytes | None = GHL_RSA_PUBLIC_KEY_PEM,
) -> Literal["ed25519", "rsa"]:
    """Check a GHL marketplace webhook; return the scheme that verified (``"ed25519"`` or ``"rsa"``).

    ``X-GHL-Signature`` (base64 Ed25519 over the raw body) is tried first; if it is absent or does not
    verify, ``x-wh-signature`` (base64 RSASSA-PKCS1-v1_5/SHA-256) is tried when ``rsa_pem`` is configured.
    Header names are matched case-insensitively. Raises :class:`SignatureError` when neither verifies.
    """
    ed_sig = _get_header(headers, GHL_ED25519_HEADER)
    rsa_sig = _get_header(headers, GHL_RSA_HEADER)
    if ed_sig is None and rsa_sig is None:
        raise SignatureError("missing", "no X-GHL-Signature or x-wh-signature header")
    body = bytes(raw_body)
    failures: list[str] = []
    if ed_sig is not None:
        if ed25519_pem is None:
            failures.append("no Ed25519 public key configured")
        elif _verify_ed25519(_ed25519_key(_as_text(ed25519_pem)), ed_sig, body):
            return "ed25519"
        else:
            failures.append("X-GHL-Signature does not match")
    if rsa_sig is not None:
        if rsa_pem is None:
            failures.append("x-wh-signature present but no RSA public key is configured")
        elif _verify_rsa(_rsa_key(_as_text(rsa_pem)), rsa_sig, body):
            return "rsa"
        else:
            failures.append("x-wh-signature does not match")
    raise SignatureError("invalid", "; ".join(failures))


def verify_retell_signature(
    raw_body: bytes,
    header: str | None,
    api_key: str,
    now_ms: int,
    tolerance_ms: int = 300_000,
) -> int:
    """Check ``x-retell-signature: v=<ms>,d=<hex HMAC-SHA256(api_key, body + ms)>``; return the timestamp.

    The header must match exactly (lowercase 64-hex digest), and ``|now_ms - ms|`` must be within
    ``tolerance_ms``. The HMAC covers the raw body bytes followed by the decimal timestamp, which is the
    UTF-8 encoding of Retell's ``body + str(ts)``. Raises :class:`SignatureError` otherwise.
    """
    if not api_key:
        raise ConfigurationError("RETELL_API_KEY", "is empty; it is needed to verify Retell webhooks")
    if header is None or not header.strip():
        raise SignatureError("missing", "no x-retell-signature header")
    if len(header) > _MAX_SIGNATURE_HEADER:
        raise SignatureError("malformed", "x-retell-signature is too long")
    match = _RETELL_HEADER_RE.fullmatch(header.strip())
    if match is None:
        raise SignatureError("malformed", "x-retell-signature is not 'v=<ms>,d=<64 hex>'")
    stamp, digest = match.group(1), match.group(2)
    timestamp = int(stamp)
    if abs(now_ms - timestamp) > tolerance_ms:
        raise SignatureError("stale", f"timestamp {timestamp} is more than {tolerance_ms} ms from now")
    expected = hmac.new(api_key.encode(), bytes(raw_body) + stamp.encode("ascii"), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, digest):
        raise SignatureError("invalid", "x-retell-signature does not match the body")
    return timestamp


def check_timestamp(
    payload_timestamp_iso: object,
    now: datetime,
    tolerance: timedelta = timedelta(minutes=5),
) -> datetime:
    """Reject a GHL event whose ``timestamp`` is further than ``tolerance`` from ``now`` (either way).

    Returns the parsed timestamp (aware, UTC). Raises :class:`SignatureError` (reason ``stale`` or
    ``malformed``) otherwise. Caution: GHL redelivers a payload only after the receiver answered 429,
    about 10 minutes later; if the redelivered payload keeps its first ``timestamp``, a 5-minute window
    rejects it, so widen ``tolerance`` where redeliveries matter and rely on ``webhookId`` dedupe.
    """
    if now.tzinfo is None:
        raise ValueError("check_timestamp needs a timezone-aware now")
    if not isinstance(payload_timestamp_iso, str) or not payload_timestamp_iso.strip():
        raise SignatureError("malformed", "the event has no timestamp")
    text = payload_timestamp_iso.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise SignatureError("malformed", f"unreadable timestamp {payload_timestamp_iso[:40]!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    stamp = stamp.astimezone(UTC)
    if abs(now - stamp) > tolerance:
        raise SignatureError("stale", f"event timestamp {stamp.isoformat()} is outside {tolerance} of now")
    return stamp


def _get_header(headers: Mapping[str, str], name: str) -> str | None:
    try:
        value = headers.get(name)
    except (TypeError, AttributeError):
        value = None
    if value is None:
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == name:
                value = candidate
                break
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if isinstance(value, str) else None


def _decode_signature(value: str) -> bytes | None:
    if len(value) > _MAX_SIGNATURE_HEADER:
        return None
    try:
        return base64.b64decode(value.strip().encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


def _verify_ed25519(key: Ed25519PublicKey, signature: str, body: bytes) -> bool:
    raw = _decode_signature(signature)
    if raw is None or len(raw) != 64:
        return False
    try:
        key.verify(raw, body)
    except InvalidSignature:
        return False
    return True


def _verify_rsa(key: RSAPublicKey, signature: str, body: bytes) -> bool:
    raw = _decode_signature(signature)
    if raw is None:
        return False
    try:
        key.verify(raw, body, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def _as_text(pem: str | bytes) -> str:
    return pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem


@functools.lru_cache(maxsize=16)
def _ed25519_key(pem: str) -> Ed25519PublicKey:
    key = _load_public_key(pem, "GHL_WEBHOOK_PUBLIC_KEY")
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError("GHL_WEBHOOK_PUBLIC_KEY", "is not an Ed25519 public key")
    return key


@functools.lru_cache(maxsize=16)
def _rsa_key(pem: str) -> RSAPublicKey:
    key = _load_public_key(pem, "GHL_WEBHOOK_RSA_PUBLIC_KEY")
    if not isinstance(key, RSAPublicKey):
        raise ConfigurationError("GHL_WEBHOOK_RSA_PUBLIC_KEY", "is not an RSA public key")
    return key


def _load_public_key(pem: str, setting: str) -> object:
    text = pem.strip().replace("\\n", "\n")  # keys pasted into .env files often carry literal \n
    try:
        return load_pem_public_key(text.encode("ascii") + b"\n")
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise ConfigurationError(setting, f"is not a valid PEM public key ({exc})") from None
