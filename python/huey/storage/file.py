"""FileStorage: queue, schedule, results and counters in a directory, engine in Rust.

Unlike huey 3.5.4's FileStorage (one global lock, a directory listing and sort per dequeue),
this one is safe and fast for many producer and consumer processes on one directory, and
loses nothing but the damaged bytes to a bad disk:

- Queue: messages appended as self-checking records (magic, length, CRC-32, 8-byte aligned)
  to per-priority segment files ``queue.d/{priority:04x}-{segment:08x}.seg`` (8 MiB each,
  deleted once read), and a memory-mapped ``queue.d/index`` holding each priority's head and
  tail, changed under ``flock`` on ``queue.d/lock``. A record is visible once the tail moves
  past it, after it is fully written. Enqueue and dequeue cost one write or read at any
  depth. Higher priorities first, FIFO within a priority; priorities are 0..65535, as in huey.
  The index is a cache: missing, zeroed, truncated or replaced, it is rebuilt from the
  segments (a dequeued record is marked consumed in place, so none comes back).
- Schedule: an append-only ``schedule.d/journal`` of the same kind of records holding the
  messages and their removals, which each process replays incrementally into an ordered map
  (exact to the microsecond of the naive datetime) and which is compacted when mostly dead.
- Damage: a record that fails its check is set aside in the dead-letter queue (its bytes, and
  the file and offset in the reason) and logged on ``huey.storage.file``; the reader finds the
  next good record and goes on. A torn journal tail (a killed writer) is truncated. A damaged
  result or counter file raises ``OSError(EBADMSG)`` naming it instead of reading as missing.
- Full or read-only disk: every write is a ``write``/``pwrite`` or goes into a file written in
  full before it is mapped, so it raises ``OSError`` (ENOSPC, EROFS) naming the path, keeps
  what was stored, and works again once space is freed.
- Results: ``results/{h0}/{h1}/{md5(key)}`` (``levels`` directory levels), in huey's own
  file format. Counters: ``counters/{md5(key)}``.
- Claims (``claim``: each periodic run enqueued once): ``claims/{md5(key)}`` holding the
  owner, its mtime the expiry, hard-linked into place from a ``claims/.{md5}.{random}`` file
  (the link fails atomically when the claim is held). Lapsed claims are deleted by the next
  claim at most once a minute.
- Dead letters: ``dead/{id}``, one file per message or damaged bytes set aside, holding its
  original bytes, reason, time and delivery count; ids sort oldest first.
- In flight (``Huey(reliable=True)``, see ``huey.reliable``): ``inflight/{token}``, one file
  per message being run, holding ``b"HRIF\\x01"``, its priority, delivery count and
  consumer, then the message bytes; the file's mtime is the lease expiry (a renewal is one
  ``utimensat``). ``inflight/{token}.recovering``: an expired entry claimed by a recovery
  that has not yet put it back (one left by a killed recovery is put back by the next).
  ``inflight/.lock`` serialises renewal and recovery. An entry that cannot be read or has
  impossible fields is set aside as a dead letter and the others are recovered. Every step
  is ordered so a killed process leaves a message queued, in flight or both, never neither.
- huey 3.5.4's directory: opening one takes it over (its ``queue/`` and ``schedule/`` files
  move into ``queue.d``/``schedule.d`` exactly once; results already share the layout), and
  ``queue`` and ``schedule`` become small text files so a huey 3.5.4 process fails loudly
  (``NotADirectoryError``) instead of reading our files.
- Other files are written under ``tmp/`` and renamed or linked into place. A process killed
  at any point never leaves half a message visible, nor loses one whose write returned.
- ``dequeue_wait`` and ``wait_result`` sleep on a directory watcher (inotify on Linux, a
  short poll elsewhere) and wake when another process writes. The GIL is released around
  all file I/O and waits.

``use_thread_lock=True`` keeps huey's meaning: one process only, so threads are serialised
with a mutex and no ``flock`` is taken. ``fsync=True`` also survives power loss.
"""

import hashlib
import os
import time
import uuid

from huey.constants import EmptyData
from huey.storage.base import BaseStorage, check_limit, dead_letter, over_cap_reason

try:
    from huey._native import FileStore
except ImportError:  # a platform without flock and mmap (Windows)
    FileStore = None


