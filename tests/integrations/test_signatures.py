"""Webhook signature and freshness checks, with property tests that the verifiers only ever raise
SignatureError on arbitrary input."""

from __future__ import annotations

import base64
import contextlib
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ghl_real_estate_ai.api.signatures import (
    GHL_ED25519_PUBLIC_KEY_PEM,
    GHL_RSA_PUBLIC_KEY_PEM,
    SignatureError,
    check_timestamp,
    verify_ghl_webhook,
    verify_retell_signature,
)
from ghl_real_estate_ai.errors import ConfigurationError, InvalidEventError
from ghl_real_estate_ai.testing.keys import (
    TEST_ED25519_PUBLIC_PEM,
    TEST_RETELL_API_KEY,
    retell_signature,
    rsa_public_pem,
    sign_ghl,
)
from ghl_real_estate_ai.testing.webhooks import encode, inbound_message

BODY = encode(inbound_message("cI08i1Bls3iTB9bKgFJh", "Yes, can we see it Saturday?",
                              webhook_id="8d1f3c2e-0b6a-4e51-9a77-2f0c6d4b1a90",
                              date_added="2026-07-05T18:31:45.750Z"))
NOW_MS = 1_751_740_800_000


def verify(body: bytes, headers: dict[str, str], **keys: str | None) -> str:
    keys.setdefault("ed25519_pem", TEST_ED25519_PUBLIC_PEM)
    keys.setdefault("rsa_pem", rsa_public_pem())
    return verify_ghl_webhook(body, headers, keys["ed25519_pem"], keys["rsa_pem"])


def other_ed25519_pem() -> str:
    public = Ed25519PrivateKey.generate().public_key()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return public.public_bytes(serialization.Encoding.PEM, spki).decode()


def test_signature_error_is_an_invalid_event() -> None:
    assert issubclass(SignatureError, InvalidEventError)


def test_published_ghl_key_loads() -> None:
    assert GHL_ED25519_PUBLIC_KEY_PEM.startswith("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA")
    assert GHL_RSA_PUBLIC_KEY_PEM is not None
    key = serialization.load_pem_public_key(GHL_RSA_PUBLIC_KEY_PEM.encode())
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 4096
    # The published key's SHA-256 (DER) fingerprint, as GHL integrations record it.
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    fingerprint = "2f62045d413b1b7747e26770ce7f57840cbf86288cd20ceb90d299a62501fd25"
    assert hashlib.sha256(der).hexdigest() == fingerprint
    with pytest.raises(SignatureError):  # genuine GHL keys that did not sign this body
        verify_ghl_webhook(BODY, sign_ghl(BODY, rsa_legacy=True))


def test_valid_ed25519() -> None:
    assert verify(BODY, sign_ghl(BODY)) == "ed25519"


def test_valid_rsa_only() -> None:
    headers = sign_ghl(BODY, ed25519=False, rsa_legacy=True)
    assert "X-GHL-Signature" not in headers
    assert verify(BODY, headers) == "rsa"


def test_ed25519_preferred_when_both_present() -> None:
    assert verify(BODY, sign_ghl(BODY, rsa_legacy=True)) == "ed25519"


def test_rsa_fallback_when_ed25519_fails() -> None:
    headers = sign_ghl(BODY, rsa_legacy=True)
    headers["X-GHL-Signature"] = base64.b64encode(b"\0" * 64).decode()
    assert verify(BODY, headers) == "rsa"


def test_header_names_are_case_insensitive() -> None:
    headers = {k.lower(): v for k, v in sign_ghl(BODY, rsa_legacy=True).items()}
    assert verify(BODY, headers) == "ed25519"
    upper = {k.upper(): v for k, v in sign_ghl(BODY, ed25519=False, rsa_legacy=True).items()}
    assert verify(BODY, upper) == "rsa"


def test_tampered_body_fails() -> None:
    headers = sign_ghl(BODY, rsa_legacy=True)
    tampered = BODY.replace(b"Saturday", b"Sunday")
    with pytest.raises(SignatureError) as caught:
        verify(tampered, headers)
    assert caught.value.reason == "invalid"
    # Even a semantically identical re-serialisation fails: verification is over the raw bytes.
    with pytest.raises(SignatureError):
        verify(BODY.replace(b",", b", "), headers)


def test_wrong_key_fails() -> None:
    with pytest.raises(SignatureError):
        verify(BODY, sign_ghl(BODY), ed25519_pem=other_ed25519_pem())


def test_missing_headers() -> None:
    with pytest.raises(SignatureError) as caught:
        verify(BODY, {"Content-Type": "application/json"})
    assert caught.value.reason == "missing"


def test_rsa_header_without_configured_key() -> None:
    with pytest.raises(SignatureError, match="no RSA public key"):
        verify(BODY, sign_ghl(BODY, ed25519=False, rsa_legacy=True), rsa_pem=None)


def test_key_pasted_with_literal_newlines_still_loads() -> None:
    assert verify(BODY, sign_ghl(BODY), ed25519_pem=TEST_ED25519_PUBLIC_PEM.replace("\n", "\\n")) == "ed25519"


def test_malformed_configured_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        verify(BODY, sign_ghl(BODY), ed25519_pem="not a key")
    with pytest.raises(ConfigurationError):
        verify(BODY, sign_ghl(BODY), ed25519_pem=rsa_public_pem())  # an RSA key where Ed25519 belongs


