"""The storage interface: every method ``Huey``, the consumer and the tools call, and the
no-op ``BlackHoleStorage``.

A storage keeps four things, all as opaque values (bytes, except MemoryStorage which keeps the
objects it is given): a queue, a schedule, a key/value store (results, revocations, locks) with
counters, and a dead-letter queue. Huey never looks at a storage's type or probes it for
methods: everything it may call is declared on ``BaseStorage``, and the capability attributes
below say which optional behaviours a storage really has.

Writing a storage: implement the methods huey 3.5.4 documents (the ones that raise
``NotImplementedError`` here); everything else has a default built on them, so a storage
written for huey 3.5.4 works unchanged. Override the defaults to be faster or safer:
``enqueue_many`` (one round trip), ``dequeue_wait`` (wake on enqueue), ``move_due_to_queue``
(crash-safe schedule move), ``peek_many`` / ``delete_and_put`` (fewer round trips), ``claim``
(claims apart from results, expired natively), the dead-letter methods (a dedicated area), and
the reliable-delivery methods (``Huey(reliable=True)``; set ``reliable_delivery = True`` once
they are implemented).
"""

import struct
import sys
import threading
import time
import uuid

from huey.constants import EmptyData


class BaseStorage:
    """Queue, schedule, key/value store, counters and dead letters for one queue ``name``."""

    # Capabilities: class attributes a storage overrides (or sets per instance) to say what it
    # can do. Huey and the consumer read them instead of probing the storage.

    #: ``dequeue()`` itself waits up to ``read_timeout`` seconds for a message (Redis BRPOP),
    #: so the consumer does not need to sleep between empty reads.
    blocking = False
    #: How long a blocking ``dequeue()`` waits, in seconds; None when it does not block.
    read_timeout = None
    #: ``dequeue_wait(timeout)`` sleeps until an enqueue (from any process sharing the storage)
    #: wakes it; when False the consumer polls ``dequeue()`` with exponential backoff.
    wakeup = False
    #: ``enqueue(data, priority)`` honours priorities (higher first). A storage without them
    #: may raise ``NotImplementedError`` for a non-zero priority.
    priority = True
    #: The reliable-delivery methods (``dequeue_reliable``, ``mark_started``,
    #: ``renew_leases``, ``ack``, ``recover_expired``, ``inflight_items``) are implemented;
    #: ``Huey(reliable=True)`` refuses a storage without them.
    reliable_delivery = False
    #: ``dequeue_many(n)`` takes several messages with one call to the server; the
    #: consumer's prefetch (``huey.prefetch``) is used only on storages that do.
    batch_dequeue = False
    #: The same for reliable mode: ``dequeue_reliable_many`` takes several messages into
    #: flight with one call, and ``release_inflight`` puts taken ones back.
    batch_reliable = False

    def __init__(self, name='huey', **storage_kwargs):
        self.name = name

    def close(self):
        """Release connections, files or handles (the consumer calls it before forking
        workers, which then open their own). The storage stays usable: it reconnects on
        next use."""

    # -- queue -------------------------------------------------------------------------------

    def enqueue(self, data, priority=None):
        """Append ``data`` to the queue. ``priority`` (a number, None meaning 0): higher is
        dequeued first; equal priorities leave in FIFO order."""
        raise NotImplementedError

    def enqueue_many(self, items):
        """Enqueue each ``(data, priority)`` pair of the list ``items``, in order (one round
        trip where the storage can). Default: ``enqueue`` each."""
        for data, priority in items:
            self.enqueue(data, priority)

    def dequeue(self):
        """Remove and return the next message, or None when the queue is empty. A ``blocking``
        storage first waits up to ``read_timeout`` seconds for one."""
        raise NotImplementedError

    def dequeue_wait(self, timeout):
        """Like ``dequeue``, but when the queue is empty wait up to ``timeout`` seconds for a
        message. Only called when ``wakeup`` is true or a caller passes a timeout; the default
        does not wait (it is ``dequeue()``)."""
        return self.dequeue()

    def dequeue_many(self, n, timeout=None):
        """Up to ``n`` messages (a list; empty when none came), with one call to the server
        where the storage can; when the queue is empty, wait for one as ``dequeue()`` does,
        or as ``dequeue_wait(timeout)`` does when ``timeout`` is given. The consumer's
        prefetch (``huey.prefetch``) uses it. Default: one message."""
        check_batch(n)
        data = self.dequeue() if timeout is None else self.dequeue_wait(timeout)
        return [] if data is None else [data]

    def queue_size(self):
        """How many messages are queued."""
        raise NotImplementedError

    def enqueued_items(self, limit=None):
        """The queued messages (at most ``limit``), in the order they will be dequeued,
        without removing them."""
        raise NotImplementedError

    def flush_queue(self):
        """Remove every queued message."""
        raise NotImplementedError

    # -- schedule ----------------------------------------------------------------------------

    def add_to_schedule(self, data, ts):
        """Keep ``data`` until the naive datetime ``ts`` (UTC or local, as the Huey is)."""
        raise NotImplementedError

    def read_schedule(self, ts):
        """Remove and return every scheduled message due at or before ``ts``, soonest first."""
        raise NotImplementedError

    def move_due_to_queue(self, ts, on_due=None):
        """Move every message due at or before ``ts`` from the schedule to the queue; return
        the moved messages, soonest first.

        ``on_due(data)`` is called once for each message this call moves, *before* any worker
        can dequeue that message, and returns the priority to enqueue it at (Huey decodes the
        task there and sends ``SIGNAL_ENQUEUED``, so receivers hear of a task before it can
        run). A storage that can should make the move crash-safe: a process killed at any
        point leaves each message scheduled or queued (or, at worst, both), never neither;
        and two schedulers at once must not both call ``on_due`` for one message.

        Default: ``read_schedule(ts)``, then ``on_due`` and ``enqueue`` for each message, as
        huey 3.5.4's scheduler does (a crash between the read and the enqueues loses the
        messages read).
        """
        messages = self.read_schedule(ts)
        for data in messages:
            self.enqueue(data, on_due(data) if on_due is not None else None)
        return messages

    def schedule_size(self):
        """How many messages are scheduled."""
        raise NotImplementedError

    def scheduled_items(self, limit=None):
        """The scheduled messages (at most ``limit``), soonest first, without removing them."""
        raise NotImplementedError

    def flush_schedule(self):
        """Remove every scheduled message."""
        raise NotImplementedError

    # -- key/value store and counters ----------------------------------------------------------

    def put_data(self, key, value, is_result=False):
        """Store ``value`` at ``key`` (``str``), replacing any value. ``is_result`` marks a
        task result (storages that expire results apply it only to those)."""
        raise NotImplementedError

    def peek_data(self, key):
        """The value at ``key``, or ``EmptyData``; the value stays."""
        raise NotImplementedError

    def peek_many(self, keys):
        """A dict of ``key -> value`` for those of ``keys`` that hold a value (Huey checks a
        task's revocation flags with one call). Default: ``peek_data`` each."""
        found = {}
        for key in keys:
            value = self.peek_data(key)
            if value is not EmptyData:
                found[key] = value
        return found

    def pop_data(self, key):
        """Remove and return the value at ``key``, or ``EmptyData``."""
        raise NotImplementedError

    def has_data_for_key(self, key):
        """Whether ``key`` holds a value."""
        raise NotImplementedError

    def delete_data(self, key):
        """Remove the value at ``key``; True when there was one. Default: ``pop_data``."""
        return self.pop_data(key) is not EmptyData

    def delete_and_put(self, delete_key, key, value, is_result=False):
        """``delete_data(delete_key)`` then ``put_data(key, value, is_result)`` (the consumer
        clears a task's revocation flag and stores its result this way; storages with round
        trips do both in one)."""
        self.delete_data(delete_key)
        self.put_data(key, value, is_result)

    def delete_put_and_peek(self, delete_key, key, value, peek_keys):
        """The consumer's last write for one task and first read for the next, with one round
        trip where the storage can: ``delete_and_put(delete_key, key, value, True)`` (only
        ``delete_data(delete_key)`` when ``key`` is None), then ``peek_many(peek_keys)``,
        whose dict it returns (the next task's revocation flags, see ``huey.prefetch``)."""
        if key is None:
            self.delete_data(delete_key)
        else:
            self.delete_and_put(delete_key, key, value, is_result=True)
        return self.peek_many(peek_keys)

    def put_if_empty(self, key, value, ttl=None):
        """Store ``value`` at ``key`` only when ``key`` holds nothing; True when stored.
        ``ttl`` (seconds): the value expires; storages that cannot raise
        ``NotImplementedError``. Default: ``has_data_for_key`` then ``put_data`` (not atomic
        across processes: override it where locks must be exact)."""
        if ttl is not None:
            raise NotImplementedError('ttl is not supported by this storage.')
        if self.has_data_for_key(key):
            return False
        self.put_data(key, value)
        return True

    def wait_result(self, key, timeout=None, backoff=1.15, max_delay=1.0):
        """Wait until ``key`` holds a value: True, or False once ``timeout`` seconds (None:
        no limit) passed first. Default: poll ``has_data_for_key``, the pause growing by
        ``backoff`` up to ``max_delay`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while not self.has_data_for_key(key):
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                time.sleep(min(delay, max_delay, remaining))
            else:
                time.sleep(min(delay, max_delay))
            delay *= backoff
        return True

    def incr(self, key, amount=1):
        """Add ``amount`` to the counter ``key`` (a missing counter is 0), atomically; return
        the new value."""
        raise NotImplementedError

    def delete_counter(self, key):
        """Remove the counter ``key``."""
        raise NotImplementedError

    def result_store_size(self):
        """How many keys the key/value store holds."""
        raise NotImplementedError

    def result_items(self):
        """Every ``key -> value`` of the key/value store (keys as ``str``)."""
        raise NotImplementedError

    def flush_results(self):
        """Remove every key/value pair."""
        raise NotImplementedError

    def flush_counters(self):
        """Remove every counter."""
        raise NotImplementedError

    def flush_all(self):
        """Empty the queue, schedule, key/value store and counters (dead letters stay)."""
        self.flush_queue()
        self.flush_schedule()
        self.flush_results()
        self.flush_counters()

    # -- claims --------------------------------------------------------------------------------
    #
    # How consumers sharing a storage agree that exactly one of them does something: each
    # takes a claim on a key, and one wins. The periodic scheduler (huey.periodic) claims each
    # due minute of each periodic task, so one consumer enqueues it however many check.

    def claim(self, key, owner, ttl):
        """Take the claim ``key`` (a str) for ``owner`` (a str naming the claimant) for
        ``ttl`` seconds. True when ``owner`` holds it after the call (it was free, or
        ``owner`` already held it: claims are reentrant), False while another owner holds it.
        Of several owners claiming one free key at once, from any processes, exactly one
        gets True. A claim lapses ``ttl`` seconds after it was taken and the storage then
        removes it, so claims never accumulate; a lapsed key may be claimed again.

        Default: ``put_if_empty`` of ``claim:{key}`` in the key/value store, the value holding
        the expiry (unix time) and the owner, so a claim is as atomic as the storage's
        ``put_if_empty``. Each process deletes the claims it took once they lapse, and its
        first call deletes lapsed claims that exited processes left (one ``result_items()``
        pass). Override to keep claims apart from results and expire them natively.
        """
        book = vars(self).setdefault('_claim_book', _ClaimBook())
        now = time.time()
        book.expire(self, now)
        stored = _CLAIM_PREFIX + key
        expires = now + ttl
        if self.put_if_empty(stored, f'{expires:.3f} {owner}'.encode()):
            book.taken(stored, expires)
            return True
        held = _parse_claim(self.peek_data(stored))
        return held is not None and held[1] == owner

    # -- dead letters --------------------------------------------------------------------------
    #
    # Messages that could not be decoded (or, in reliable mode, were delivered too often), kept
    # with the reason. They are no part of the queue, schedule or results, and flush_all()
    # leaves them: like a mail server's dead-letter folder they are evidence to inspect, not
    # state to reset. Each letter is a dict {'id': str, 'data': bytes, 'reason': str,
    # 'time': unix float, 'deliveries': int}; ids sort oldest first.
    #
    # Default: letters kept in the key/value store under 'dead-letter:{id}' (so a storage
    # written for huey 3.5.4 keeps them too; they then show in result_items() and go with
    # flush_results()). Storages with a dedicated area override all five methods.

    def put_dead_letter(self, data, reason, deliveries=1):
        """Keep ``data`` aside with ``reason`` and its delivery count; return the new id."""
        id = f'{time.time_ns():020d}-{uuid.uuid4().hex[:8]}'
        self.put_data(_LETTER_PREFIX + id, _pack_letter(data, str(reason), int(deliveries)))
        return id

    def dead_letters(self, limit=None):
        """The dead letters, oldest first (at most ``limit``)."""
        limit = check_limit(limit)
        letters = sorted(self._stored_letters().items())
        return [_unpack_letter(id, value) for id, value in letters[:limit]]

    def pop_dead_letter(self, id):
        """Remove and return the letter ``id``, or None when there is no such letter."""
        value = self.pop_data(_LETTER_PREFIX + str(id))
        return None if value is EmptyData else _unpack_letter(str(id), value)

    def flush_dead_letters(self):
        """Remove every dead letter."""
        for id in self._stored_letters():
            self.delete_data(_LETTER_PREFIX + id)

    def dead_letter_count(self):
        """How many dead letters there are."""
        return len(self._stored_letters())

    def _stored_letters(self):
        letters = {}
        for key, value in self.result_items().items():
            key = key.decode('utf8') if isinstance(key, bytes) else str(key)
            if key.startswith(_LETTER_PREFIX):
                letters[key[len(_LETTER_PREFIX) :]] = value
        return letters

    # -- reliable delivery ---------------------------------------------------------------------
    #
    # For Huey(reliable=True), see huey.reliable. A dequeue *moves* the message into an
    # in-flight area under a delivery token with a lease (an expiry time); the run's ack
    # removes it. Entries whose lease ran out (their consumer died) are put back in the queue,
    # or dead-lettered once delivered max_deliveries times. Every step must be atomic: a crash
    # may deliver a message twice, never lose it. Storages implementing these set
    # ``reliable_delivery = True``.

    def dequeue_reliable(self, consumer, token, lease, timeout=None):
        """Move the next message into the in-flight area under ``token`` (a fresh str),
        recording ``consumer`` (a label for operators) and a lease of ``lease`` seconds.
        Return ``(data, deliveries)``, ``deliveries`` counting this one (1 for a message
        never delivered before), or None when the queue stayed empty; ``timeout`` waits for a
        message as ``dequeue_wait`` does (None: as ``dequeue`` does). The entry is charged
        this delivery only once ``mark_started`` says its task started."""
        raise NotImplementedError(_no_reliable(self))

    def mark_started(self, token):
        """Charge the in-flight entry ``token`` one delivery: its task starts running now.
        ``dequeue_reliable`` does not charge, so a message whose consumer died before
        starting it goes back with its count unchanged. True when the entry is still in
        flight. Default: True, for a storage whose ``dequeue_reliable`` charges every
        delivery itself (then a message fetched but never started is charged too)."""
        return True

    def dequeue_reliable_many(self, consumer, tokens, lease, timeout=None):
        """``dequeue_reliable`` for up to one message per token in ``tokens`` (fresh strs),
        with one call where the storage can (``batch_reliable``): ``[(token, data,
        deliveries)]`` in queue order, [] when the queue stayed empty. Default: one
        ``dequeue_reliable`` with the first token."""
        token = tokens[0]
        got = self.dequeue_reliable(consumer, token, lease, timeout)
        return [] if got is None else [(token, *got)]

    def release_inflight(self, tokens, max_deliveries):
        """Put the in-flight entries ``tokens``, taken but never started, back at the front
        of the queue now, as ``recover_expired`` does for an expired one (keeping their
        delivery counts; one at ``max_deliveries`` goes to the dead-letter queue); returns
        ``recover_expired``'s pair. Required with ``batch_reliable``. Default: nothing is
        put back, and each is recovered once its lease expires."""
        return 0, []

    def start_and_peek(self, token, peek_keys):
        """``mark_started(token)`` and, when it was still in flight, ``peek_many(peek_keys)``
        (the task's revocation flags, read as it starts): ``(started, {key: value})``.
        Storages with round trips do both in one."""
        started = self.mark_started(token)
        return started, (self.peek_many(peek_keys) if started else {})

    def ack_and_start(self, ack_token, start_token, peek_keys):
        """A worker's ack of the task it finished and the start of the next one it took
        from the prefetch buffer, with one call where the storage can: ``ack(ack_token)``,
        then ``start_and_peek(start_token, peek_keys)``; ``(acked, started, {key:
        value})``."""
        acked = self.ack(ack_token)
        return (acked, *self.start_and_peek(start_token, peek_keys))

    def renew_leases(self, tokens, lease):
        """Extend the lease of each in-flight entry in ``tokens`` to ``lease`` seconds from
        now; return how many are still in flight (an entry recovered meanwhile is not)."""
        raise NotImplementedError(_no_reliable(self))

    def renew_delete_and_put(self, token, lease, delete_key, key, value):
        """A reliable run's fence and its result write: renew ``token``'s lease to ``lease``
        seconds and, only if it is still in flight, ``delete_and_put(delete_key, key, value,
        True)`` (only ``delete_data(delete_key)`` when ``key`` is None). True when the entry
        was still in flight and the write was made, False when it had been recovered and
        nothing was written. Storages with round trips do it in one atomic step."""
        if self.renew_leases([token], lease) != 1:
            return False
        if key is None:
            self.delete_data(delete_key)
        else:
            self.delete_and_put(delete_key, key, value, is_result=True)
        return True

    def ack(self, token):
        """Remove the in-flight entry ``token`` (its run is recorded); True when it was still
        there, False when it had been recovered."""
        raise NotImplementedError(_no_reliable(self))

    def recover_expired(self, max_deliveries, now=None):
        """Put every in-flight entry whose lease ended before ``now`` (unix time, default the
        current time) back in the queue at its priority, keeping its delivery count; entries
        delivered ``max_deliveries`` times go to the dead-letter queue instead, in the same
        atomic step, with the reason ``over_cap_reason(deliveries, max_deliveries)``. Return
        ``(requeued count, [(data or None, deliveries, letter id), ...])``. An entry that
        cannot be read or holds impossible fields (a corrupt count, priority or lease) is
        set aside in the dead-letter queue with the reason, logged (not listed), and the
        other entries are recovered all the same. Default: nothing is in flight on a storage
        without reliable delivery."""
        return 0, []

    def inflight_items(self):
        """The in-flight entries as ``[(token, consumer, deliveries, lease_until, data)]``,
        soonest expiry first. Default: none."""
        return []

    # -- heartbeats (operators' view: huey.monitor, the `huey` command, the dashboard) ------
    #
    # Every running consumer keeps one small record here, rewritten every few seconds off
    # the task path: who it is, when it last beat, and a bounded summary of what it ran
    # (see huey.monitor for the record). Records are no part of the queue, schedule, results
    # or counters: flush_all() leaves them and result_count() does not see them. Consumers
    # delete records that stopped beating an hour ago, so they never pile up.
    #
    # Default: kept in this storage object, so seen only by this process (right for
    # MemoryStorage). A storage shared between processes overrides all three so that
    # `huey info` and the dashboard, run elsewhere, see its consumers.

    def put_heartbeat(self, consumer, data):
        """Store ``data`` (bytes) as the record of ``consumer`` (a str id), replacing it."""
        self.__dict__.setdefault('_heartbeat_records', {})[consumer] = bytes(data)

    def heartbeats(self):
        """Every consumer's record, as ``{consumer: data}``; reading changes nothing."""
        return dict(self.__dict__.get('_heartbeat_records', {}))

    def delete_heartbeat(self, consumer):
        """Remove the record of ``consumer``, if there is one."""
        self.__dict__.get('_heartbeat_records', {}).pop(consumer, None)


_CLAIM_PREFIX = 'claim:'


def _parse_claim(value):
    """``(expiry, owner)`` of a claim stored by the default ``claim``, or None."""
    if value is EmptyData or not isinstance(value, (bytes, bytearray, memoryview)):
        return None
    expires, _, owner = bytes(value).decode('utf8', 'replace').partition(' ')
    try:
        return float(expires), owner
    except ValueError:
        return None


class _ClaimBook:
    """The claims one process took through the default ``claim``, deleted once they lapse;
    the first ``expire`` also deletes lapsed claims that other (exited) processes left."""

    def __init__(self):
        self.lock = threading.Lock()
        self.swept = False
        self.held = {}  # stored key -> expiry

    def taken(self, key, expires):
        with self.lock:
            self.held[key] = expires

    def expire(self, storage, now):
        with self.lock:
            lapsed = [key for key, expires in self.held.items() if expires <= now]
            for key in lapsed:
                del self.held[key]
            sweep, self.swept = not self.swept, True
        if sweep:
            for key, value in storage.result_items().items():
                key = key.decode('utf8') if isinstance(key, bytes) else str(key)
                held = _parse_claim(value) if key.startswith(_CLAIM_PREFIX) else None
                if held is not None and held[0] <= now:
                    lapsed.append(key)
        for key in lapsed:
            storage.delete_data(key)


_LETTER_PREFIX = 'dead-letter:'
_LETTER_HEADER = struct.Struct('>dII')  # time, deliveries, reason length


def _pack_letter(data, reason, deliveries):
    encoded = reason.encode('utf8')
    return _LETTER_HEADER.pack(time.time(), deliveries, len(encoded)) + encoded + bytes(data)


def _unpack_letter(id, value):
    when, deliveries, length = _LETTER_HEADER.unpack_from(value)
    start = _LETTER_HEADER.size
    reason = bytes(value[start : start + length]).decode('utf8')
    return dead_letter(id, bytes(value[start + length :]), reason, when, deliveries)


def _no_reliable(storage):
    return f'{type(storage).__name__} does not support reliable delivery'


def dead_letter(id, data, reason, time, deliveries):
    """One dead letter as the dict every storage returns."""
    return {'id': id, 'data': data, 'reason': reason, 'time': time, 'deliveries': deliveries}


def over_cap_reason(deliveries, cap):
    """The reason recorded for a message dead-lettered at the delivery cap (``deliveries``
    may be a format placeholder such as ``'%d'``)."""
    return f'delivered {deliveries} times without completing (max_deliveries={cap})'


def check_limit(limit):
    """``limit`` as a non-negative int or None (a listing of dead letters)."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f'limit must be an int or None, got {limit!r}')
    if limit < 0:
        raise ValueError(f'limit must be >= 0, got {limit}')
    return min(limit, sys.maxsize)  # more than any storage holds: every letter


def in_dequeue_order(rows):
    """The messages of ``(priority, id, data)`` rows (a ``DELETE ... RETURNING``, whose order
    is unspecified) in dequeue order: higher priority first, then FIFO; None if no rows."""
    if not rows:
        return None
    rows.sort(key=lambda row: (-row[0], row[1]))
    return [data for _, _, data in rows]


def check_batch(n):
    """``dequeue_many``'s ``n``: a positive int."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f'n must be a positive number of messages, got {n!r}')
    return n


class BlackHoleStorage(BaseStorage):
    """Accepts everything and keeps nothing."""

    def enqueue(self, data, priority=None):
        pass

    def dequeue(self):
        return None

    def queue_size(self):
        return 0

    def enqueued_items(self, limit=None):
        return []

    def flush_queue(self):
        pass

    def add_to_schedule(self, data, ts):
        pass

    def read_schedule(self, ts):
        return []

    def schedule_size(self):
        return 0

    def scheduled_items(self, limit=None):
        return []

    def flush_schedule(self):
        pass

    def put_data(self, key, value, is_result=False):
        pass

    def peek_data(self, key):
        return EmptyData

    def pop_data(self, key):
        return EmptyData

    def has_data_for_key(self, key):
        return False

    def put_if_empty(self, key, value, ttl=None):
        return True

    def claim(self, key, owner, ttl):
        return True

    def incr(self, key, amount=1):
        return amount

    def delete_counter(self, key):
        pass

    def result_store_size(self):
        return 0

    def result_items(self):
        return {}

    def flush_results(self):
        pass

    def flush_counters(self):
        pass

    def put_dead_letter(self, data, reason, deliveries=1):
        return None

    def dead_letters(self, limit=None):
        return []

    def pop_dead_letter(self, id):
        return None

    def flush_dead_letters(self):
        pass

    def dead_letter_count(self):
        return 0