class FileStorage(BaseStorage):
    """Queue, schedule, results and counters in the directory ``path``."""

    MAX_PRIORITY = 0xFFFF
    wakeup = True  # dequeue_wait() sleeps on inotify until another process enqueues
    reliable_delivery = True  # dequeue_reliable, renew_leases, ack, recover_expired
    batch_dequeue = True  # dequeue_many: one native call under one hold of the queue lock

    def __init__(
        self,
        name='huey',
        path=None,
        levels=2,
        use_thread_lock=False,
        fsync=False,
        **storage_kwargs,
    ):
        super().__init__(name, **storage_kwargs)
        if path is None:
            raise TypeError('FileStorage requires a path: FileStorage(name, path="/some/dir")')
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f'path "{self.path}" is not a directory')
        self.levels = levels
        self.queue_path = os.path.join(self.path, 'queue.d')
        self.schedule_path = os.path.join(self.path, 'schedule.d')
        self.result_path = os.path.join(self.path, 'results')
        self.counter_path = os.path.join(self.path, 'counters')
        self.claim_path = os.path.join(self.path, 'claims')
        self._claims_swept_at = 0.0
        if FileStore is None:
            raise NotImplementedError(
                'FileStorage needs a POSIX system (flock, mmap); use SqliteStorage here'
            )
        self._store = FileStore(self.path, levels, use_thread_lock, fsync)

    def path_for_key(self, key):
        """The file holding the result stored under ``key`` (huey's layout)."""
        if isinstance(key, str):
            key = key.encode('utf8')
        checksum = hashlib.md5(key).hexdigest()
        return os.path.join(self.result_path, *checksum[: self.levels], checksum)

    def enqueue(self, data, priority=None):
        self._store.enqueue(data, int(priority or 0))

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

    def claim(self, key, owner, ttl):
        now = time.time()
        if now >= self._claims_swept_at + 60:
            self._claims_swept_at = now
            self._sweep_claims(now)
        name = hashlib.md5(key.encode('utf8')).hexdigest()
        path = os.path.join(self.claim_path, name)
        os.makedirs(self.claim_path, exist_ok=True)
        tmp = os.path.join(self.claim_path, f'.{name}.{uuid.uuid4().hex}')
        with open(tmp, 'wb') as fh:
            fh.write(owner.encode('utf8'))
        try:
            os.utime(tmp, (now + ttl, now + ttl))
            os.link(tmp, path)
            return True
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        try:
            with open(path, 'rb') as fh:
                return fh.read().decode('utf8', 'replace') == owner
        except FileNotFoundError:
            return False  # it lapsed and was swept just now: held a moment ago

    def _sweep_claims(self, now):
        try:
            entries = list(os.scandir(self.claim_path))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                expires = entry.stat().st_mtime
                if entry.name.startswith('.'):
                    # A claimant's file not yet linked (or left by a killed one): its mtime
                    # is the expiry once set, its creation time before.
                    if expires < now - 60:
                        os.unlink(entry.path)
                elif expires <= now:
                    # Moved aside before deleting, in case it was claimed afresh meanwhile.
                    aside = os.path.join(self.claim_path, f'.{entry.name}.{uuid.uuid4().hex}')
                    os.rename(entry.path, aside)
                    if os.stat(aside).st_mtime > now:
                        try:
                            os.link(aside, entry.path)
                        except FileExistsError:
                            pass
                    os.unlink(aside)
            except FileNotFoundError:
                pass  # another process swept it first

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
        return [dead_letter(*letter) for letter in self._store.dead_letters(check_limit(limit))]

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

    def mark_started(self, token):
        """Charge ``inflight/{token}`` its delivery (in place, keeping its lease); False
        when it is gone."""
        return self._store.mark_started(token)

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
        return self._store.recover_expired(
            max_deliveries, float(now), over_cap_reason('%d', max_deliveries)
        )

    def inflight_items(self):
        """``[(token, consumer, deliveries, lease_until, data)]``, soonest expiry first."""
        return self._store.inflight_items()

    def move_due_to_queue(self, ts, on_due=None):
        """Move every scheduled message due at ``ts`` into the queue; returns the moved
        messages in due order. Under the schedule lock, ``on_due(data)`` (-> priority) is
        called for every due message first, then they are enqueued, then removed from the
        schedule: signals go out before any worker can take a message, and a process
        killed between the enqueues and the removal leaves messages both queued and
        scheduled (delivered twice), never lost."""
        return self._store.move_due_to_queue(ts, on_due)

    # Heartbeats (operators' view, see BaseStorage): ``heartbeats/{consumer}``, one file per
    # consumer process, written under ``tmp/`` and renamed into place.

    def _heartbeat_path(self, consumer):
        return os.path.join(self.path, 'heartbeats', consumer.replace(os.sep, '_'))

    def put_heartbeat(self, consumer, data):
        directory = os.path.join(self.path, 'heartbeats')
        temp_dir = os.path.join(self.path, 'tmp')
        os.makedirs(directory, exist_ok=True)
        os.makedirs(temp_dir, exist_ok=True)
        temp = os.path.join(temp_dir, f'heartbeat-{os.getpid()}-{time.monotonic_ns()}')
        with open(temp, 'wb') as fh:
            fh.write(data)
        os.replace(temp, self._heartbeat_path(consumer))

    def heartbeats(self):
        directory = os.path.join(self.path, 'heartbeats')
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return {}
        records = {}
        for name in names:
            try:
                with open(os.path.join(directory, name), 'rb') as fh:
                    records[name] = fh.read()
            except FileNotFoundError:
                pass  # deleted meanwhile
        return records

    def delete_heartbeat(self, consumer):
        try:
            os.unlink(self._heartbeat_path(consumer))
        except FileNotFoundError:
            pass
