"""The send ledger: a touch key is claimed before an outbound HTTP call and confirmed after it.

A claimed key is never sent under blindly again, so a replayed event, a retried run or a restart cannot
text a lead twice. A claim is released only when the request certainly did not reach the provider
(connection refused, 429/5xx answered). A claim left as ``claimed`` (the process died mid-call) or a send
whose answer never came is *resolved* by the step nodes: they read the provider back (GHL's conversation
messages, Retell's call list) and confirm the send, send it once more under the same key when it is
certainly absent, or keep the at-most-once rule when the provider cannot tell.

A claim records ``claimed_at`` (wall-clock POSIX seconds: providers date their records in real time, not
in the service's virtual time) and whatever the caller adds (the channel and the text a read-back matches).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Protocol

import redis.asyncio as aioredis

from ghl_real_estate_ai.persistence.fastpath import FastScript, fast_call

DEFAULT_LEDGER_TTL_SECONDS = 400 * 86400  # longer than any lead's sequence


class SendLedger(Protocol):
    async def claim(self, key: str, detail: dict[str, Any] | None = None) -> bool:
        """Claim ``key`` (recording ``detail`` and ``claimed_at``); False when it was claimed before."""
        ...

    async def confirm(self, key: str, detail: dict[str, Any]) -> None:
        """Record that the send under ``key`` went out."""
        ...

    async def release(self, key: str) -> None:
        """Give a claim back: the send certainly did not happen and may be tried again."""
        ...

    async def get(self, key: str) -> dict[str, Any] | None:
        """What the ledger knows of ``key``: ``{"state": "claimed"|"sent", ...}`` or None."""
        ...


def _claimed(detail: dict[str, Any] | None) -> dict[str, Any]:
    return {"state": "claimed", "claimed_at": time.time(), **(detail or {})}


class InMemorySendLedger:
    """A ledger for tests, notebooks and the demo."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    async def claim(self, key: str, detail: dict[str, Any] | None = None) -> bool:
        with self._lock:
            if key in self._entries:
                return False
            self._entries[key] = _claimed(detail)
            return True

    async def confirm(self, key: str, detail: dict[str, Any]) -> None:
        with self._lock:
            self._entries[key] = {"state": "sent", **detail}

    async def release(self, key: str) -> None:
        with self._lock:
            if self._entries.get(key, {}).get("state") == "claimed":
                del self._entries[key]

    async def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(key)
            return dict(entry) if entry else None


_RELEASE = """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, 9) == '{"state":' and string.find(value, '"claimed"', 1, true) then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisSendLedger:
    """The ledger on Redis: ``SET key NX`` claims, a Lua compare-and-delete releases."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "lead-bot",
        ttl_seconds: int = DEFAULT_LEDGER_TTL_SECONDS,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._release = FastScript(client, _RELEASE)

    def _key(self, key: str) -> str:
        return f"{self._prefix}:send:{key}"

    async def claim(self, key: str, detail: dict[str, Any] | None = None) -> bool:
        claimed = await fast_call(self._redis, "SET", self._key(key), json.dumps(_claimed(detail)), "NX",
                                  "EX", self._ttl)
        return bool(claimed)

    async def confirm(self, key: str, detail: dict[str, Any]) -> None:
        await fast_call(self._redis, "SET", self._key(key), json.dumps({"state": "sent", **detail}), "EX",
                        self._ttl)

    async def release(self, key: str) -> None:
        await self._release(keys=[self._key(key)])

    async def get(self, key: str) -> dict[str, Any] | None:
        raw = await fast_call(self._redis, "GET", self._key(key))
        return json.loads(raw) if raw else None
