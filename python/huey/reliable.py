"""At-least-once delivery for ``Huey(reliable=True)``, and the crash-point test hook.

huey pops a message before running it, so a consumer killed mid-task loses it. In reliable
mode a dequeue instead *moves* the message, atomically, into an in-flight area of the
storage under a fresh delivery token with a lease (the storage methods ``dequeue_reliable``,
``renew_leases``, ``ack``, ``recover_expired`` and ``inflight_items`` declared on
``BaseStorage``; Sqlite: the ``huey_rs_inflight`` table, File: ``inflight/{token}`` files,
Redis: ``huey.inflight.*`` / ``huey.lease.*`` keys). Then:

- the task carries a ``Delivery`` (its token and delivery count) in ``Task.delivery``;
- just before the task runs, its entry is charged the delivery (``mark_started``): a
  consumer that dies holding messages it had not started yet (fetched, or waiting for its
  turn) sends them back to the queue uncharged;
- every process running tasks keeps one ``Leases`` object: the tokens it holds and a
  daemon thread renewing all their leases in one storage call every ``lease / 3`` seconds;
- the run ends with an ack (the in-flight entry is deleted) after its result, continuation
  (pipeline / chord / on_error) and retry re-enqueue were written;
- any consumer's scheduler puts entries whose lease expired back in the queue with their
  delivery count, or, once delivered ``max_deliveries`` times, hands them to the
  dead-letter queue, inside the same storage step as the recovery.

How the cap applies when one crash takes several tasks (thread or greenlet workers, where
every task of a process dies with it): the crash charges each task that had started in
that process, since storage cannot tell which one killed it. A task that was charged
before (delivery count above 1) then runs alone: its worker waits until no other task
runs in the process, and no other task starts there until it ends. So a task that kills
its consumer is charged by every later crash, each time alone, and reaches
``max_deliveries``; a task that only ran beside it is charged once, then runs alone and
completes. With ``max_deliveries=1`` that single charge is already the cap: with thread
workers keep ``max_deliveries`` at 2 or more (the default is 3). Process workers run one
task per process, so a crash charges only its own task.

Fencing: before writing anything after the task body returns, the run renews its own lease
(``renew_leases([token]) == 1``). A run whose entry was already recovered (lease expired,
message redelivered or dead-lettered) therefore stores no result, enqueues no continuation
or retry, reports nothing to its chord and its ack returns False. What is *not* fenced: the
task body's own side effects (delivery is at-least-once), and the finishing writes of a run
that passed the check but then stalled for longer than a whole lease before its ack.
Leases use each host's wall clock: consumers on several hosts need synchronised clocks.
"""

import contextlib
import logging
import os
import socket
import threading
import uuid

from huey import signals as S
from huey.exceptions import ConfigurationError
from huey.storage import CySqliteStorage, FileStorage, PostgresStorage, RedisStorage, SqliteStorage
from huey.storage.base import over_cap_reason

logger = logging.getLogger('huey.reliable')

_CRASHPOINT = os.environ.get('HUEY_CRASHPOINT') or None
CRASH_EXIT_CODE = 137


def crashpoint(name):
    """Test hook: exit the process at once (``os._exit(137)``, no cleanup, like SIGKILL)
    when ``$HUEY_CRASHPOINT`` names this point. Points: ``after_dequeue``, ``mid_task``
    (after the task body returned, before anything is recorded), ``after_result_before_ack``
    and ``mid_schedule_move``. With ``$HUEY_CRASHPOINT_FILE`` set, the pid and point are
    appended to that file first. Costs one comparison when the variable is unset."""
    if _CRASHPOINT is not None and _CRASHPOINT == name:
        marker = os.environ.get('HUEY_CRASHPOINT_FILE')
        if marker:
            with open(marker, 'a') as fh:
                fh.write(f'{os.getpid()} {name}\n')
        os._exit(CRASH_EXIT_CODE)


# Named in the error for reliable=True on a storage without reliable delivery.
_STORAGES = (SqliteStorage, CySqliteStorage, PostgresStorage, FileStorage, RedisStorage)


def check_storage(huey):
    """``reliable=True`` on a storage without ``reliable_delivery`` is a configuration error
    (unless immediate mode runs every task in-process on memory storage)."""
    if huey._reliable is None or huey.storage.reliable_delivery:
        return
    if huey.immediate and huey.immediate_use_memory:
        return
    supported = ', '.join(cls.__name__ for cls in _STORAGES if cls.reliable_delivery)
    raise ConfigurationError(
        f'reliable=True needs a storage with reliable delivery, and '
        f'{type(huey.storage).__name__} has none (storages that have it: {supported}). '
        f'Use one of those, or drop reliable=True.'
    )


