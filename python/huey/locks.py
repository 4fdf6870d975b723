"""``TaskLock`` (mutual exclusion through ``put_if_empty``) and ``RateLimit`` (a fixed-window
counter), both kept in the Huey instance's storage."""

import itertools
import time
from functools import wraps

from huey.exceptions import RateLimitExceeded, TaskLockedException


class _Decorator:
    """Makes a context manager usable as a decorator too."""

    def __call__(self, fn):
        @wraps(fn)
        def inner(*args, **kwargs):
            with self:
                return fn(*args, **kwargs)

        return inner


class TaskLock(_Decorator):
    def __init__(self, huey, name, ttl=None):
        self._huey = huey
        self._name = name
        self._ttl = ttl
        self._key = f'{huey.name}.lock.{name}'
        huey._locks.add(self._key)

    def is_locked(self):
        return self._huey.storage.has_data_for_key(self._key)

    locked = is_locked

    def acquire(self):
        if not self._huey.put_if_empty(self._key, '1', self._ttl):
            raise TaskLockedException(f'unable to acquire lock {self._name}')
        return True

    def clear(self):
        return self._huey.delete(self._key)

    release = clear

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self._huey.delete(self._key)


class RateLimit(_Decorator):
    """At most ``limit`` acquisitions per ``per`` seconds (windows aligned to the epoch)."""

    def __init__(self, huey, name, limit, per, retry=True):
        if limit < 0 or per <= 0:
            raise ValueError(
                f'rate limit {name!r} needs limit >= 0 and per > 0, got '
                f'limit={limit!r}, per={per!r}'
            )
        self._huey = huey
        self._name = name
        self._limit = limit
        self._per = per
        self._retry = retry
        self._counter_key = f'{huey.name}.rl.{name}'
        self._window_key = f'{huey.name}.rl.{name}.w'

    def _current_window(self, now):
        return int(now) // self._per

    def _time_until_reset(self, now):
        return (self._current_window(now) + 1) * self._per - now

    def reset(self):
        self._huey.delete(self._window_key)
        self._huey.storage.delete_counter(self._counter_key)

    def acquire(self):
        now = time.time()
        window = self._current_window(now)
        if self._huey.get(self._window_key, peek=True) != window:
            self._huey.storage.delete_counter(self._counter_key)
            self._huey.put(self._window_key, window)
        if self._huey.storage.incr(self._counter_key) > self._limit:
            raise RateLimitExceeded(self._name, self._time_until_reset(now), retry=self._retry)

    def current_usage(self):
        return self._huey.storage.incr(self._counter_key, 0)

    def __enter__(self):
        self.acquire()

    def __exit__(self, exc_type, exc_val, exc_tb):
        pass


def flush_locks(huey, names):
    """``Huey.flush_locks``: delete the locks ``huey`` knows plus ``names``; returns the
    names of those that were held."""
    locks = huey._locks
    if names:
        locks = itertools.chain(locks, (f'{huey.name}.lock.{n.strip()}' for n in names))
    flushed = set()
    for lock_key in list(locks):
        if huey.delete(lock_key):
            flushed.add(lock_key.split('.lock.', 1)[-1])
    return flushed
