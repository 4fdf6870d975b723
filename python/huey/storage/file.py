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
- In flight (``Huey(reliable=True)``, see ``huey.reliable``): ``inflight/{token}``, one file
  per message being run, holding ``b"HRIF\\x01"``, its priority, delivery count and
  consumer, then the message bytes; the file's mtime is the lease expiry (a renewal is one
  ``utimensat``). ``inflight/{token}.recovering``: an expired entry claimed by a recovery
  that has not yet put it back (one left by a killed recovery is put back by the next).
  ``inflight/.lock`` serialises renewal and recovery. A message put back carries its
  delivery count in its queue record. Every step is ordered so a killed process leaves a
  message queued, in flight or both (delivered twice), never neither.
- Other files are written under ``tmp/`` and renamed or linked into place. A process killed
  at any point never leaves half a message visible, nor loses one whose write returned.
- ``dequeue_wait`` and ``wait_result`` sleep on inotify (Linux) and wake when another process
  writes; elsewhere they poll. The GIL is released around all file I/O and waits.

``use_thread_lock=True`` keeps huey's meaning: one process only, so threads are serialised
with a mutex and no ``flock`` is taken. ``fsync=True`` also survives power loss.
"""

import hashlib
import os
import time

from huey._native import FileStore
from huey.constants import EmptyData
from huey.storage.base import BaseStorage, check_limit, dead_letter, over_cap_reason


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

    def peek_many(self, keys):
        keys = list(keys)
        values = self._store.peek_many(keys) if keys else []
        return {key: value for key, value in zip(keys, values) if value is not None}

    def delete_data(self, key):
        return self._store.delete_data(key)

    def delete_and_put(self, delete_key, key, value, is_result=False):
        self._store.delete_and_put(delete_key, key, value)

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

    # Reliable delivery (``Huey(reliable=True)``): the engine is FileStore's; see the
    # module docstring for the in-flight layout and the crash ordering.

    def dequeue_reliable(self, consumer, token, lease, timeout=None):
        """Move the next message to ``inflight/{token}`` leased for ``lease`` seconds;
        ``(data, deliveries)`` or None. ``timeout`` waits as ``dequeue_wait``. The message
        leaves the queue only after its in-flight file is in place."""
        return self._store.dequeue_reliable(consumer, token, float(lease), timeout)

    def renew_leases(self, tokens, lease):
        """Extend the leases of ``tokens`` (one native call); how many are still in flight."""
        return self._store.renew_leases(list(tokens), float(lease))

    def ack(self, token):
        """Remove the in-flight entry ``token``; False when it is gone (recovered)."""
        return self._store.ack(token)

    def recover_expired(self, max_deliveries, now=None):
        """Put entries whose lease expired back in the queue at their priority, remembering
        their delivery count; those delivered ``max_deliveries`` times move to the
        dead-letter queue, returned as ``[(data, deliveries, letter_id)]``. Safe for several
        processes at once (under ``inflight/.lock``); an entry is requeued or set aside
        before its file is removed, so a crash can duplicate it but not lose it."""
        now = time.time() if now is None else now
        return self._store.recover_expired(max_deliveries, float(now),
                                           over_cap_reason('%d', max_deliveries))

    def inflight_items(self):
        """``[(token, consumer, deliveries, lease_until, data)]``, soonest expiry first."""
        return self._store.inflight_items()

    def move_due_to_queue(self, ts, priority_of=None):
        """Move every scheduled message due at ``ts`` into the queue (``priority_of(data)``
        gives each priority); returns the moved messages in due order. Schedule and queue
        are separate files, so this is not one atomic step: under the schedule lock the due
        messages are enqueued first and removed from the schedule after, so a process killed
        between leaves them both queued and scheduled (delivered twice), never lost."""
        return self._store.move_due_to_queue(ts, priority_of)