def test_retell_valid() -> None:
    header = retell_signature(BODY, TEST_RETELL_API_KEY, NOW_MS - 1_000)
    assert verify_retell_signature(BODY, header, TEST_RETELL_API_KEY, NOW_MS) == NOW_MS - 1_000


def test_retell_tampered() -> None:
    header = retell_signature(BODY, TEST_RETELL_API_KEY, NOW_MS)
    with pytest.raises(SignatureError) as caught:
        verify_retell_signature(BODY + b" ", header, TEST_RETELL_API_KEY, NOW_MS)
    assert caught.value.reason == "invalid"
    with pytest.raises(SignatureError):
        verify_retell_signature(BODY, header, "key_other", NOW_MS)


@pytest.mark.parametrize("offset", [300_001, -300_001, 10**9])
def test_retell_stale(offset: int) -> None:
    header = retell_signature(BODY, TEST_RETELL_API_KEY, NOW_MS - offset)
    with pytest.raises(SignatureError) as caught:
        verify_retell_signature(BODY, header, TEST_RETELL_API_KEY, NOW_MS)
    assert caught.value.reason == "stale"


def test_retell_tolerance_edge() -> None:
    header = retell_signature(BODY, TEST_RETELL_API_KEY, NOW_MS - 300_000)
    verify_retell_signature(BODY, header, TEST_RETELL_API_KEY, NOW_MS)


@pytest.mark.parametrize("header", [
    None,
    "",
    "v=123",
    "d=" + "a" * 64,
    "v=abc,d=" + "a" * 64,
    "v=1751740800000,d=" + "A" * 64,  # uppercase hex is not Retell's format
    "v=1751740800000,d=" + "a" * 63,
    "v=1751740800000, d=" + "a" * 64,
    "v=١٧٥١٧٤٠٨٠٠٠٠٠,d=" + "a" * 64,  # non-ASCII digits
    "v=" + "9" * 5000 + ",d=" + "a" * 64,
])
def test_retell_malformed_header(header: str | None) -> None:
    with pytest.raises(SignatureError) as caught:
        verify_retell_signature(BODY, header, TEST_RETELL_API_KEY, NOW_MS)
    assert caught.value.reason in ("missing", "malformed")


def test_retell_empty_key_is_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        verify_retell_signature(BODY, "v=1,d=" + "a" * 64, "", NOW_MS)


def test_check_timestamp() -> None:
    now = datetime(2026, 7, 5, 18, 35, tzinfo=UTC)
    parsed = check_timestamp("2026-07-05T18:31:46.100Z", now)
    assert parsed == datetime(2026, 7, 5, 18, 31, 46, 100_000, tzinfo=UTC)
    check_timestamp("2026-07-05T13:31:46-05:00", now)
    with pytest.raises(SignatureError) as caught:
        check_timestamp("2026-07-05T18:20:00Z", now)
    assert caught.value.reason == "stale"
    with pytest.raises(SignatureError):
        check_timestamp("2026-07-05T18:50:00Z", now)  # from the future
    check_timestamp("2026-07-05T18:20:00Z", now, tolerance=timedelta(minutes=30))
    for bad in (None, "", "yesterday", 1751740800):
        with pytest.raises(SignatureError) as caught:
            check_timestamp(bad, now)
        assert caught.value.reason == "malformed"
    with pytest.raises(ValueError):
        check_timestamp("2026-07-05T18:31:46Z", datetime(2026, 7, 5, 18, 35))


# Free text, and base64 of random bytes (which includes well-formed 64-byte "signatures").
header_text = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=100).map(lambda raw: base64.b64encode(raw).decode()),
    st.binary(min_size=64, max_size=64).map(lambda raw: base64.b64encode(raw).decode()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=512),
    headers=st.dictionaries(
        st.sampled_from(["X-GHL-Signature", "x-ghl-signature", "x-wh-signature", "X-WH-SIGNATURE", "other"]),
        header_text,
        max_size=4,
    ),
)
def test_ghl_verifier_only_raises_signature_error(body: bytes, headers: dict[str, str]) -> None:
    with contextlib.suppress(SignatureError):
        verify(body, headers)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=512),
    header=st.one_of(
        st.none(),
        st.text(max_size=200),
        st.builds(lambda ts, d: f"v={ts},d={d}", st.integers(min_value=0, max_value=10**20),
                  st.text(alphabet="0123456789abcdef", min_size=60, max_size=68)),
    ),
    now_ms=st.integers(min_value=-(10**15), max_value=10**15),
)
def test_retell_verifier_only_raises_signature_error(body: bytes, header: str | None, now_ms: int) -> None:
    with contextlib.suppress(SignatureError):
        verify_retell_signature(body, header, TEST_RETELL_API_KEY, now_ms)


@settings(max_examples=200, deadline=None)
@given(stamp=st.one_of(st.none(), st.text(max_size=60), st.integers(), st.floats()))
def test_check_timestamp_only_raises_signature_error(stamp: object) -> None:
    with contextlib.suppress(SignatureError):
        check_timestamp(stamp, datetime(2026, 7, 5, tzinfo=UTC))


@settings(max_examples=50, deadline=None)
@given(body=st.binary(max_size=256))
def test_signed_bodies_always_verify(body: bytes) -> None:
    assert verify(body, sign_ghl(body, rsa_legacy=True)) == "ed25519"
    header = retell_signature(body, TEST_RETELL_API_KEY, NOW_MS)
    assert verify_retell_signature(body, header, TEST_RETELL_API_KEY, NOW_MS) == NOW_MS
