"""The consumer's prefetch: on a storage that takes batches (``batch_dequeue``: Redis,
Sqlite, Postgres and File; not Memory, where a call costs no round trip), a worker that
finds nothing fetched takes several messages with one storage call
(``BaseStorage.dequeue_many``), runs the first and leaves the rest in a small buffer that
the other workers of its consumer process take from, so a busy queue costs a fraction of a
round trip per task instead of one. Workers never
wait for each other: while one worker fills the buffer, another that finds it empty fetches
one message for itself.

``size`` is the most messages one fetch takes; the buffer never holds more than
``size - 1``, however many workers fetch at once. ``size=1``, and any storage without
``batch_dequeue``, is huey 3.5.4's behaviour: every worker takes one message at a time.

What a buffered message risks: in default (at-most-once) mode, a consumer killed with
SIGKILL loses the messages it held, its running tasks and its buffer, so at most
``workers + size - 1`` messages per consumer process. A consumer that stops any other way
puts its buffer back on the queue (behind the messages queued meanwhile). A buffered message
waits for the next worker that finishes a task: a worker already waiting on an empty queue
takes new messages, not buffered ones, and on a priority queue a message enqueued with a
higher priority than the buffered ones runs after them.

A buffer is for short tasks, where a round trip is a real share of a task's cost: extras are
fetched only while the process's tasks have been taking less than ``short_task`` seconds on
average (not before one has run), so a consumer of long or blocking tasks takes one message
at a time, as huey 3.5.4 does, and leaves the rest to other consumers. And a message that
waited in the buffer longer than ``stale_after`` seconds (every worker is held by a task
that runs long) goes back on the queue on the scheduler's next pass, for any consumer to
take.

Revocations, expiry, eta and locks are checked when a task starts, not when it is fetched,
as before: a task revoked while it waits in the buffer does not run. (Reading a batch's
revocation flags with the batch would miss a revocation made between the fetch and the
start.) What saves that round trip instead: a worker finishing a task takes its next one
from the buffer (``take_ahead``) and reads that task's flags with the same storage call
that stores the result (``huey.execution._finish``), the moment they would be read anyway;
a revoke or restore in this process in between makes the start read them again. In
reliable mode (on a storage with ``batch_reliable``: the Redis ones) a fetch leases every
message it takes and the leases are renewed while they wait, so a crash loses none of them
(they are recovered when the leases expire, uncharged: they never started); put back, they
are released from flight to the front of the queue. A worker finishing a task starts its
next one from the buffer with the same storage call as its ack (``ack_and_start``).
"""

import collections
import logging
import threading
import time

logger = logging.getLogger('huey.consumer')


