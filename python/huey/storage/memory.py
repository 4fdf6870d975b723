"""MemoryStorage: huey's in-process storage, its engine in Rust (``src/storage/memory.rs``).

Queue, schedule, results, counters and dead letters live in one native ``MemoryStore``
behind one lock; this class holds it and fills in ``BaseStorage`` with its methods, as
``FileStorage`` does with its ``FileStore``. ``dequeue_wait`` and ``wait_result`` are woken
by the write they wait for instead of polling. Claims (a cold path) are a Python dict,
key -> (owner, expiry on the monotonic clock), behind a lock of their own.
"""

import threading
import time

from huey._native import MemoryStore
from huey.storage.base import BaseStorage, check_limit, dead_letter


class MemoryStorage(BaseStorage):
    """In-memory storage for tests, development and immediate mode.

    Timestamps given to ``add_to_schedule``/``read_schedule`` are ``datetime.datetime``
    objects; queued data and results are kept as the objects passed in. Result and counter
    keys may be ``str`` or ``bytes``.
    """

    blocking = False  # dequeue() returns at once...
    wakeup = True  # ...but dequeue_wait() sleeps until an enqueue wakes it
    priority = True
    # dequeue_many is one native call under one lock, but the consumer does not prefetch
    # here: a call into this process's own store costs no round trip for a buffer to save,
    # and the buffer's Python bookkeeping made Memory drains ~15% slower (make bench).
    batch_dequeue = False

    # Called once or more per task: unless a subclass overrides one of these, the instance
    # gets the native store's bound method itself, so no Python frame sits in between.
    _DIRECT = (
        'enqueue',
        'dequeue',
        'dequeue_wait',
        'dequeue_many',
        'put_data',
        'peek_data',
        'pop_data',
        'delete_data',
        'has_data_for_key',
        'incr',
    )

    def __init__(self, name='huey', **storage_kwargs):
        super().__init__(name, **storage_kwargs)
        self._store = MemoryStore()
        cls = type(self)
        for method in self._DIRECT:
            if getattr(cls, method) is getattr(MemoryStorage, method):
                setattr(self, method, getattr(self._store, method))
        self._claim_lock = threading.Lock()
        self._claims = {}
        self._claims_swept_at = float('-inf')

    def claim(self, key, owner, ttl):
        now = time.monotonic()
        with self._claim_lock:
            claims = self._claims
            if now >= self._claims_swept_at + 1:
                # At most once a second: a pass over every claim for each one taken would
                # cost quadratic time in the number of periodic tasks.
                self._claims_swept_at = now
                for lapsed in [k for k, (_, expires) in claims.items() if expires <= now]:
                    del claims[lapsed]
            held = claims.get(key)
            if held is not None and held[1] > now:
                return held[0] == owner
            claims[key] = (owner, now + ttl)
            return True

    def enqueue(self, data, priority=None):
        self._store.enqueue(data, priority)

    def dequeue(self):
        return self._store.dequeue()

    def dequeue_wait(self, timeout):
        return self._store.dequeue_wait(timeout)

    def dequeue_many(self, n, timeout=None):
        return self._store.dequeue_many(n, timeout)

    def queue_size(self):
        return self._store.queue_size()

    def enqueued_items(self, limit=None):
        return self._store.enqueued_items(limit)

    def flush_queue(self):
        self._store.flush_queue()

    def add_to_schedule(self, data, ts):
        self._store.add_to_schedule(data, ts)

    def read_schedule(self, ts):
        return self._store.read_schedule(ts)

    def schedule_size(self):
        return self._store.schedule_size()

    def scheduled_items(self, limit=None):
        return self._store.scheduled_items(limit)

    def flush_schedule(self):
        self._store.flush_schedule()

    def put_data(self, key, value, is_result=False):
        self._store.put_data(key, value, is_result)

    def peek_data(self, key):
        return self._store.peek_data(key)

    def peek_many(self, keys):
        return self._store.peek_many(keys)

    def pop_data(self, key):
        return self._store.pop_data(key)

    def delete_data(self, key):
        return self._store.delete_data(key)

    def has_data_for_key(self, key):
        return self._store.has_data_for_key(key)

    def wait_result(self, key, timeout=None, backoff=1.15, max_delay=1.0):
        # Woken by the write itself: backoff and max_delay (polling parameters) are unused.
        return self._store.wait_result(key, timeout)

    def put_if_empty(self, key, value, ttl=None):
        # ttl is accepted and ignored, as huey's MemoryStorage does.
        return self._store.put_if_empty(key, value)

    def incr(self, key, amount=1):
        return self._store.incr(key, amount)

    def delete_counter(self, key):
        self._store.delete_counter(key)

    @property
    def _counters(self):
        """A snapshot of the counters as a dict (huey's own tests read this attribute)."""
        return self._store.counters()

    def result_store_size(self):
        return self._store.result_store_size()

    def result_items(self):
        return self._store.result_items()

    def flush_results(self):
        self._store.flush_results()

    def flush_counters(self):
        self._store.flush_counters()

    def flush_all(self):
        self._store.flush_all()

    def put_dead_letter(self, data, reason, deliveries=1):
        return self._store.put_dead_letter(data, str(reason), deliveries)

    def dead_letters(self, limit=None):
        return [dead_letter(*letter) for letter in self._store.dead_letters(check_limit(limit))]

    def pop_dead_letter(self, id):
        letter = self._store.pop_dead_letter(str(id))
        return None if letter is None else dead_letter(*letter)

    def flush_dead_letters(self):
        self._store.flush_dead_letters()

    def dead_letter_count(self):
        return self._store.dead_letter_count()
