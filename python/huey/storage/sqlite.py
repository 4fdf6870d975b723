"""SqliteStorage: queue, schedule, results and counters in one sqlite file.

The file layout is huey 3.5.4's, so a huey 3.5.4 process and a huey-rs process can share a
database file. Every table holds rows for many queues, told apart by the ``queue`` column
(the storage ``name``)::

    task(id integer primary key [autoincrement], queue text, data blob, priority real)
        index task_queue_priority_id (queue, priority desc, id)
        dequeue order: highest priority first, then lowest id (FIFO)
    schedule(id integer primary key, queue text, data blob, timestamp real)
        index schedule_queue_timestamp (queue, timestamp); timestamp is ``datetime.timestamp()``
    kv(queue text, key text, value blob, primary key (queue, key))        results, locks, flags
    counter(queue text, key text, value integer, primary key (queue, key))
    dead_letter(id integer primary key autoincrement, queue text, data blob, reason text,
                time real, deliveries integer)           undecodable messages set aside

``dead_letter`` is huey-rs's own table; huey 3.5.4 neither reads nor minds it.

Each thread gets its own connection (WAL lets readers run beside the one writer). Every
operation that must be atomic is a single autocommit statement (``DELETE ... RETURNING``,
upserts), so a dequeue is atomic across processes and a statement that cannot get the write
lock within ``timeout`` changes nothing and raises ``SqliteBusyError``.
"""

import ctypes
import ctypes.util
import os
import select
import sqlite3
import sys
import threading
import time

from huey.constants import EmptyData
from huey.storage.base import BaseStorage, check_limit, dead_letter, over_cap_reason

# DELETE ... RETURNING needs sqlite 3.35; older libraries use an explicit write transaction.
_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)

# Bound parameters per statement stay below sqlite's historical limit of 999.
_CHUNK = 500


class SqliteBusyError(sqlite3.OperationalError):
    """The database stayed locked by another connection for longer than ``timeout``.

    The statement that raised it changed nothing: no task was removed or lost.
    """


def _ddl(strict_fifo):
    task_key = 'primary key autoincrement' if strict_fifo else 'primary key'
    return [
        'create table if not exists kv (queue text not null, key text not null, '
        'value blob not null, primary key(queue, key))',
        'create table if not exists schedule (id integer not null primary key, '
        'queue text not null, data blob not null, timestamp real not null)',
        'create index if not exists schedule_queue_timestamp on schedule (queue, timestamp)',
        f'create table if not exists task (id integer not null {task_key}, '
        'queue text not null, data blob not null, priority real not null default 0.0)',
        'create index if not exists task_queue_priority_id on task (queue, priority desc, id)',
        'create table if not exists counter (queue text not null, key text not null, '
        'value integer not null default 0, primary key(queue, key))',
        'create table if not exists dead_letter (id integer not null primary key '
        'autoincrement, queue text not null, data blob not null, reason text not null, '
        'time real not null, deliveries integer not null default 1)',
        # An index older huey versions created; the one above replaces it.
        'drop index if exists task_priority_id',
    ]


_SCHEMA_NAMES = {'kv', 'schedule', 'task', 'counter', 'dead_letter', 'schedule_queue_timestamp',
                 'task_queue_priority_id'}


class _WalWatcher:
    """Wakes a waiting thread when any connection writes to the database's ``-wal`` file.

    Linux inotify through libc: select() on the inotify descriptor sleeps with the GIL
    released and costs no CPU while idle. Commits in WAL mode always append to that file.
    """

    _IN_MODIFY, _IN_DELETE_SELF, _IN_MOVE_SELF = 0x2, 0x400, 0x800
    _libc = None

    @classmethod
    def create(cls, db_filename):
        """A watcher for ``db_filename``'s WAL file, or None where that is not possible."""
        if not sys.platform.startswith('linux'):
            return None
        path = os.fsencode(os.path.abspath(db_filename)) + b'-wal'
        if cls._libc is None:
            try:
                cls._libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
                cls._libc.inotify_init1  # noqa: B018 - probes that the symbol exists.
            except (OSError, AttributeError):
                cls._libc = False
        if not cls._libc or not os.path.exists(path):
            return None
        fd = cls._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return None
        mask = cls._IN_MODIFY | cls._IN_DELETE_SELF | cls._IN_MOVE_SELF
        if cls._libc.inotify_add_watch(fd, path, mask) < 0:
            os.close(fd)
            return None
        return cls(fd)

    def __init__(self, fd):
        self.fd = fd

    def drain(self):
        """Forget pending events: None once the file or watcher is gone, else whether any."""
        if self.fd is None:
            return None
        alive, seen = True, False
        while True:
            try:
                events = os.read(self.fd, 4096)
            except BlockingIOError:
                return seen if alive else None
            except OSError:  # Closed by SqliteStorage.close() in another thread.
                return None
            seen = True
            # Event header: wd (i32), mask (u32), cookie (u32), len (u32), then a name.
            offset = 0
            while offset + 16 <= len(events):
                mask = int.from_bytes(events[offset + 4:offset + 8], sys.byteorder)
                if mask & (self._IN_DELETE_SELF | self._IN_MOVE_SELF | 0x8000):
                    alive = False
                offset += 16 + int.from_bytes(events[offset + 12:offset + 16], sys.byteorder)

    def wait(self, timeout):
        fd = self.fd
        if fd is None:
            return
        try:
            select.select([fd], [], [], timeout)
        except (OSError, ValueError):  # Closed by SqliteStorage.close() in another thread.
            pass

    def close(self):
        fd, self.fd = self.fd, None  # Never close a descriptor number twice.
        if fd is not None:
            os.close(fd)


