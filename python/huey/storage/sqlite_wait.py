"""How SqliteStorage waits for a message without polling the tables: a dequeue is skipped
while ``PRAGMA data_version`` says nothing was committed since the queue was seen empty, and
an idle ``dequeue_wait`` sleeps on inotify events for the ``-wal`` file (every commit writes
it), or polls data_version where inotify is unavailable.
"""

import os
import threading
import time

try:
    from huey._native import PathWatcher
except ImportError:  # built without it (no FileStorage on this platform)
    PathWatcher = None


class _WalWatcher:
    """Wakes a waiting thread when any connection writes to the database's ``-wal`` file
    (commits in WAL mode always append to it): ``huey._native.PathWatcher``, FileStorage's
    watcher too. Its ``wait`` sleeps with the GIL released; ``drain`` is None once the file
    or the watcher is gone, else whether it was written. Where it could only poll (no
    inotify), None: the data_version poll below does better."""

    @staticmethod
    def create(db_filename):
        """A watcher for ``db_filename``'s WAL file, or None where that is not possible."""
        if PathWatcher is None:
            return None
        watcher = PathWatcher.create(os.path.abspath(db_filename) + '-wal')
        if watcher is not None and watcher.polling:
            watcher.close()
            return None
        return watcher


class SqliteWaiting:
    """SqliteStorage's waiting (a mixin over its per-thread connections)."""

    # Where inotify is unavailable, ``dequeue_wait`` polls ``PRAGMA data_version`` with
    # sleeps growing from the first to the second interval.
    poll_interval_min = 0.0005
    poll_interval_max = 0.002
    # With inotify, the queue is still re-checked this often in case an event was missed,
    # and after a write event data_version is polled this long for the commit to land.
    watch_recheck_interval = 0.25
    commit_grace = 0.1
    # False makes dequeue_wait poll even where inotify is available.
    wake_on_wal_writes = True

    def _dequeue_using(self, pop):
        """Run ``pop(conn)`` unless nothing was committed since the queue was seen empty."""
        local = self._local
        conn = self.conn
        version = None
        if not local.found_last:
            # Read before looking, so that a commit racing with the look still moves it.
            version = self._data_version(conn)
            if version == local.empty_at_version:
                return None  # Nothing committed since the queue was last seen empty.
        found = pop(conn)
        local.found_last = found is not None
        local.empty_at_version = None if found is not None else version
        return found

    def _data_version(self, conn):
        return conn.execute('pragma data_version').fetchone()[0]

    def dequeue_wait(self, timeout):
        """Dequeue, waiting up to ``timeout`` seconds for another connection to enqueue.

        On Linux the wait sleeps on inotify events for the ``-wal`` file, which every commit
        writes, so an enqueue from another process wakes it within about a millisecond and
        an idle wait costs no CPU. Elsewhere it polls ``PRAGMA data_version`` (a read of the
        shared-memory WAL index, no table access) every 0.5-2 ms.
        """
        return self._wait_using(self.dequeue, timeout)

    def _wait_using(self, dequeue, timeout):
        data = dequeue()
        if data is not None or timeout is None or timeout <= 0:
            return data
        deadline = time.monotonic() + timeout
        watcher = self._watcher()
        if watcher is None:
            return self._poll_wait(deadline, dequeue=dequeue)
        while True:
            # Drain, then look: a commit landing after the drain raises a fresh event.
            written = watcher.drain()
            if written is None:
                self._local.watcher = None
                self._discard_locked(watcher)
                return self._poll_wait(deadline, dequeue=dequeue)
            data = dequeue()
            if data is None and written:
                # The event fires when the WAL frames are written, which can be before the
                # commit is published (after an fsync), so watch the commit itself land.
                grace = min(deadline, time.monotonic() + self.commit_grace)
                data = self._poll_wait(grace, until_commit=True, dequeue=dequeue)
            if data is not None:
                return data
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            watcher.wait(min(remaining, self.watch_recheck_interval))

    def _watcher(self):
        """This thread's WAL watcher, created on first use; None where unavailable."""
        local = self._local
        self.conn  # noqa: B018 - (re)opens this thread's connection after close or fork.
        if (
            local.watcher is None
            and self.wake_on_wal_writes
            and str(self._journal_mode).lower() == 'wal'
        ):
            watcher = _WalWatcher.create(self.filename)
            if watcher is not None:
                with self.lock:
                    self._open.append((os.getpid(), threading.get_ident(), watcher))
                local.watcher = watcher
        return local.watcher

    def _discard_locked(self, closable):
        with self.lock:
            self._discard(closable)

    def _poll_wait(self, deadline, until_commit=False, dequeue=None):
        """Poll data_version until a message arrives or ``deadline``; with ``until_commit``
        give up at the first commit seen (a message or not)."""
        dequeue = dequeue or self.dequeue
        baseline = self._local.empty_at_version if until_commit else None
        interval = self.poll_interval_min
        while True:
            # self.conn each time: close() from another thread may have replaced it.
            if baseline is None or self._data_version(self.conn) != baseline:
                data = dequeue()
                if data is not None or (until_commit and baseline is not None):
                    return data
                baseline = self._local.empty_at_version
                interval = self.poll_interval_min
            else:
                interval = min(interval * 1.25, self.poll_interval_max)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(interval, remaining))
