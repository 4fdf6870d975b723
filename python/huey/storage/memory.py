"""MemoryStorage: huey's in-process storage, implemented in Rust (``src/storage/memory.rs``).

Queue, schedule, results and counters live in one native object behind one lock; every method
is the native one (this class only joins it to ``BaseStorage``). ``dequeue_wait`` and
``wait_result`` are woken by the write they wait for instead of polling. Dead letters, a cold
path, are a Python dict (id -> letter, oldest first) behind their own lock.
"""

import itertools
import threading
import time

from huey._native import MemoryStorage as _NativeMemoryStorage
from huey.storage.base import BaseStorage, check_limit, dead_letter


class MemoryStorage(_NativeMemoryStorage, BaseStorage):
    """In-memory storage for tests, development and immediate mode.

    Timestamps given to ``add_to_schedule``/``read_schedule`` are ``datetime.datetime``
    objects; queued data and results are kept as the objects passed in. Result and counter
    keys may be ``str`` or ``bytes``.
    """

    blocking = False  # dequeue() returns at once...
    wakeup = True  # ...but dequeue_wait() sleeps until an enqueue wakes it
    priority = True

    def __init__(self, name='huey', **storage_kwargs):
        super().__init__(name, **storage_kwargs)
        self._dead_lock = threading.Lock()
        self._dead = {}
        self._dead_ids = itertools.count(1)

    def put_dead_letter(self, data, reason, deliveries=1):
        with self._dead_lock:
            id = str(next(self._dead_ids))
            self._dead[id] = dead_letter(id, data, str(reason), time.time(), int(deliveries))
        return id

    def dead_letters(self, limit=None):
        limit = check_limit(limit)
        with self._dead_lock:
            letters = list(itertools.islice(self._dead.values(), limit))
        return [dict(letter) for letter in letters]

    def pop_dead_letter(self, id):
        with self._dead_lock:
            return self._dead.pop(str(id), None)

    def flush_dead_letters(self):
        with self._dead_lock:
            self._dead.clear()

    def dead_letter_count(self):
        return len(self._dead)
