"""Start-up migration of Redis keys renamed to share a Redis Cluster hash tag.

Keys that one script or MULTI uses together must live in one cluster slot, so they carry one ``{hash
tag}``. Where that renamed a key, a standalone server still holds data under the old name: on start-up
(``LeadBotService``, every role) :func:`migrate_renamed_keys` moves it in one atomic script. For each
``old -> new`` pair: an absent ``old`` is skipped; with ``new`` absent ``old`` is ``RENAME``d; with both
present (an old process wrote during a rolling upgrade) the entries of ``old`` that ``new`` lacks are
copied into it (hash fields by ``HSETNX``, ZSET members by ``ZADD NX``: the new layout wins) and ``old``
is deleted. Running it again changes nothing. A cluster is skipped: the old layout could not run there
(its scripts crossed slots), so no cluster holds old-layout data.

Renamed so far (``P`` = the key prefix, ``lead-bot``):

=============================  ==============================
old                            new
=============================  ==============================
``P:scheduler:jobs``           ``{P:scheduler}:jobs``
``P:scheduler:run_times``      ``{P:scheduler}:run_times``
``P:scheduler:retries``        ``{P:scheduler}:retries``
=============================  ==============================
"""

from __future__ import annotations

import logging
from typing import Any

from ghl_real_estate_ai.persistence.redis_client import is_cluster_client
from ghl_real_estate_ai.services.lead_sequence_scheduler import legacy_scheduler_keys, scheduler_keys

log = logging.getLogger(__name__)

__all__ = ["migrate_renamed_keys", "renamed_keys"]

# KEYS: old1, new1, old2, new2, ... Returns how many old keys were moved.
_MIGRATE = """
local moved = 0
for i = 1, #KEYS, 2 do
  local old, new = KEYS[i], KEYS[i + 1]
  if redis.call('EXISTS', old) == 1 then
    if redis.call('EXISTS', new) == 0 then
      redis.call('RENAME', old, new)
    else
      local kind = redis.call('TYPE', old)['ok']
      if kind == 'hash' then
        local flat = redis.call('HGETALL', old)
        for j = 1, #flat, 2 do redis.call('HSETNX', new, flat[j], flat[j + 1]) end
      elseif kind == 'zset' then
        local flat = redis.call('ZRANGE', old, 0, -1, 'WITHSCORES')
        for j = 1, #flat, 2 do redis.call('ZADD', new, 'NX', flat[j + 1], flat[j]) end
      else
        return redis.error_reply('cannot merge ' .. old .. ' of type ' .. kind .. ' into ' .. new)
      end
      redis.call('DEL', old)
    end
    moved = moved + 1
  end
end
return moved
"""


def renamed_keys(prefix: str) -> list[tuple[str, str]]:
    """Every ``(old, new)`` key name pair under ``prefix``."""
    return list(zip(legacy_scheduler_keys(prefix), scheduler_keys(prefix), strict=True))


async def migrate_renamed_keys(client: Any, *, prefix: str) -> int:
    """Move data from old key names to new ones (see the module docstring); returns how many old keys
    were moved. Does nothing on a Redis Cluster."""
    if is_cluster_client(client):
        return 0
    pairs = renamed_keys(prefix)
    keys = [name for pair in pairs for name in pair]
    moved = int(await client.eval(_MIGRATE, len(keys), *keys))
    if moved:
        log.info("moved %d Redis keys to their hash-tagged names (%s)", moved, ", ".join(n for _, n in pairs))
    return moved
