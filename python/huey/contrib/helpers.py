"""Redis-only helpers: a counting semaphore and a task decorator built on it.

Layout (shared with huey 3.5.4): the semaphore ``name`` of a Huey called ``q`` is the sorted
set ``q.lock.<name>``; each member is one holder's id, scored by the Redis server time (in
seconds) at which it was acquired or last renewed. Holders older than ``timeout`` are dropped
on the next acquire, so a slot held by a dead worker comes back after ``timeout`` seconds.
The key is registered in ``huey._locks`` like huey's own locks (``flush_locks()`` only
deletes result-store keys, so it leaves the sorted set alone, as huey 3.5.4 does).
"""

import threading
import uuid
from functools import wraps

from huey.exceptions import ConfigurationError, TaskLockedException

# KEYS[1] = set; ARGV = timeout, slots, holder. Server time, so clients need no clock sync.
_ACQUIRE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
local held = redis.call('ZSCORE', KEYS[1], ARGV[3])
if not held and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
return 1
"""

# KEYS[1] = set; ARGV[1] = holder. Only a current holder is renewed (never re-added).
_RENEW = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
local now = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(now[1]) + tonumber(now[2]) / 1e6, ARGV[1])
return 1
"""

_DEFAULT_TIMEOUT = 300


class RedisSemaphore:
    """A lock that up to ``value`` holders can hold at once (Redis storages only).

    It never blocks: ``acquire`` returns a holder id, or None when all slots are taken.
    A storage without a Redis connection raises ``ConfigurationError`` on first use.
    """

    def __init__(self, huey, name, value=1, timeout=None):
        self.huey = huey
        self.key = f'{huey.name}.lock.{name}'
        self.value = value
        self.timeout = timeout or _DEFAULT_TIMEOUT
        huey._locks.add(self.key)

    @property
    def conn(self):
        conn = getattr(self.huey.storage, 'conn', None)
        if conn is None:
            raise ConfigurationError('Semaphore requires a Redis storage.')
        return conn

    def acquire(self, name=None):
        """Take a slot as holder ``name`` (a new uuid by default); returns the holder id, or
        None when the semaphore is full. Acquiring a slot already held just renews it."""
        name = name or str(uuid.uuid4())
        if self.conn.eval(_ACQUIRE, 1, self.key, self.timeout, self.value, name):
            return name
        return None

    def renew(self, name):
        """Restart ``name``'s timeout; False when it no longer holds a slot."""
        return bool(self.conn.eval(_RENEW, 1, self.key, name))

    def release(self, name):
        """Give back ``name``'s slot; returns 1, or 0 if it held none."""
        return self.conn.zrem(self.key, name)

    def _renew_until(self, name, stop):
        # Three renewals per timeout: a slow round trip cannot let the slot lapse.
        while not stop.wait(self.timeout / 3.0):
            self.renew(name)


def lock_task_semaphore(huey, lock_name, value=1, timeout=None):
    """Decorator: at most ``value`` calls of the function run at once, across workers.

    A call that finds every slot taken raises ``TaskLockedException`` at once (combine with
    ``retries``/``retry_delay`` to try later). While the call runs, a background thread renews
    its slot, so ``timeout`` (default 300s) only bounds how long a dead worker holds one.
    """
    semaphore = RedisSemaphore(huey, lock_name, value, timeout)

    def decorator(fn):
        @wraps(fn)
        def inner(*args, **kwargs):
            holder = semaphore.acquire()
            if holder is None:
                raise TaskLockedException(f'unable to acquire lock {lock_name}')
            stop = threading.Event()
            renewer = threading.Thread(
                target=semaphore._renew_until, args=(holder, stop), daemon=True
            )
            renewer.start()
            try:
                return fn(*args, **kwargs)
            finally:
                stop.set()
                renewer.join()
                semaphore.release(holder)

        return inner

    return decorator