class Delivery:
    """One delivery of a task's message in reliable mode: the token its in-flight entry is
    kept under, how many deliveries are charged to the message counting this one (earlier
    ones were charged because their task had started when its process died; above 1, the
    task runs alone), and whether this run still owns the entry (False once it lost its
    lease or was interrupted)."""

    __slots__ = ('token', 'count', 'owned')

    def __init__(self, token, count):
        self.token = token
        self.count = count
        self.owned = True

    def __repr__(self):
        state = '' if self.owned else ', lost'
        return f'<Delivery {self.token} #{self.count}{state}>'


def _first_delivery(task):
    """A leased task no crash was charged to (it may start before its turn: ``_ack``)."""
    return task.delivery is not None and task.delivery.count == 1


class RunTurns:
    """Whose turn it is to run in this process: any number of tasks together, or one task
    alone (a task charged by an earlier crash, see the module docstring). A task waiting
    to run alone goes before tasks arriving after it, so it cannot wait forever."""

    def __init__(self):
        self._cond = threading.Condition()
        self._running = 0
        self._alone = False
        self._waiting_alone = 0

    def alone_pending(self):
        """Whether a task runs alone or waits to (a snapshot)."""
        return self._alone or self._waiting_alone > 0

    @contextlib.contextmanager
    def turn(self, alone):
        with self._cond:
            if alone:
                self._waiting_alone += 1
                try:
                    self._cond.wait_for(lambda: not self._running and not self._alone)
                finally:
                    self._waiting_alone -= 1
                self._alone = True
            else:
                self._cond.wait_for(lambda: not self._alone and not self._waiting_alone)
                self._running += 1
        try:
            yield
        finally:
            with self._cond:
                if alone:
                    self._alone = False
                else:
                    self._running -= 1
                self._cond.notify_all()


class Leases:
    """The in-flight deliveries of one process, the thread renewing their leases, and the
    turns of the tasks it runs."""

    def __init__(self, storage, lease):
        self.storage = storage
        self.lease = lease
        self.pid = os.getpid()
        self.consumer = f'{socket.gethostname()}:{self.pid}:{uuid.uuid4().hex[:8]}'
        self.tokens = set()
        self.turns = RunTurns()
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()

    def hold(self, token):
        self.tokens.add(token)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._renew_loop, daemon=True, name='huey-lease-renewal'
                    )
                    self._thread.start()

    def release(self, token):
        """Stop renewing ``token`` (after its ack, or to let it expire and be redelivered)."""
        self.tokens.discard(token)

    def still_ours(self, token):
        """Renew ``token``'s lease; False when its entry was recovered by someone else."""
        return self.storage.renew_leases([token], self.lease) == 1

    def _renew_loop(self):
        interval = max(self.lease / 3, 0.05)
        failures = 0  # consecutive: an outage is logged once, not every interval
        while not self._stop.wait(interval):
            tokens = list(self.tokens)
            if not tokens:
                continue
            try:
                self.storage.renew_leases(tokens, self.lease)
            except Exception:
                failures += 1
                if failures == 1:
                    logger.exception('Renewing %d lease(s) failed', len(tokens))
                continue
            if failures:
                logger.info('Renewing leases again after %d failed attempt(s).', failures)
                failures = 0

    def stop(self):
        self._stop.set()


