"""FileStorage: queue, schedule, results and counters in a directory, engine in Rust.

Unlike huey 3.5.4's FileStorage (one global lock, a directory listing and sort per dequeue),
this one is safe and fast for many producer and consumer processes on one directory:

- Queue: messages appended as records to per-priority segment files
  ``queue/{priority:04x}-{segment:08x}.seg`` (8 MiB each, deleted once read), and a
  memory-mapped ``queue/index`` holding each priority's head and tail positions, changed under
  ``flock``. A record is visible once the tail moves past it, after it is fully written.
  Enqueue and dequeue cost one write or read at any depth, and create no file per message.
  Higher priorities first, FIFO within a priority; priorities are integers 0..65535, as in
  huey.
- Schedule: an append-only ``schedule/journal`` of checksummed records holding the messages
  and their removals, which each process replays incrementally into an ordered map (exact to
  the microsecond of the naive datetime) and which is compacted when mostly dead.
- Results: ``results/{h0}/{h1}/{md5(key)}`` (``levels`` directory levels), in huey's own
  file format. Counters: ``counters/{md5(key)}``.
- Dead letters: ``dead/{id}``, one file per undecodable message set aside, holding its
  original bytes, reason, time and delivery count; ids sort oldest first.
- Other files are written under ``tmp/`` and renamed or linked into place. A process killed
  at any point never leaves half a message visible, nor loses one whose write returned.
- ``dequeue_wait`` and ``wait_result`` sleep on inotify (Linux) and wake when another process
  writes; elsewhere they poll. The GIL is released around all file I/O and waits.

``use_thread_lock=True`` keeps huey's meaning: one process only, so threads are serialised
with a mutex and no ``flock`` is taken. ``fsync=True`` also survives power loss.
"""

import hashlib
import os

from huey._native import FileStore
from huey.constants import EmptyData
from huey.storage.base import BaseStorage, check_limit, dead_letter


class FileStorage(BaseStorage):
    """Queue, schedule, results and counters in the directory ``path``."""

    MAX_PRIORITY = 0xFFFF
    wakeup = True  # dequeue_wait() sleeps on inotify until another process enqueues

    def __init__(self, name='huey', path=None, levels=2, use_thread_lock=False, fsync=False,
                 **storage_kwargs):
        super().__init__(name, **storage_kwargs)
        if path is None:
            raise TypeError('FileStorage requires a path: FileStorage(name, path="/some/dir")')
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f'path "{self.path}" is not a directory')
        self.levels = levels
        self.queue_path = os.path.join(self.path, 'queue')
        self.schedule_path = os.path.join(self.path, 'schedule')
        self.result_path = os.path.join(self.path, 'results')
        self.counter_path = os.path.join(self.path, 'counters')
        self._store = FileStore(self.path, levels, use_thread_lock, fsync)

    def path_for_key(self, key):
        """The file holding the result stored under ``key`` (huey's layout)."""
        if isinstance(key, str):
            key = key.encode('utf8')
        checksum = hashlib.md5(key).hexdigest()
        return os.path.join(self.result_path, *checksum[:self.levels], checksum)

    def enqueue(self, data, priority=None):
        self._store.enqueue(data, int(priority or 0))

    def dequeue(self):
        return self._store.dequeue()

    def dequeue_wait(self, timeout):
        return self._store.dequeue_wait(timeout)

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
        self._store.put_data(key, value)

    def peek_data(self, key):
        value = self._store.peek_data(key)
        return EmptyData if value is None else value

    def pop_data(self, key):
        value = self._store.pop_data(key)
        return EmptyData if value is None else value

    def has_data_for_key(self, key):
        return self._store.has_data_for_key(key)

    def wait_result(self, key, timeout=None, backoff=1.15, max_delay=1.0):
        return self._store.wait_result(key, timeout, backoff, max_delay)

    def put_if_empty(self, key, value, ttl=None):
        if ttl is not None:
            raise NotImplementedError('ttl is not supported by this storage.')
        return self._store.put_if_empty(key, value)

    def incr(self, key, amount=1):
        return self._store.incr(key, amount)

    def delete_counter(self, key):
        self._store.delete_counter(key)

    def result_store_size(self):
        return self._store.result_store_size()

    def result_items(self):
        return self._store.result_items()

    def flush_results(self):
        self._store.flush_results()

    def flush_counters(self):
        self._store.flush_counters()

    def put_dead_letter(self, data, reason, deliveries=1):
        return self._store.put_dead_letter(data, str(reason), deliveries)

    def dead_letters(self, limit=None):
        return [dead_letter(*letter)
                for letter in self._store.dead_letters(check_limit(limit))]

    def pop_dead_letter(self, id):
        letter = self._store.pop_dead_letter(str(id))
        return None if letter is None else dead_letter(*letter)

    def flush_dead_letters(self):
        self._store.flush_dead_letters()

    def dead_letter_count(self):
        return self._store.dead_letter_count()
