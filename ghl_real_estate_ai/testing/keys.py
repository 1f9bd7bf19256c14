"""Test-only webhook signing keys and helpers: sign bodies the way GHL and Retell do, with keys we own.

The Ed25519 pair is derived from a fixed seed, so its public PEM is the same in every process (handy for
a ``.env`` used by the demo). RSA key generation cannot be seeded with ``cryptography``, so the RSA pair
is generated once per process, on first use. Never use these keys outside tests and the demo.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from typing import Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "TEST_ED25519_PRIVATE_KEY",
    "TEST_ED25519_PUBLIC_PEM",
    "TEST_RETELL_API_KEY",
    "retell_signature",
    "rsa_private_key",
    "rsa_public_pem",
    "sign_ghl",
    "sign_retell",
]

TEST_RETELL_API_KEY: Final = "key_test_lead_bot_retell_0000000000"

TEST_ED25519_PRIVATE_KEY: Final = Ed25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"ghl_real_estate_ai test webhook key").digest()
)
TEST_ED25519_PUBLIC_PEM: Final = (
    TEST_ED25519_PRIVATE_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode("ascii")
)


@functools.cache
def rsa_private_key() -> rsa.RSAPrivateKey:
    """This process's test RSA key (2048 bits; GHL's real one is larger, which changes nothing here)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def rsa_public_pem() -> str:
    """The PEM of :func:`rsa_private_key`'s public half."""
    return (
        rsa_private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def sign_ghl(body: bytes, *, ed25519: bool = True, rsa_legacy: bool = False) -> dict[str, str]:
    """Headers a GHL delivery of ``body`` would carry: ``X-GHL-Signature`` and/or ``x-wh-signature``.

    Both are base64 signatures over the exact bytes: Ed25519, and RSASSA-PKCS1-v1_5 with SHA-256.
    """
    headers = {"Content-Type": "application/json"}
    if ed25519:
        headers["X-GHL-Signature"] = base64.b64encode(TEST_ED25519_PRIVATE_KEY.sign(body)).decode("ascii")
    if rsa_legacy:
        signature = rsa_private_key().sign(body, padding.PKCS1v15(), hashes.SHA256())
        headers["x-wh-signature"] = base64.b64encode(signature).decode("ascii")
    return headers


def retell_signature(body: bytes, api_key: str, ts_ms: int) -> str:
    """The ``x-retell-signature`` value: ``v=<ts_ms>,d=<hex HMAC-SHA256(api_key, body + str(ts_ms))>``."""
    digest = hmac.new(api_key.encode(), body + str(ts_ms).encode("ascii"), hashlib.sha256).hexdigest()
    return f"v={ts_ms},d={digest}"


def sign_retell(body: bytes, api_key: str, ts_ms: int) -> dict[str, str]:
    """Headers a Retell webhook delivery of ``body`` would carry."""
    return {"Content-Type": "application/json", "x-retell-signature": retell_signature(body, api_key, ts_ms)}