class Prefetch:
    """The buffer shared by one consumer process's workers."""

    short_task = 0.01  # seconds: extras are fetched while tasks average less than this
    assumed_task_seconds = None  # the average before a task has run (None: not short)
    stale_after = 1.0  # seconds a buffered message may wait before it is put back

    def __init__(self, huey, size, stop_flag=None):
        self.huey = huey
        self.size = size
        self._stop_flag = stop_flag  # the consumer's: set, no task is taken ahead
        self._buffer = collections.deque()  # (task, time.monotonic() when fetched)
        self._filling = threading.Lock()  # held by the one worker filling the buffer
        self._lock = threading.Lock()  # taken to put messages back, off the task path
        self._average = self.assumed_task_seconds  # seconds a task took, moving average
        self._ahead = threading.local()  # .task: the next task of this worker, if taken

    def ran(self, seconds):
        """A worker ran a task for ``seconds`` (a moving average over about ten tasks)."""
        average = self._average
        self._average = seconds if average is None else average + (seconds - average) / 8

    def __len__(self):
        return len(self._buffer)

    @property
    def per_fetch(self):
        """The most messages one fetch takes here: ``size`` on a storage that takes batches
        (in reliable mode: batches of leased messages, ``batch_reliable``), else 1."""
        storage = self.huey.storage
        batches = storage.batch_reliable if self.huey.reliable else storage.batch_dequeue
        return self.size if batches else 1

    def next(self, timeout=None):
        """The next task: a buffered one, else the first of a fetch of up to ``per_fetch``
        (waiting like ``Huey.dequeue(timeout)`` when the queue is empty); None when none
        came."""
        if self.per_fetch == 1:
            return self.huey.dequeue(timeout)
        task = self._next_task(timeout)
        if task is not None:
            task._prefetch = self  # its result write may take the next task (take_ahead)
        return task

    def take_ahead(self, eligible=None):
        """Take the next buffered task for the calling worker, to run right after the task
        it is finishing (``huey.execution`` reads its revocation flags with that task's
        result write, ``huey.reliable`` starts it with that task's ack); None when none is
        buffered or the consumer is stopping, or when ``eligible(task)`` is false (the worker
        still runs it next)."""
        if self._stop_flag is not None and self._stop_flag.is_set():
            return None
        try:
            task, _ = self._buffer.popleft()
        except IndexError:
            return None
        self._ahead.task = task
        return task if eligible is None or eligible(task) else None

    def give_back_ahead(self):
        """A worker that stops with a task taken ahead returns it to the buffer's front
        (its flags will be read again when it starts)."""
        task = getattr(self._ahead, 'task', None)
        if task is not None:
            self._ahead.task = None
            task.__dict__.pop('_revocation_flags', None)  # read again when it starts
            # A reliable task started with the ack before stays started (charged once).
            self._buffer.appendleft((task, time.monotonic()))

    def _next_task(self, timeout):
        ahead = getattr(self._ahead, 'task', None)
        if ahead is not None:
            self._ahead.task = None
            return ahead
        # No lock on this path. Taking a buffered message is one atomic deque.popleft, and
        # one worker at a time fills the buffer: the others, instead of waiting for it (a
        # contended lock hands itself to a thread that must then wait for the GIL, and the
        # workers would queue up behind each other), fetch one message for themselves.
        try:
            return self._buffer.popleft()[0]
        except IndexError:
            pass
        average = self._average
        short = average is not None and average < self.short_task
        if not short or not self._filling.acquire(blocking=False):
            return self.huey.dequeue(timeout)
        try:
            try:  # filled by the worker that held the turn before this check?
                return self._buffer.popleft()[0]
            except IndexError:
                pass
            tasks = self.huey.dequeue_many(self.size, timeout)
            if len(tasks) > 1:  # only this worker adds: the buffer stays under size
                fetched = time.monotonic()
                self._buffer.extend([(task, fetched) for task in tasks[1:]])
        finally:
            self._filling.release()
        return tasks[0] if tasks else None

    def release(self):
        """Put every buffered message back on the queue (a worker is stopping)."""
        self._put_back(lambda fetched: True)

    def return_stale(self, now=None):
        """Put back on the queue the messages buffered more than ``stale_after`` seconds
        ago (the consumer's scheduler calls it on each pass); how many went back."""
        oldest = (time.monotonic() if now is None else now) - self.stale_after
        return self._put_back(lambda fetched: fetched <= oldest)

    def _put_back(self, due):
        """Put buffered messages back on the queue, oldest first, while ``due(fetched)``
        holds: re-enqueued, or in reliable mode released from flight (``huey.reliable``)."""
        taken = []
        with self._lock:
            while True:
                try:
                    task, fetched = self._buffer.popleft()
                except IndexError:
                    break
                if not due(fetched):
                    self._buffer.appendleft((task, fetched))
                    break
                taken.append(task)
        leased = [task for task in taken if task.delivery is not None]
        count = 0
        if leased:
            try:
                count += self.huey._reliable.release(leased)
            except Exception:
                logger.exception(
                    'Could not put %d prefetched task(s) back on the queue; they are '
                    'requeued when their leases expire',
                    len(leased),
                )
        for task in taken:
            if task.delivery is not None:
                continue
            try:
                self.huey.storage.enqueue(self.huey.serialize_task(task), task.priority)
                count += 1
            except Exception:
                logger.exception('Could not put prefetched task %s back on the queue', task.id)
        return count
