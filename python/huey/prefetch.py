"""The consumer's prefetch buffer: the workers of one consumer process take several messages
with one storage call (``BaseStorage.dequeue_many``: one Redis command for up to ``size``
messages) and share them through a small local buffer, so a busy queue costs a fraction of a
round trip per task instead of one.

``size`` is the most messages one fetch takes; the buffer never holds more than ``size - 1``
messages beyond those the workers run, whatever the number of workers fetching at once.
``size=1`` is huey 3.5.4's behaviour: one message per fetch, nothing buffered.

What a buffered message risks: in default (at-most-once) mode, a consumer killed with
SIGKILL loses the messages it held, its running tasks and its buffer, so at most
``workers + size - 1`` messages per consumer process. A consumer that stops any other way
puts its buffer back on the queue (behind the messages queued meanwhile). Revocations,
expiry, eta and locks are checked when a task starts, not when it is fetched, as before. In
reliable mode every message is leased when it is taken, so the consumer fetches one at a
time (``Huey.dequeue_many``).
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
        self._reserved = 0  # room promised to fetches in progress

    def __len__(self):
        return len(self._buffer)

    def next(self, timeout=None):
        """The next task: a buffered one, else the first of one fetch of up to ``size``
        (waiting like ``Huey.dequeue(timeout)`` when the queue is empty); None if none."""
        try:
            return self._buffer.popleft()
        except IndexError:
            pass
        if self.size == 1:
            return self.huey.dequeue(timeout)
        with self._lock:
            extra = max(0, self.size - 1 - len(self._buffer) - self._reserved)
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
            try:
                task = self._buffer.popleft()
            except IndexError:
                return
            try:
                self.huey.storage.enqueue(self.huey.serialize_task(task), task.priority)
            except Exception:
                logger.exception('Could not put prefetched task %s back on the queue', task.id)