class ReliableDelivery:
    """Dequeue, fence, ack and recovery for one ``Huey(reliable=True)``."""

    def __init__(self, huey, lease, max_deliveries):
        self.huey = huey
        self.lease = lease
        self.max_deliveries = max_deliveries
        self._leases = None

    def leases(self):
        """This process's ``Leases`` (a forked worker, or a new storage, starts its own)."""
        leases = self._leases
        storage = self.huey.storage
        if leases is None or leases.pid != os.getpid() or leases.storage is not storage:
            if leases is not None and leases.pid == os.getpid():
                leases.stop()
            leases = self._leases = Leases(storage, self.lease)
        return leases

    def dequeue_many(self, n, timeout):
        """Up to ``n`` tasks moved into the in-flight area with one storage call where the
        storage can (``batch_reliable``), each with its ``delivery`` and its lease renewed
        from now on; [] when none came. Undecodable messages are set aside (and their
        in-flight entry acked)."""
        storage = self.huey.storage
        leases = self.leases()
        if timeout is None and storage.blocking:
            timeout = storage.read_timeout
        while True:
            tokens = [uuid.uuid4().hex for _ in range(n)]
            taken = storage.dequeue_reliable_many(leases.consumer, tokens, self.lease, timeout)
            if not taken:
                return []
            for token, _, _ in taken:
                leases.hold(token)
            crashpoint('after_dequeue')
            tasks = []
            for token, data, deliveries in taken:
                task = self.huey._dead_letters.decode_or_set_aside(data)
                if task is None:
                    leases.release(token)
                    storage.ack(token)
                else:
                    task.delivery = Delivery(token, deliveries)
                    tasks.append(task)
            if tasks:
                return tasks

    def release(self, tasks):
        """Put tasks taken but never started (a prefetch buffer) back on the queue now
        (``storage.release_inflight``; a storage that cannot leaves them to be recovered
        when their leases expire). Returns how many went back."""
        leases = self.leases()
        tokens = [task.delivery.token for task in tasks]
        try:
            requeued, dead = self.huey.storage.release_inflight(tokens, self.max_deliveries)
        finally:
            for token in tokens:
                leases.release(token)
        self._dead_lettered(dead)
        return requeued

    def execute(self, task, run):
        """Call ``run()`` (the task's execution) under ``task.delivery`` once it is this
        task's turn (alone when an earlier crash was charged to it) and its delivery is
        charged, then ack it unless the run lost it; an exception leaves it un-acked, to be
        delivered again. The turn lasts until the ack: a task run alone starts only once
        every task that ran before it is acked, so a crash it causes charges none of them."""
        delivery = task.delivery
        leases = self.leases()
        try:
            with leases.turns.turn(alone=delivery.count > 1):
                try:
                    started = task.__dict__.pop('_started', None)  # by the ack before it
                    if not (self._start(task) if started is None else started):
                        logger.warning('Task %s was recovered before it started.', task.id)
                        delivery.owned = False
                        return None
                    value = run()
                finally:
                    leases.release(delivery.token)
                if delivery.owned:
                    crashpoint('after_result_before_ack')
                    if not self._ack(task):
                        logger.warning(
                            'Task %s finished after its delivery was recovered.', task.id
                        )
        except BaseException:
            leases.release(delivery.token)  # e.g. interrupted while waiting for its turn
            raise
        return value

    def _start(self, task):
        """Charge ``task``'s delivery as it starts; False when it was recovered first. Its
        revocation flags are read in the same step (``storage.start_and_peek``), for
        ``huey.execution`` to check, unless Huey's revocation methods are customised."""
        huey = self.huey
        token = task.delivery.token
        if huey._custom_revocation:
            return huey.storage.mark_started(token)
        changes = huey._revocations.changes
        started, flags = huey.storage.start_and_peek(token, huey._revocations.keys(task))
        task._revocation_flags = (changes, flags)
        return started

    def _ack(self, task):
        """Ack ``task``'s delivery. When its worker can take its next task now (from the
        prefetch buffer, ``huey.prefetch``), that task is started in the same step
        (``storage.ack_and_start``): charged and its revocation flags read, the moment that
        would happen anyway. Not a task charged by an earlier crash (it starts in a turn of
        its own), nor while such a task waits for or holds its turn."""
        huey = self.huey
        token = task.delivery.token
        prefetch = task._prefetch
        ahead = None
        if prefetch is not None and not huey._custom_revocation:
            if not self.leases().turns.alone_pending():
                ahead = prefetch.take_ahead(_first_delivery)
        if ahead is None:
            return huey.storage.ack(token)
        changes = huey._revocations.changes
        keys = huey._revocations.keys(ahead)
        acked, started, flags = huey.storage.ack_and_start(token, ahead.delivery.token, keys)
        ahead._started = started
        ahead._revocation_flags = (changes, flags)
        return acked

    def lost(self, task):
        """The fence: False when this run still owns its delivery (its lease is renewed
        now); True, and nothing must be recorded, when it was recovered meanwhile."""
        if self.leases().still_ours(task.delivery.token):
            return False
        self._fenced_out(task)
        return True

    def finish(self, task, key, data):
        """The fence and the result write in one step (``storage.renew_delete_and_put``):
        clear the task's revocation flag and store ``data`` under ``key`` (None: no
        result) only while this run owns its delivery. False, with nothing written and
        nothing further to record, when it was recovered meanwhile."""
        token = task.delivery.token
        storage = self.huey.storage
        if storage.renew_delete_and_put(token, self.lease, task.revoke_id, key, data):
            return True
        self._fenced_out(task)
        return False

    def _fenced_out(self, task):
        logger.warning(
            'Task %s finished after its lease expired and it was requeued; '
            'its result and continuation are not recorded.',
            task.id,
        )
        self.leases().release(task.delivery.token)
        task.delivery.owned = False

    def abandon(self, task):
        """An interrupted run: not acked, so the message is delivered again once its lease
        runs out."""
        self.leases().release(task.delivery.token)
        task.delivery.owned = False

    def recover_expired(self, now=None):
        """Requeue in-flight messages whose lease expired; those delivered
        ``max_deliveries`` times are dead-lettered by the storage in the same step. Returns
        (requeued, dead-lettered)."""
        requeued, dead = self.huey.storage.recover_expired(self.max_deliveries, now)
        if requeued:
            logger.warning(
                'Requeued %d task(s) whose consumer stopped renewing its lease.', requeued
            )
        self._dead_lettered(dead)
        return requeued, len(dead)

    def _dead_lettered(self, dead):
        for _, deliveries, letter_id in dead:
            reason = over_cap_reason(deliveries, self.max_deliveries)
            logger.error('A task was %s; set aside as dead letter %s.', reason, letter_id)
            self.huey._emit(S.SIGNAL_DEAD_LETTER, None, reason, letter_id)
