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

``dead_letter`` is huey-rs's own table; huey 3.5.4 neither reads nor minds it. Neither does it
mind ``huey_rs_claim(queue, key, owner, expires real)`` (created on first use), the claims
consumers take to enqueue each periodic run once (``claim``); a claim taking the table's
write lock first deletes the queue's lapsed claims.

Each thread gets its own connection (WAL lets readers run beside the one writer). Every
operation that must be atomic is a single autocommit statement (``DELETE ... RETURNING``,
upserts; a short write transaction where sqlite is older than 3.35), so a dequeue is atomic
across processes and a statement that cannot get the write lock within ``timeout`` changes
nothing and raises ``SqliteBusyError``.

The rest of the class is in mixins, one concern each: ``sqlite_wait`` (waiting for a message
without polling), ``sqlite_scheduler`` (claims, moving due tasks) and ``sqlite_reliable``
(dead letters, at-least-once delivery).
"""

import logging
import os
import sqlite3
import threading
import time

from huey.constants import EmptyData

from huey.storage.base import BaseStorage, check_batch, in_dequeue_order
from huey.storage.sqlite_reliable import CHUNK
from huey.storage.sqlite_reliable import SqliteReliableDelivery
from huey.storage.sqlite_scheduler import SqliteScheduler
from huey.storage.sqlite_wait import SqliteWaiting, _WalWatcher  # noqa: F401 (tests)

logger = logging.getLogger('huey')


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


_SCHEMA_NAMES = {
    'kv',
    'schedule',
    'task',
    'counter',
    'dead_letter',
    'schedule_queue_timestamp',
    'task_queue_priority_id',
}


class _ThreadConnection(threading.local):
    conn = None
    watcher = None
    generation = -1
    pid = -1
    # data_version read just before a dequeue found the queue empty (None: unknown); while
    # it has not moved, the queue is still empty and an idle poll skips the table.
    empty_at_version = None
    found_last = False  # The last dequeue got a message: skip the data_version read.


class SqliteStorage(SqliteWaiting, SqliteScheduler, SqliteReliableDelivery, BaseStorage):
    """huey's SqliteStorage: one sqlite file, one connection per thread, WAL by default.

    ``fsync=False`` (the documented default) sets ``synchronous=NORMAL``: in WAL mode a
    commit survives any crash of the process and is synced to disk at checkpoints, without an
    fsync per task; ``fsync=True`` sets FULL (an fsync per commit); ``fsync=None`` leaves
    sqlite's own setting. ``strict_fifo`` makes task ids never reused (only when the
    table is created). Extra keyword arguments go to ``sqlite3.connect``.
    """

    priority = True
    wakeup = True  # dequeue_wait() is woken by commits from other connections
    reliable_delivery = True  # dequeue_reliable, renew_leases, ack, recover_expired
    batch_dequeue = True  # dequeue_many: one DELETE ... RETURNING

    # The driver. CySqliteStorage (huey.storage.sql) runs the same statements on cysqlite.
    operational_error = sqlite3.OperationalError
    integrity_error = sqlite3.IntegrityError
    busy_error = SqliteBusyError
    # DELETE ... RETURNING needs sqlite 3.35; older libraries use an explicit write transaction.
    has_returning = sqlite3.sqlite_version_info >= (3, 35, 0)

    def __init__(
        self,
        name='huey',
        filename='huey.db',
        cache_mb=8,
        fsync=False,
        journal_mode='wal',
        timeout=5,
        strict_fifo=False,
        create_tables=True,
        **kwargs,
    ):
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
        if local.conn is None or local.generation != self._generation or local.pid != os.getpid():
            return None
        return local.conn

    @property
    def conn(self):
        """The calling thread's connection, opened on first use and after ``close``."""
        local = self._local
        if (
            local.generation == self._generation
            and local.conn is not None
            and local.pid == os.getpid()
        ):
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
        conn = self._connect()
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

    def _connect(self):
        """A new driver connection in autocommit mode (statements commit on their own)."""
        return sqlite3.connect(
            self.filename,
            timeout=self._timeout,
            check_same_thread=False,
            isolation_level=None,
            **self._conn_kwargs,
        )

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
            except self.operational_error as exc:
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
            names = {name for (name,) in conn.execute('select name from sqlite_master')}
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
        return self.busy_error(
            f'sqlite database {self.filename!r} stayed locked by another connection for more '
            f'than timeout={self._timeout}s while {what}; nothing was changed: {exc}'
        )

    def _run(self, conn, sql, params, what):
        try:
            return conn.execute(sql, params)
        except self.operational_error as exc:
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
        if self.has_returning:
            # One autocommit statement; fetchall() drives it to completion, which commits.
            return self._run(
                self.conn, f'delete from {table} where {where} returning {columns}', params, what
            ).fetchall()
        with self._transaction(what) as conn:
            return self._delete_in(conn, table, where, params, columns)

    def _delete_in(self, conn, table, where, params, columns):
        """Inside the caller's transaction: delete the rows of ``table`` matching ``where``
        and return their ``columns`` (DELETE ... RETURNING, or a SELECT then a DELETE by rowid
        where sqlite is older than 3.35)."""
        if self.has_returning:
            sql = f'delete from {table} where {where} returning {columns}'
            return conn.execute(sql, params).fetchall()
        rows = conn.execute(
            f'select rowid, {columns} from {table} where {where}', params
        ).fetchall()
        for i in range(0, len(rows), CHUNK):
            rowids = [row[0] for row in rows[i : i + CHUNK]]
            conn.execute(
                f'delete from {table} where rowid in ({",".join("?" * len(rowids))})', rowids
            )
        return [row[1:] for row in rows]

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

    # Queue -------------------------------------------------------------------------------

    def enqueue(self, data, priority=None):
        self._write(
            'insert into task (queue, data, priority) values (?, ?, ?)',
            (self.name, data, priority or 0),
            'enqueueing a task',
        )

    def enqueue_many(self, items):
        """Enqueue ``(data, priority)`` pairs in order, a few hundred per statement."""
        for i in range(0, len(items), 300):
            chunk = items[i : i + 300]
            params = [v for data, priority in chunk for v in (self.name, data, priority or 0)]
            self._write(
                'insert into task (queue, data, priority) values '
                + ','.join(['(?, ?, ?)'] * len(chunk)),
                params,
                'enqueueing tasks',
            )

    def dequeue(self):
        batch = self.dequeue_many(1)
        return batch[0] if batch else None

    def dequeue_many(self, n, timeout=None):
        """Up to ``n`` messages with one statement; waits as ``dequeue_wait`` when the queue
        is empty and ``timeout`` is given."""
        check_batch(n)

        def take():
            return self._dequeue_using(lambda conn: self._pop_tasks(n))

        batch = take() if timeout is None else self._wait_using(take, timeout)
        return batch or []

    def _pop_tasks(self, n):
        """Delete the next ``n`` messages and return them in dequeue order (None if none):
        one autocommit statement."""
        where = 'id in (select id from task where queue = ? order by priority desc, id limit ?)'
        return in_dequeue_order(
            self._delete_returning(
                'task', where, (self.name, n), 'priority, id, data', 'dequeueing tasks'
            )
        )

    def queue_size(self):
        return self._rows('select count(id) from task where queue = ?', (self.name,))[0][0]

    def enqueued_items(self, limit=None):
        sql = 'select data from task where queue = ? order by priority desc, id'
        params = (self.name,)
        if limit is not None:
            sql += ' limit ?'
            params = (self.name, limit)
        return [data for (data,) in self._rows(sql, params)]

    def flush_queue(self):
        self._write('delete from task where queue = ?', (self.name,), 'flushing the queue')

    # Schedule ----------------------------------------------------------------------------

    def add_to_schedule(self, data, ts):
        self._write(
            'insert into schedule (queue, data, timestamp) values (?, ?, ?)',
            (self.name, data, ts.timestamp()),
            'scheduling a task',
        )

    def read_schedule(self, ts):
        rows = self._delete_returning(
            'schedule',
            'queue = ? and timestamp <= ?',
            (self.name, ts.timestamp()),
            'timestamp, id, data',
            'reading the schedule',
        )
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
        return [data for (data,) in self._rows(sql, params)]

    def flush_schedule(self):
        self._write('delete from schedule where queue = ?', (self.name,), 'flushing the schedule')

    # Results -----------------------------------------------------------------------------

    def put_data(self, key, value, is_result=False):
        self._write(
            'insert or replace into kv (queue, key, value) values (?, ?, ?)',
            (self.name, key, value),
            'storing a result',
        )

    def peek_data(self, key):
        rows = self._rows('select value from kv where queue = ? and key = ?', (self.name, key))
        return rows[0][0] if rows else EmptyData

    def peek_many(self, keys):
        keys = list(keys)
        found = {}
        for i in range(0, len(keys), CHUNK):
            chunk = keys[i : i + CHUNK]
            found.update(
                self._rows(
                    f'select key, value from kv where queue = ? and key in '
                    f'({",".join("?" * len(chunk))})',
                    (self.name, *chunk),
                )
            )
        return found

    def pop_data(self, key):
        if self.has_returning:
            rows = self._delete_returning(
                'kv', 'queue = ? and key = ?', (self.name, key), 'value', 'popping a result'
            )
        else:
            rows = self._pop_without_returning(key)
        return rows[0][0] if rows else EmptyData

    def _pop_without_returning(self, key):
        conn = self.conn
        self._run(conn, 'begin immediate', (), 'popping a result')
        try:
            rows = conn.execute(
                'select value from kv where queue = ? and key = ?', (self.name, key)
            ).fetchall()
            conn.execute('delete from kv where queue = ? and key = ?', (self.name, key))
            conn.execute('commit')
        except BaseException:
            conn.rollback()
            raise
        return rows

    def delete_data(self, key):
        cursor = self._write(
            'delete from kv where queue = ? and key = ?', (self.name, key), 'deleting a result'
        )
        return cursor.rowcount > 0

    def has_data_for_key(self, key):
        return bool(self._rows('select 1 from kv where queue = ? and key = ?', (self.name, key)))

    def put_if_empty(self, key, value, ttl=None):
        if ttl is not None:
            raise NotImplementedError('ttl is not supported by this storage.')
        cursor = self._write(
            'insert into kv (queue, key, value) values (?, ?, ?) '
            'on conflict (queue, key) do nothing',
            (self.name, key, value),
            'storing a value',
        )
        return cursor.rowcount == 1

    def result_store_size(self):
        return self._rows('select count(*) from kv where queue = ?', (self.name,))[0][0]

    def result_items(self):
        return dict(self._rows('select key, value from kv where queue = ?', (self.name,)))

    def flush_results(self):
        self._write('delete from kv where queue = ?', (self.name,), 'flushing results')

    # Counters ----------------------------------------------------------------------------

    def incr(self, key, amount=1):
        sql = (
            'insert into counter (queue, key, value) values (?, ?, ?) '
            'on conflict (queue, key) do update set value = value + excluded.value'
        )
        if self.has_returning:
            return self._write(
                sql + ' returning value', (self.name, key, amount), 'incrementing a counter'
            ).fetchall()[0][0]
        conn = self.conn
        self._run(conn, 'begin immediate', (), 'incrementing a counter')
        try:
            conn.execute(sql, (self.name, key, amount))
            value = conn.execute(
                'select value from counter where queue = ? and key = ?', (self.name, key)
            ).fetchone()[0]
            conn.execute('commit')
        except BaseException:
            conn.rollback()
            raise
        return value

    def delete_counter(self, key):
        self._write(
            'delete from counter where queue = ? and key = ?',
            (self.name, key),
            'deleting a counter',
        )

    def flush_counters(self):
        self._write('delete from counter where queue = ?', (self.name,), 'flushing counters')

    # Heartbeats (operators' view, see BaseStorage): a side table created on first write;
    # reading before then finds none and creates nothing.
    #     huey_rs_heartbeat(queue, consumer, data)   one row per consumer process

    _heartbeat_ready = False

    def put_heartbeat(self, consumer, data):
        if not self._heartbeat_ready:
            self._write(
                'create table if not exists huey_rs_heartbeat (queue text not null, '
                'consumer text not null, data blob not null, primary key (queue, consumer))',
                (),
                'creating the heartbeat table',
            )
            self._heartbeat_ready = True
        self._write(
            'insert or replace into huey_rs_heartbeat (queue, consumer, data) values (?, ?, ?)',
            (self.name, consumer, bytes(data)),
            'writing a heartbeat',
        )

    def heartbeats(self):
        try:
            rows = self._rows(
                'select consumer, data from huey_rs_heartbeat where queue = ?', (self.name,)
            )
        except self.operational_error as exc:
            if 'no such table' in str(exc):
                return {}
            raise
        return {consumer: bytes(data) for consumer, data in rows}

    def delete_heartbeat(self, consumer):
        try:
            self._write(
                'delete from huey_rs_heartbeat where queue = ? and consumer = ?',
                (self.name, consumer),
                'deleting a heartbeat',
            )
        except self.operational_error as exc:
            if 'no such table' not in str(exc):
                raise