class _ThreadConnection(threading.local):
    conn = None
    watcher = None
    generation = -1
    pid = -1
    # data_version read just before a dequeue found the queue empty (None: unknown); while
    # it has not moved, the queue is still empty and an idle poll skips the table.
    empty_at_version = None
    found_last = False  # The last dequeue got a message: skip the data_version read.


class SqliteStorage(BaseStorage):
    """huey's SqliteStorage: one sqlite file, one connection per thread, WAL by default.

    ``fsync=False`` (the documented default) sets ``synchronous=NORMAL``: in WAL mode a
    commit survives any crash of the process and is synced to disk at checkpoints, without an
    fsync per task; ``fsync=True`` sets FULL (an fsync per commit); ``fsync=None`` leaves
    sqlite's own setting. ``strict_fifo`` makes task ids never reused (only when the
    table is created). Extra keyword arguments go to ``sqlite3.connect``.
    """

    priority = True
    wakeup = True  # dequeue_wait() is woken by commits from other connections
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

    def __init__(self, name='huey', filename='huey.db', cache_mb=8, fsync=False,
                 journal_mode='wal', timeout=5, strict_fifo=False, create_tables=True,
                 **kwargs):
        super().__init__(name)
        self.filename = filename
        self._cache_mb = cache_mb
        self._fsync = fsync
        self._journal_mode = journal_mode
        self._timeout = timeout
        self._strict_fifo = strict_fifo
        self._conn_kwargs = kwargs
        self.ddl = _ddl(strict_fifo)
        self.lock = threading.Lock()
        self._local = _ThreadConnection()
        self._generation = 0
        # Every connection and WAL watcher opened since the last close(), with its pid.
        self._open = []
        if create_tables:
            self.initialize_schema()

    # Connections -------------------------------------------------------------------------

    @property
    def _conn(self):
        """The calling thread's open connection, or None (huey's attribute name)."""
        local = self._local
        if local.conn is None or local.generation != self._generation or \
                local.pid != os.getpid():
            return None
        return local.conn

    @property
    def conn(self):
        """The calling thread's connection, opened on first use and after ``close``."""
        local = self._local
        if local.generation == self._generation and local.conn is not None and \
                local.pid == os.getpid():
            return local.conn
        # A connection inherited across fork must not be used (nor closed: closing it would
        # drop locks the parent holds), so a forked child simply opens its own.
        conn = self._create_connection()
        with self.lock:
            pid = os.getpid()
            if local.pid == pid and local.conn is not None:
                self._discard(local.conn)
            if local.pid == pid and local.watcher is not None:
                self._discard(local.watcher)
            local.watcher = None
            local.conn = conn
            local.generation = self._generation
            local.pid = pid
            local.empty_at_version = None
            local.found_last = False
            self._open.append((pid, threading.get_ident(), conn))
        return conn

    def _discard(self, closable):
        # Caller holds self.lock.
        self._open = [entry for entry in self._open if entry[2] is not closable]
        closable.close()

    def _create_connection(self):
        conn = sqlite3.connect(self.filename, timeout=self._timeout, check_same_thread=False,
                               isolation_level=None, **self._conn_kwargs)
        try:
            self._set_journal_mode(conn)
            if self._cache_mb:
                conn.execute(f'pragma cache_size={-1000 * int(self._cache_mb)}')
            if self._fsync is not None:
                conn.execute(f'pragma synchronous={2 if self._fsync else 1}')
        except BaseException:
            conn.close()
            raise
        return conn

    def _set_journal_mode(self, conn):
        if self._journal_mode is None:
            return
        # Turning a fresh file into WAL needs the write lock, and the busy handler is not
        # consulted for that upgrade, so wait for it here.
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                conn.execute(f'pragma journal_mode={self._journal_mode}')
                return
            except sqlite3.OperationalError as exc:
                if 'locked' not in str(exc) or time.monotonic() >= deadline:
                    raise self._busy(exc, 'setting the journal mode') from exc
                time.sleep(0.01)

    def close(self):
        """Retire every connection this storage opened in this process.

        Meant for shutdown and for the consumer to call before forking workers; threads that
        use the storage afterwards open fresh connections. The calling thread's connections,
        and those of threads that have ended, are closed now; another live thread may be
        in the middle of a statement on its own, so that thread closes it itself, on its
        next use of the storage (or when it ends). True when there was any to retire.
        """
        with self.lock:
            self._generation += 1
            entries, self._open = self._open, []
        pid, me = os.getpid(), threading.get_ident()
        alive = {thread.ident for thread in threading.enumerate()}
        mine = [entry for entry in entries if entry[0] == pid]
        for _, owner, closable in mine:
            if owner == me or owner not in alive:
                closable.close()
        return bool(mine)

    def initialize_schema(self):
        conn = self._create_connection()
        try:
            # Most opens find the schema in place; checking first avoids taking the write
            # lock (and waiting on busy writers) each time a worker process starts.
            names = {name for name, in conn.execute('select name from sqlite_master')}
            if _SCHEMA_NAMES <= names and 'task_priority_id' not in names:
                return
            self._run(conn, 'begin immediate', (), 'creating tables')
            try:
                for sql in self.ddl:
                    conn.execute(sql)
            except BaseException:
                conn.rollback()
                raise
            conn.execute('commit')
        finally:
            conn.close()

    # Statement helpers -------------------------------------------------------------------

    def _busy(self, exc, what):
        if 'locked' not in str(exc) and 'busy' not in str(exc):
            return exc
        return SqliteBusyError(
            f'sqlite database {self.filename!r} stayed locked by another connection for more '
            f'than timeout={self._timeout}s while {what}; nothing was changed: {exc}')

    def _run(self, conn, sql, params, what):
        try:
            return conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise self._busy(exc, what) from exc

    def _write(self, sql, params, what):
        """Run one autocommit write statement and return its cursor."""
        # This connection's own commits do not move its data_version, so forget "empty".
        self._local.empty_at_version = None
        return self._run(self.conn, sql, params, what)

    def _rows(self, sql, params, what='reading'):
        return self._run(self.conn, sql, params, what).fetchall()

    def _delete_returning(self, table, where, params, columns, what):
        """Atomically delete the rows matching ``where`` and return ``columns`` of them."""
        conn = self.conn
        if _HAS_RETURNING:
            # fetchall() drives the statement to completion, which is when it commits.
            return self._run(conn, f'delete from {table} where {where} returning {columns}',
                             params, what).fetchall()
        self._run(conn, 'begin immediate', (), what)
        try:
            rows = conn.execute(f'select id, {columns} from {table} where {where}',
                                params).fetchall()
            for i in range(0, len(rows), _CHUNK):
                ids = [row[0] for row in rows[i:i + _CHUNK]]
                conn.execute(f'delete from {table} where id in ({",".join("?" * len(ids))})',
                             ids)
            conn.execute('commit')
        except BaseException:
            conn.rollback()
            raise
        return [row[1:] for row in rows]

    # Queue -------------------------------------------------------------------------------

    def enqueue(self, data, priority=None):
        self._write('insert into task (queue, data, priority) values (?, ?, ?)',
                    (self.name, data, priority or 0), 'enqueueing a task')

    def enqueue_many(self, items):
        """Enqueue ``(data, priority)`` pairs in order, a few hundred per statement."""
        for i in range(0, len(items), 300):
            chunk = items[i:i + 300]
            params = [v for data, priority in chunk for v in (self.name, data, priority or 0)]
            self._write('insert into task (queue, data, priority) values '
                        + ','.join(['(?, ?, ?)'] * len(chunk)), params, 'enqueueing tasks')

    def dequeue(self):
        return self._dequeue_using(self._pop_task)

    def _pop_task(self, conn):
        if _HAS_RETURNING:
            rows = self._run(
                conn,
                'delete from task where id = (select id from task where queue = ? '
                'order by priority desc, id limit 1) returning data',
                (self.name,), 'dequeueing a task').fetchall()
        else:
            rows = self._delete_returning(
                'task',
                'id = (select id from task where queue = ? order by priority desc, id limit 1)',
                (self.name,), 'data', 'dequeueing a task')
        return rows[0][0] if rows else None

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
        if local.watcher is None and self.wake_on_wal_writes and \
                str(self._journal_mode).lower() == 'wal':
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

    def queue_size(self):
        return self._rows('select count(id) from task where queue = ?', (self.name,))[0][0]

    def enqueued_items(self, limit=None):
        sql = 'select data from task where queue = ? order by priority desc, id'
        params = (self.name,)
        if limit is not None:
            sql += ' limit ?'
            params = (self.name, limit)
        return [data for data, in self._rows(sql, params)]

    def flush_queue(self):
        self._write('delete from task where queue = ?', (self.name,), 'flushing the queue')

    # Schedule ----------------------------------------------------------------------------

    def add_to_schedule(self, data, ts):
        self._write('insert into schedule (queue, data, timestamp) values (?, ?, ?)',
                    (self.name, data, ts.timestamp()), 'scheduling a task')

    def read_schedule(self, ts):
        rows = self._delete_returning('schedule', 'queue = ? and timestamp <= ?',
                                      (self.name, ts.timestamp()), 'timestamp, id, data',
                                      'reading the schedule')
        rows.sort(key=lambda row: (row[0], row[1]))
        return [data for _, _, data in rows]

    def schedule_size(self):
        return self._rows('select count(id) from schedule where queue = ?', (self.name,))[0][0]

    def scheduled_items(self, limit=None):
        sql = 'select data from schedule where queue = ? order by timestamp, id'
        params = (self.name,)
        if limit is not None:
            sql += ' limit ?'
            params = (self.name, limit)
        return [data for data, in self._rows(sql, params)]

    def flush_schedule(self):
        self._write('delete from schedule where queue = ?', (self.name,),
                    'flushing the schedule')

    # Results -----------------------------------------------------------------------------

    def put_data(self, key, value, is_result=False):
        self._write('insert or replace into kv (queue, key, value) values (?, ?, ?)',
                    (self.name, key, value), 'storing a result')

    def peek_data(self, key):
        rows = self._rows('select value from kv where queue = ? and key = ?', (self.name, key))
        return rows[0][0] if rows else EmptyData

    def peek_many(self, keys):
        keys = list(keys)
        found = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            found.update(self._rows(
                f'select key, value from kv where queue = ? and key in '
                f'({",".join("?" * len(chunk))})', (self.name, *chunk)))
        return found

    def pop_data(self, key):
        if _HAS_RETURNING:
            rows = self._delete_returning('kv', 'queue = ? and key = ?', (self.name, key),
                                          'value', 'popping a result')
        else:
            rows = self._pop_without_returning(key)
        return rows[0][0] if rows else EmptyData

    def _pop_without_returning(self, key):
        conn = self.conn
        self._run(conn, 'begin immediate', (), 'popping a result')
        try:
            rows = conn.execute('select value from kv where queue = ? and key = ?',
                                (self.name, key)).fetchall()
            conn.execute('delete from kv where queue = ? and key = ?', (self.name, key))
            conn.execute('commit')
        except BaseException:
            conn.rollback()
            raise
        return rows

    def delete_data(self, key):
        cursor = self._write('delete from kv where queue = ? and key = ?', (self.name, key),
                             'deleting a result')
        return cursor.rowcount > 0

    def has_data_for_key(self, key):
        return bool(self._rows('select 1 from kv where queue = ? and key = ?',
                               (self.name, key)))

    def put_if_empty(self, key, value, ttl=None):
        if ttl is not None:
            raise NotImplementedError('ttl is not supported by this storage.')
        cursor = self._write('insert into kv (queue, key, value) values (?, ?, ?) '
                             'on conflict (queue, key) do nothing',
                             (self.name, key, value), 'storing a value')
        return cursor.rowcount == 1

    def result_store_size(self):
        return self._rows('select count(*) from kv where queue = ?', (self.name,))[0][0]

    def result_items(self):
        return dict(self._rows('select key, value from kv where queue = ?', (self.name,)))

    def flush_results(self):
        self._write('delete from kv where queue = ?', (self.name,), 'flushing results')

    # Counters ----------------------------------------------------------------------------

    def incr(self, key, amount=1):
        sql = ('insert into counter (queue, key, value) values (?, ?, ?) '
               'on conflict (queue, key) do update set value = value + excluded.value')
        if _HAS_RETURNING:
            return self._write(sql + ' returning value', (self.name, key, amount),
                               'incrementing a counter').fetchall()[0][0]
        conn = self.conn
        self._run(conn, 'begin immediate', (), 'incrementing a counter')
        try:
            conn.execute(sql, (self.name, key, amount))
            value = conn.execute('select value from counter where queue = ? and key = ?',
                                 (self.name, key)).fetchone()[0]
            conn.execute('commit')
        except BaseException:
            conn.rollback()
            raise
        return value

    def delete_counter(self, key):
        self._write('delete from counter where queue = ? and key = ?', (self.name, key),
                    'deleting a counter')

    def flush_counters(self):
        self._write('delete from counter where queue = ?', (self.name,), 'flushing counters')

    # Dead letters ------------------------------------------------------------------------

    _LETTER_COLUMNS = 'id, data, reason, time, deliveries'

    @staticmethod
    def _letter(row):
        id, data, reason, when, deliveries = row
        return dead_letter(str(id), bytes(data), reason, when, deliveries)

    def put_dead_letter(self, data, reason, deliveries=1):
        cursor = self._write(
            'insert into dead_letter (queue, data, reason, time, deliveries) '
            'values (?, ?, ?, ?, ?)',
            (self.name, data, str(reason), time.time(), int(deliveries)),
            'setting a message aside')
        return str(cursor.lastrowid)

    def dead_letters(self, limit=None):
        limit = check_limit(limit)
        rows = self._rows(f'select {self._LETTER_COLUMNS} from dead_letter where queue = ? '
                          f'order by id limit ?', (self.name, -1 if limit is None else limit))
        return [self._letter(row) for row in rows]

    def pop_dead_letter(self, id):
        try:
            rowid = int(id)
        except (TypeError, ValueError):
            return None
        rows = self._delete_returning('dead_letter', 'queue = ? and id = ?', (self.name, rowid),
                                      self._LETTER_COLUMNS, 'popping a dead letter')
        return self._letter(rows[0]) if rows else None

    def flush_dead_letters(self):
        self._write('delete from dead_letter where queue = ?', (self.name,),
                    'flushing dead letters')

    def dead_letter_count(self):
        return self._rows('select count(*) from dead_letter where queue = ?',
                          (self.name,))[0][0]

    # Reliable delivery (opt-in, ``Huey(reliable=True)``) -----------------------------------
    #
    # Two side tables, created on first use; huey 3.5.4's tables are untouched:
    #     huey_inflight(token text primary key, queue, consumer, data, priority, deliveries,
    #                   lease_until real)    one row per message being run, keyed by delivery
    #     huey_redelivery(queue, task_id, data, deliveries)   how often a message that went
    #                   back to ``task`` was delivered before (joined by task row id + data)

    _RELIABLE_DDL = (
        'create table if not exists huey_inflight (token text not null primary key, '
        'queue text not null, consumer text not null, data blob not null, '
        'priority real not null default 0.0, deliveries integer not null, '
        'lease_until real not null)',
        'create index if not exists huey_inflight_queue_lease on huey_inflight '
        '(queue, lease_until)',
        'create table if not exists huey_redelivery (queue text not null, '
        'task_id integer not null, data blob not null, deliveries integer not null, '
        'primary key (queue, task_id))',
    )
    _reliable_ready = False

    def _transaction(self, what):
        """A ``begin immediate`` ... ``commit`` block on this thread's connection."""
        storage = self

        class _Txn:
            def __enter__(self):
                storage._local.empty_at_version = None
                self.conn = storage.conn
                storage._run(self.conn, 'begin immediate', (), what)
                return self.conn

            def __exit__(self, exc_type, exc, tb):
                if exc_type is None:
                    self.conn.execute('commit')
                else:
                    self.conn.rollback()

        return _Txn()

    def _ensure_reliable_tables(self):
        if not self._reliable_ready:
            with self._transaction('creating the in-flight tables') as conn:
                for sql in self._RELIABLE_DDL:
                    conn.execute(sql)
            self._reliable_ready = True

    def dequeue_reliable(self, consumer, token, lease, timeout=None):
        """Move the next message into ``huey_inflight`` under ``token`` (one transaction);
        returns ``(data, deliveries)`` or None. ``timeout`` waits as ``dequeue_wait``."""
        self._ensure_reliable_tables()

        def pop(conn):
            with self._transaction('dequeueing a task') as conn:
                rows = conn.execute(
                    'delete from task where id = (select id from task where queue = ? '
                    'order by priority desc, id limit 1) returning id, data, priority',
                    (self.name,)).fetchall()
                if not rows:
                    return None
                task_id, data, priority = rows[0]
                before = conn.execute(
                    'delete from huey_redelivery where queue = ? and task_id = ? and data = ? '
                    'returning deliveries', (self.name, task_id, data)).fetchall()
                deliveries = (before[0][0] if before else 0) + 1
                conn.execute(
                    'insert into huey_inflight (token, queue, consumer, data, priority, '
                    'deliveries, lease_until) values (?, ?, ?, ?, ?, ?, ?)',
                    (token, self.name, consumer, data, priority, deliveries,
                     time.time() + lease))
            return data, deliveries

        return self._wait_using(lambda: self._dequeue_using(pop), timeout)

    def renew_leases(self, tokens, lease):
        """Extend the lease of every in-flight entry in ``tokens`` (one statement per 500);
        returns how many are still in flight."""
        self._ensure_reliable_tables()
        tokens = list(tokens)
        until = time.time() + lease
        renewed = 0
        for i in range(0, len(tokens), _CHUNK):
            chunk = tokens[i:i + _CHUNK]
            renewed += self._write(
                f'update huey_inflight set lease_until = ? where queue = ? and token in '
                f'({",".join("?" * len(chunk))})', (until, self.name, *chunk),
                'renewing leases').rowcount
        return renewed

    def ack(self, token):
        """Remove the in-flight entry ``token``; False when it is no longer there (it was
        recovered after its lease expired)."""
        self._ensure_reliable_tables()
        return self._write('delete from huey_inflight where queue = ? and token = ?',
                           (self.name, token), 'acknowledging a task').rowcount > 0

    def recover_expired(self, max_deliveries, now=None):
        """In one transaction, put every in-flight entry whose lease expired back in the
        queue, except those delivered ``max_deliveries`` times already: those move into the
        dead-letter queue, returned as ``[(data, deliveries, letter_id)]``."""
        self._ensure_reliable_tables()
        now = time.time() if now is None else now
        dead = []
        with self._transaction('recovering expired leases') as conn:
            rows = conn.execute(
                'delete from huey_inflight where queue = ? and lease_until < ? '
                'returning data, priority, deliveries', (self.name, now)).fetchall()
            for data, priority, deliveries in rows:
                if deliveries >= max_deliveries:
                    letter_id = conn.execute(
                        'insert into dead_letter (queue, data, reason, time, deliveries) '
                        'values (?, ?, ?, ?, ?)',
                        (self.name, data, over_cap_reason(deliveries, max_deliveries),
                         time.time(), deliveries)).lastrowid
                    dead.append((data, deliveries, str(letter_id)))
                    continue
                task_id = conn.execute(
                    'insert into task (queue, data, priority) values (?, ?, ?)',
                    (self.name, data, priority)).lastrowid
                conn.execute(
                    'insert or replace into huey_redelivery (queue, task_id, data, deliveries)'
                    ' values (?, ?, ?, ?)', (self.name, task_id, data, deliveries))
        return len(rows) - len(dead), dead

    def inflight_items(self):
        """``[(token, consumer, deliveries, lease_until, data)]`` for this queue."""
        self._ensure_reliable_tables()
        return self._rows('select token, consumer, deliveries, lease_until, data from '
                          'huey_inflight where queue = ? order by lease_until', (self.name,))

    def move_due_to_queue(self, ts, priority_of=None):
        """Move every scheduled message due at ``ts`` into the queue in one transaction
        (a crash before the commit leaves them all scheduled); returns the moved messages.
        ``priority_of(data)`` gives each message's priority."""
        with self._transaction('moving due tasks to the queue') as conn:
            rows = conn.execute(
                'delete from schedule where queue = ? and timestamp <= ? '
                'returning timestamp, id, data', (self.name, ts.timestamp())).fetchall()
            rows.sort(key=lambda row: (row[0], row[1]))
            moved = [data for _, _, data in rows]
            if moved:
                params = [(self.name, data, (priority_of(data) if priority_of else 0) or 0)
                          for data in moved]
                conn.executemany('insert into task (queue, data, priority) values (?, ?, ?)',
                                 params)
        return moved
