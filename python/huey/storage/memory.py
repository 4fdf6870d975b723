"""MemoryStorage: huey's in-process storage, implemented in Rust (``src/storage/memory.rs``).

Queue, schedule, results and counters live in one native object behind one lock; every method
is the native one (this class only joins it to ``BaseStorage``). ``dequeue_wait`` and
``wait_result`` are woken by the write they wait for instead of polling.
"""

from huey._native import MemoryStorage as _NativeMemoryStorage
from huey.storage.base import BaseStorage


class MemoryStorage(_NativeMemoryStorage, BaseStorage):
    """In-memory storage for tests, development and immediate mode.

    Timestamps given to ``add_to_schedule``/``read_schedule`` are ``datetime.datetime``
    objects; queued data and results are kept as the objects passed in. Result and counter
    keys may be ``str`` or ``bytes``.
    """

    blocking = False  # dequeue() returns at once...
    wakeup = True  # ...but dequeue_wait() sleeps until an enqueue wakes it
    priority = True
