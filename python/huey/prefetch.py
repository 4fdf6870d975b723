"""The consumer's prefetch: on a storage that takes batches (``batch_dequeue``: Redis), a
worker that finds nothing fetched takes several messages with one storage call
(``BaseStorage.dequeue_many``), runs the first and leaves the rest in a small buffer that
the other workers of its consumer process take from, so a busy queue costs a fraction of a
round trip per task instead of one. Workers never wait for each other: while one worker's
fetch is under way, another fetches for itself, taking only the room left in the buffer.

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

Revocations, expiry, eta and locks are checked when a task starts, not when it is fetched,
as before: a task revoked while it waits in the buffer does not run. (Reading a batch's
revocation flags with the batch would save a round trip per task, but a revocation made
between the fetch and the start, by a signal receiver of the task before it, say, would
then be missed.) In reliable mode every message is leased when it is taken, so the
consumer fetches one at a time (``Huey.dequeue_many``).
"""

import collections
import logging
import threading

logger = logging.getLogger('huey.consumer')


class Prefetch:
    """The buffer shared by one consumer process's workers."""

    def __init__(self, huey, size):
        self.huey = huey
        self.size = size
        self._buffer = collections.deque()
        self._lock = threading.Lock()
        self._reserved = 0  # buffer room promised to the fetches in progress

    def __len__(self):
        return len(self._buffer)

    @property
    def per_fetch(self):
        """The most messages one fetch takes here: ``size`` on a storage that takes batches,
        else 1 (and 1 in reliable mode, see ``Huey.dequeue_many``)."""
        if self.huey.reliable or not self.huey.storage.batch_dequeue:
            return 1
        return self.size

    def next(self, timeout=None):
        """The next task: a buffered one, else the first of a fetch of up to ``per_fetch``
        (waiting like ``Huey.dequeue(timeout)`` when the queue is empty); None when none
        came."""
        if self.per_fetch == 1:
            return self.huey.dequeue(timeout)
        with self._lock:
            if self._buffer:
                return self._buffer.popleft()
            # Room left once the fetches in progress have filled theirs.
            extra = max(0, self.size - 1 - self._reserved)
            self._reserved += extra
        tasks = ()
        try:
            tasks = self.huey.dequeue_many(1 + extra, timeout)
        finally:
            with self._lock:
                self._reserved -= extra
                self._buffer.extend(tasks[1:])
        return tasks[0] if tasks else None

    def release(self):
        """Put every buffered message back on the queue (a worker is stopping)."""
        while True:
            with self._lock:
                if not self._buffer:
                    return
                task = self._buffer.popleft()
            try:
                self.huey.storage.enqueue(self.huey.serialize_task(task), task.priority)
            except Exception:
                logger.exception('Could not put prefetched task %s back on the queue', task.id)
