"""The priority variants of the Redis storages: the queue as a sorted set (Redis >= 5).

``huey.redis.{name}`` is a ZSET here: member = 8-byte big-endian enqueue time in microseconds
+ data, score = -priority; popped with BZPOPMIN/ZPOPMIN. Every other key is as in
``huey.storage.redis``.
"""

import struct
import time

from huey.exceptions import ConfigurationError
from huey.storage.redis import RedisStorage
from huey.storage.redis_expire import RedisExpireStorage

try:
    from redis.exceptions import ResponseError
except ImportError:  # The Redis storages are optional; huey works without redis-py.
    ResponseError = None


class RedisPriorityQueue:
    """Mixin: the queue as a sorted set so higher priorities are dequeued first (Redis >= 5).

    Members are prefixed with the enqueue time in microseconds (8 bytes, big-endian), so
    equal priorities dequeue in FIFO order and equal payloads stay distinct members.
    """

    priority = True
    _last_prefix = 0
    _queue_is_zset = True
    _member_offset = 8

    def _member(self, data):
        # Strictly increasing within this process, so two identical payloads enqueued in the
        # same microsecond never collapse into one member.
        stamp = max(int(time.time() * 1e6), self._last_prefix + 1)
        self._last_prefix = stamp
        return struct.pack('>Q', stamp) + data

    def _needs_redis_5(self, exc):
        if 'unknown command' not in str(exc).lower():
            raise exc
        raise ConfigurationError(
            f'{type(self).__name__} needs Redis >= 5.0 (ZPOPMIN/BZPOPMIN); the server at '
            f'{self.server_address} does not support them: {exc}'
        ) from exc

    def enqueue(self, data, priority=None):
        score = 0 if priority is None else -priority
        self.conn.zadd(self.queue_key, {self._member(data): score})

    def enqueue_many(self, items):
        """Enqueue ``(data, priority)`` pairs in order, with one ZADD."""
        if items:
            self.conn.zadd(
                self.queue_key,
                {
                    self._member(data): 0 if priority is None else -priority
                    for data, priority in items
                },
            )

    def _pop_blocking(self, timeout):
        try:
            item = self._block(self.conn.bzpopmin, self.queue_key, timeout=timeout)
        except ResponseError as exc:
            if 'timeout' in str(exc):
                raise
            self._needs_redis_5(exc)
        return None if item is None else item[1][8:]

    def _pop_now(self):
        try:
            items = self.conn.zpopmin(self.queue_key, count=1)
        except ResponseError as exc:
            self._needs_redis_5(exc)
        return items[0][0][8:] if items else None

    def _pop_many(self, n):
        try:
            items = self.conn.zpopmin(self.queue_key, count=n)
        except ResponseError as exc:
            self._needs_redis_5(exc)
        return [member[8:] for member, _ in items]

    def queue_size(self):
        return self.conn.zcard(self.queue_key)

    def enqueued_items(self, limit=None):
        members = self.conn.zrange(self.queue_key, 0, limit - 1 if limit else -1)
        return [member[8:] for member in members]


class PriorityRedisStorage(RedisPriorityQueue, RedisStorage):
    """RedisStorage with task priorities (sorted-set queue)."""


class PriorityRedisExpireStorage(RedisPriorityQueue, RedisExpireStorage):
    """RedisExpireStorage with task priorities (sorted-set queue)."""
