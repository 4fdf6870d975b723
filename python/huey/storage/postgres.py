"""PostgresStorage: queue, schedule, results and counters in PostgreSQL tables, on psycopg 3.

The tables, indexes and notification channel are huey 3.5.4's, so huey 3.5.4 and huey-rs
processes share one database. ``{p}`` is ``table_prefix`` with everything but
``[A-Za-z0-9_]`` removed; every table holds rows for many queues, told apart by the ``queue``
column (the storage ``name``)::

    {p}_task(id bigserial primary key, queue text, data bytea, priority double precision)
        index {p}_task_queue_priority_id (queue, priority desc, id)
        dequeue order: highest priority first, then lowest id (FIFO); rows another
        transaction holds are skipped (FOR UPDATE SKIP LOCKED)
    {p}_schedule(id bigserial primary key, queue text, data bytea, timestamp double precision)
        index {p}_schedule_queue_timestamp (queue, timestamp); timestamp is
        ``datetime.timestamp()`` of the naive eta
    {p}_kv(queue text, key text, value bytea, primary key (queue, key))   results, locks, flags
    {p}_counter(queue text, key text, value bigint, primary key (queue, key))

Wake-ups: every statement that adds to ``{p}_task`` also runs ``pg_notify`` on the channel
``{p}.q.{name}`` (``huey.q.<md5 of it>`` when that is over PostgreSQL's 63 bytes), delivered
when it commits. Waiting threads sleep in the socket of one LISTEN connection per process,
so idle consumers cost nothing and wake within a round trip of an enqueue (huey 3.5.4's or
ours). One thread at a time waits on it and the others queue behind it: a notification wakes
one worker, not every worker of the process (each would look at the queue, and all but one
find nothing); the next in line looks at the queue before it takes its turn, so a burst
announced by one notification is still taken by all.

huey-rs's own tables, created on first use (huey 3.5.4 neither reads nor minds them; the
``_rs_`` keeps them apart from huey's contrib.stats tables ``huey_event`` and
``huey_inflight``, which may live in the same database)::

    {p}_rs_dead_letter(id bigserial primary key, queue, data bytea, reason bytea (UTF-8: text
                       refuses NUL), time double precision, deliveries integer)
        index {p}_rs_dead_letter_queue_id (queue, id)        messages set aside
    {p}_rs_inflight(token text primary key, queue, consumer, data bytea, priority,
                    deliveries integer, lease_until double precision)
        index {p}_rs_inflight_queue_lease (queue, lease_until)
                                     reliable mode: one row per delivery being run
    {p}_rs_redelivery(queue, task_id bigint, data bytea, deliveries integer,
                      primary key (queue, task_id))
                                     the delivery count of a message that recovery put back
                                     in {p}_task (joined by row id and data)

Leases are measured on the server's clock (``clock_timestamp()``), so consumers on hosts
whose clocks disagree still agree on when a lease ends.

Each thread (each greenlet under gevent) has its own connection, in autocommit mode, opened
on first use and after a fork or a broken connection; nearly every operation is one
statement, so one round trip, and atomic.
"""

import contextlib
import hashlib
import logging
import math
import os
import re
import threading
import time
import weakref

from huey.constants import EmptyData
from huey.exceptions import ConfigurationError
from huey.storage.base import check_limit, dead_letter, over_cap_reason
from huey.storage.sql import BaseSqlStorage

_psycopg = None  # the driver module, once imported by driver()

logger = logging.getLogger('huey.storage.postgres')

MISSING_PSYCOPG = (
    '"psycopg" (version 3.2 or newer) not found, cannot use Postgres storage backend. '
    'Run "pip install psycopg" (or "pip install huey-rs[postgres]") to install.'
)

# Server time as unix seconds (double precision): leases are set and compared with it.
_NOW = 'extract(epoch from clock_timestamp())::float8'

# Rows per statement where a list is sent as an array parameter.
_CHUNK = 10_000


def driver():
    """The psycopg module, or None when it is not installed (optional: only PostgresStorage
    needs it). Imported on first use rather than with huey: ``huey_consumer`` imports huey
    before the app, and an app that monkey-patches for gevent at its top must do so before
    psycopg picks its (cooperative or not) way of waiting on sockets."""
    global _psycopg
    if _psycopg is None:
        try:
            import psycopg
            import psycopg.conninfo
            import psycopg.errors
        except ImportError:
            return None
        _psycopg = psycopg
    return _psycopg


def __getattr__(name):
    if name == 'psycopg':  # huey 3.5.4's ``huey.storage.psycopg``: the module or None
        return driver()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def _huey_ddl(p):
    """huey 3.5.4's tables and indexes for prefix ``p`` (created by ``initialize_schema``)."""
    return [
        f'create table if not exists {p}_kv (queue text not null, key text not null, '
        'value bytea not null, primary key(queue, key))',
        f'create table if not exists {p}_schedule (id bigserial primary key, '
        'queue text not null, data bytea not null, timestamp double precision not null)',
        f'create index if not exists {p}_schedule_queue_timestamp '
        f'on {p}_schedule (queue, timestamp)',
        f'create table if not exists {p}_task (id bigserial primary key, '
        'queue text not null, data bytea not null, '
        'priority double precision not null default 0.0)',
        f'create index if not exists {p}_task_queue_priority_id '
        f'on {p}_task (queue, priority desc, id)',
        f'create table if not exists {p}_counter (queue text not null, key text not null, '
        'value bigint not null default 0, primary key(queue, key))',
    ]


def _own_ddl(p):
    """huey-rs's dead-letter and reliable-delivery tables, created on first use."""
    return [
        f'create table if not exists {p}_rs_dead_letter (id bigserial primary key, '
        'queue text not null, data bytea not null, reason bytea not null, '
        'time double precision not null, deliveries integer not null default 1)',
        f'create index if not exists {p}_rs_dead_letter_queue_id '
        f'on {p}_rs_dead_letter (queue, id)',
        f'create table if not exists {p}_rs_inflight (token text primary key, '
        'queue text not null, consumer text not null, data bytea not null, '
        'priority double precision not null default 0.0, deliveries integer not null, '
        'lease_until double precision not null)',
        f'create index if not exists {p}_rs_inflight_queue_lease '
        f'on {p}_rs_inflight (queue, lease_until)',
        f'create table if not exists {p}_rs_redelivery (queue text not null, '
        'task_id bigint not null, data bytea not null, deliveries integer not null, '
        'primary key (queue, task_id))',
        f'create table if not exists {p}_rs_heartbeat (queue text not null, '
        'consumer text not null, data bytea not null, primary key (queue, consumer))',
    ]


def _channel(prefix, name):
    """huey 3.5.4's notification channel for queue ``name``."""
    channel = f'{prefix}.q.{name}'
    if len(channel.encode('utf-8')) > 63:  # pg_notify() refuses longer channel names
        channel = 'huey.q.' + hashlib.md5(channel.encode('utf-8')).hexdigest()
    return channel


def _check_lease(lease):
    # A NaN lease would never expire (nothing compares less than NaN), an infinite one
    # neither: the message would stay in flight for good.
    if isinstance(lease, bool) or not isinstance(lease, (int, float)):
        raise TypeError(f'lease must be a number of seconds, got {lease!r}')
    if not 0 < lease < math.inf:
        raise ValueError(f'lease must be a finite number of seconds > 0, got {lease!r}')


def _check_timeout(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{name} must be a number of seconds, got {value!r}')
    if not math.isfinite(value) or value < 0:
        raise ValueError(f'{name} must be a finite number of seconds >= 0, got {value!r}')
    return value


_LOCAL_CLASSES = {}


def _thread_connection():
    """A new slot for the calling thread's connection (huey 3.5.4 calls it
    ``_listen_local``): per greenlet when gevent has patched ``threading`` by the time the
    storage is made. Resolved then, not at import: ``huey_consumer`` imports huey before
    the app that patches, and greenlets sharing one slot would share one connection."""
    base = threading.local
    cls = _LOCAL_CLASSES.get(base)
    if cls is None:
        cls = _LOCAL_CLASSES[base] = type(
            '_ThreadConnection',
            (base,),
            {
                'conn': None,
                'pid': -1,
                'generation': -1,
                'closer': None,
            },
        )
    return cls()


class _Closer:
    """Closes a thread's connection when the thread (and so its local) goes away; never in
    a forked child, where closing would end the parent's session."""

    __slots__ = ('conn', 'pid')

    def __init__(self, conn):
        self.conn, self.pid = conn, os.getpid()

    def __del__(self):
        if self.pid == os.getpid():
            with contextlib.suppress(Exception):
                self.conn.close()


class _Listener:
    """The process's LISTEN connection and the turn to wait on it."""

    __slots__ = ('pid', 'turn', 'conn', 'generation')

    def __init__(self):
        # Made on first wait, after any gevent patching: a greenlet-aware lock then.
        self.pid, self.turn, self.conn, self.generation = os.getpid(), threading.Lock(), None, -1


class PostgresStorage(BaseSqlStorage):
    """huey's PostgresStorage: huey 3.5.4's tables in a PostgreSQL database.

    ``dsn`` is a libpq connection string or URL; ``connection`` a zero-argument callable
    returning a new psycopg connection (called for each connection the storage opens: one
    per thread); other keyword arguments go to ``psycopg.connect``. With ``blocking``
    (the default) ``dequeue`` waits up to ``read_timeout`` seconds for a notification when
    the queue is empty. ``create_tables=False`` leaves the schema to ``initialize_schema()``
    (or to whoever created it).
    """

    priority = True
    wakeup = True  # dequeue_wait() sleeps on LISTEN until an enqueue notifies
    reliable_delivery = True

    def __init__(
        self,
        name='huey',
        dsn=None,
        connection=None,
        blocking=True,
        read_timeout=1,
        table_prefix='huey',
        create_tables=True,
        **connection_params,
    ):
        psycopg = driver()
        if psycopg is None:
            raise ConfigurationError(MISSING_PSYCOPG)
        version = tuple(int(part) for part in re.findall(r'\d+', psycopg.__version__)[:3])
        if version < (3, 2):
            raise ConfigurationError(
                f'PostgresStorage needs psycopg 3.2 or newer, found {psycopg.__version__}: '
                'run "pip install -U psycopg".'
            )
        if version < (3, 2, 4):
            logger.warning(
                'psycopg %s drops notifications that arrive during other statements, so a '
                'waiting consumer may wake only after read_timeout; psycopg 3.2.4 or newer '
                'keeps them.',
                psycopg.__version__,
            )
        if connection is not None and not callable(connection):
            raise ConfigurationError(
                f'connection must be a callable returning a psycopg connection, got {connection!r}'
            )
        if connection is not None and (dsn or connection_params):
            # huey 3.5.4 uses the callable and ignores the rest: so do we, but say so.
            logger.warning(
                'PostgresStorage %r: connection is given, so dsn and the connection '
                'parameters (%s) are not used.',
                name,
                ', '.join(['dsn'] * bool(dsn) + sorted(connection_params)),
            )
        self.dsn = dsn
        self.connection = connection
        self.blocking = blocking
        self.read_timeout = _check_timeout('read_timeout', read_timeout)
        self.connection_params = connection_params
        if not isinstance(table_prefix, str):
            raise ConfigurationError(f'table_prefix must be a string, got {table_prefix!r}')
        prefix = re.sub('[^A-Za-z0-9_]', '', table_prefix)
        if not prefix or prefix[0].isdigit():
            raise ConfigurationError(
                f'table_prefix={table_prefix!r} does not make a table name: it needs letters, '
                'digits or underscores, and must not start with a digit.'
            )
        self.table_prefix = prefix
        self.table_kv = f'{prefix}_kv'
        self.table_schedule = f'{prefix}_schedule'
        self.table_task = f'{prefix}_task'
        self.table_counter = f'{prefix}_counter'
        self.table_dead_letter = f'{prefix}_rs_dead_letter'
        self.table_inflight = f'{prefix}_rs_inflight'
        self.table_redelivery = f'{prefix}_rs_redelivery'
        self.table_heartbeat = f'{prefix}_rs_heartbeat'
        self.channel = _channel(prefix, name)
        self.ddl = _huey_ddl(prefix)
        self._listen_local = _thread_connection()
        self._listener = None
        self._generation = 0
        # (pid, thread ident, weakref to connection) for every connection still open.
        self._open = []
        self._open_lock = threading.Lock()  # held for list updates only: never waits
        self._own_tables_ready = False
        self._prepare_statements()
        super().__init__(name, create_tables=create_tables)

    def _prepare_statements(self):
        t, s, kv = self.table_task, self.table_schedule, self.table_kv
        counter, dead = self.table_counter, self.table_dead_letter
        inflight, redelivery = self.table_inflight, self.table_redelivery
        pop_next = (
            f'delete from {t} where id = (select id from {t} where queue = %(queue)s '
            'order by priority desc, id limit 1 for update skip locked) '
            'returning id, data, priority'
        )
        self._sql = {
            'enqueue': (
                f'with added as (insert into {t} (queue, data, priority) values (%s, %s, %s) '
                "returning 1) select pg_notify(%s, '') from added"
            ),
            'enqueue_many': (
                f'with added as (insert into {t} (queue, data, priority) '
                'select %s, item.data, item.priority from unnest(%s::bytea[], %s::float8[]) '
                'with ordinality as item(data, priority, n) order by item.n returning 1) '
                "select pg_notify(%s, '') from (select 1 from added limit 1) as any_added"
            ),
            'dequeue': (
                f'delete from {t} where id = (select id from {t} where queue = %s '
                'order by priority desc, id limit 1 for update skip locked) returning data'
            ),
            # Reliable: queue -> in flight in one statement, with the deliveries charged
            # so far (remembered for a message recovery put back); this one is charged by
            # mark_started, when its task starts.
            'dequeue_reliable': (
                f'with task as ({pop_next}), '
                f'before as (delete from {redelivery} r using task where r.queue = %(queue)s '
                'and r.task_id = task.id and r.data = task.data returning r.deliveries), '
                f'held as (insert into {inflight} (token, queue, consumer, data, priority, '
                'deliveries, lease_until) select %(token)s, %(queue)s, %(consumer)s, '
                'task.data, task.priority, coalesce((select max(deliveries) from before), 0), '
                f'{_NOW} + %(lease)s from task returning data, deliveries) '
                'select data, deliveries + 1 from held'
            ),
            'mark_started': (
                f'update {inflight} set deliveries = deliveries + 1 '
                'where queue = %s and token = %s'
            ),
            'queue_size': f'select count(*) from {t} where queue = %s',
            'enqueued_items': (
                f'select data from {t} where queue = %s order by priority desc, id limit %s'
            ),
            'flush_queue': f'delete from {t} where queue = %s',
            'add_to_schedule': f'insert into {s} (queue, data, timestamp) values (%s, %s, %s)',
            'read_schedule': (
                f'delete from {s} where id in (select id from {s} where queue = %s and '
                'timestamp <= %s for update skip locked) returning timestamp, id, data'
            ),
            'move_due': (
                f'insert into {t} (queue, data, priority) select %s, item.data, '
                'item.priority from unnest(%s::bytea[], %s::float8[]) with ordinality '
                'as item(data, priority, n) order by item.n'
            ),
            'notify': "select pg_notify(%s, '')",
            'schedule_size': f'select count(*) from {s} where queue = %s',
            'scheduled_items': (
                f'select data from {s} where queue = %s order by timestamp, id limit %s'
            ),
            'flush_schedule': f'delete from {s} where queue = %s',
            'put_data': (
                f'insert into {kv} (queue, key, value) values (%s, %s, %s) '
                'on conflict (queue, key) do update set value = excluded.value'
            ),
            'delete_and_put': (
                f'with gone as (delete from {kv} where queue = %s and key = %s) '
                f'insert into {kv} (queue, key, value) values (%s, %s, %s) '
                'on conflict (queue, key) do update set value = excluded.value'
            ),
            'peek_data': f'select value from {kv} where queue = %s and key = %s',
            'peek_many': f'select key, value from {kv} where queue = %s and key = any(%s)',
            'pop_data': f'delete from {kv} where queue = %s and key = %s returning value',
            'delete_data': f'delete from {kv} where queue = %s and key = %s',
            'has_data': f'select 1 from {kv} where queue = %s and key = %s',
            'put_if_empty': (
                f'insert into {kv} (queue, key, value) values (%s, %s, %s) '
                'on conflict (queue, key) do nothing'
            ),
            'result_store_size': f'select count(*) from {kv} where queue = %s',
            'result_items': f'select key, value from {kv} where queue = %s',
            'flush_results': f'delete from {kv} where queue = %s',
            'incr': (
                f'insert into {counter} as c (queue, key, value) values (%s, %s, %s) '
                'on conflict (queue, key) do update set value = c.value + excluded.value '
                'returning value'
            ),
            'delete_counter': f'delete from {counter} where queue = %s and key = %s',
            'flush_counters': f'delete from {counter} where queue = %s',
            'put_dead_letter': (
                f'insert into {dead} (queue, data, reason, time, deliveries) '
                'values (%s, %s, %s, %s, %s) returning id'
            ),
            'dead_letters': (
                f'select id, data, reason, time, deliveries from {dead} where queue = %s '
                'order by id limit %s'
            ),
            'pop_dead_letter': (
                f'delete from {dead} where queue = %s and id = %s '
                'returning id, data, reason, time, deliveries'
            ),
            'flush_dead_letters': f'delete from {dead} where queue = %s',
            'dead_letter_count': f'select count(*) from {dead} where queue = %s',
            'renew_leases': (
                f'update {inflight} set lease_until = {_NOW} + %s '
                'where queue = %s and token = any(%s)'
            ),
            'ack': f'delete from {inflight} where queue = %s and token = %s',
            'expired': (
                f'delete from {inflight} where token in (select token from {inflight} '
                f'where queue = %s and lease_until < coalesce(%s, {_NOW}) '
                'for update skip locked) returning data, priority, deliveries'
            ),
            'requeue': (
                f'with task as (insert into {t} (queue, data, priority) values '
                '(%(queue)s, %(data)s, %(priority)s) returning id) '
                f'insert into {redelivery} (queue, task_id, data, deliveries) '
                'select %(queue)s, task.id, %(data)s, %(deliveries)s from task'
            ),
            'inflight_items': (
                f'select token, consumer, deliveries, lease_until, data from {inflight} '
                'where queue = %s order by lease_until'
            ),
        }

    # Connections -------------------------------------------------------------------------

    def _connect(self):
        """A new autocommit connection; a failure says which setting it came from."""
        if self.connection is not None:
            conn = self.connection()
        else:
            try:
                conn = _psycopg.connect(self.dsn or '', **self.connection_params)
            except _psycopg.ProgrammingError as exc:  # A malformed dsn or unknown option.
                raise ConfigurationError(
                    f'PostgresStorage {self.name!r}: the connection settings are not valid '
                    f'({self._settings()}): {str(exc).strip()}'
                ) from None
            except _psycopg.OperationalError as exc:
                raise _psycopg.OperationalError(
                    f'PostgresStorage {self.name!r} could not connect to PostgreSQL '
                    f'({self._settings()}): {str(exc).strip()}'
                ) from None
        conn.autocommit = True
        return conn

    _create_connection = _connect

    def _settings(self):
        """The connection settings for messages, password left out."""
        shown = []
        if self.dsn:
            try:
                parsed = _psycopg.conninfo.conninfo_to_dict(self.dsn)
            except Exception:
                shown.append('dsn=<unparseable>')
            else:
                if parsed.pop('password', None) is not None:
                    parsed['password'] = '***'
                shown.append('dsn=' + ' '.join(f'{k}={v}' for k, v in parsed.items()))
        for key, value in self.connection_params.items():
            shown.append(f'{key}={"***" if key == "password" else value!r}')
        return ', '.join(shown) or 'dsn not set: libpq defaults and PG* environment variables'

    @property
    def conn(self):
        """The calling thread's connection, opened on first use, after ``close()``, after
        a fork, and after the previous one broke (a server restart, say)."""
        local = self._listen_local
        conn = local.conn
        if (
            conn is not None
            and local.generation == self._generation
            and local.pid == os.getpid()
            and not conn.broken
            and not conn.closed
        ):
            return conn
        return self._reconnect(local)

    @property
    def _conn(self):
        """The calling thread's open connection, or None (huey's attribute name)."""
        local = self._listen_local
        if local.conn is None or local.pid != os.getpid() or local.generation != self._generation:
            return None
        return local.conn

    @_conn.setter
    def _conn(self, value):
        pass  # BaseSqlStorage.__init__ resets it; connections are per thread here.

    def _reconnect(self, local):
        if local.pid == os.getpid() and local.conn is not None:
            with contextlib.suppress(Exception):
                local.conn.close()  # This thread's own: closing it cannot race a statement.
        local.conn = local.closer = None
        conn = self._connect()
        local.conn, local.closer = conn, _Closer(conn)
        local.pid, local.generation = os.getpid(), self._generation
        with self._open_lock:
            self._open = [entry for entry in self._open if entry[2]() is not None]
            self._open.append((os.getpid(), threading.get_ident(), weakref.ref(conn)))
        return conn

    def close(self):
        """Retire every connection this storage opened in this process.

        The calling thread's connection and those of threads that have ended are closed now;
        another live thread may be in the middle of a statement on its own, so it closes
        its connection itself, on its next use of the storage. Threads that use the storage
        afterwards open fresh connections (the consumer calls this before forking). True
        when there was any to retire.
        """
        with self._open_lock:
            self._generation += 1
            entries, self._open = self._open, []
        pid, me = os.getpid(), threading.get_ident()
        alive = {thread.ident for thread in threading.enumerate()}
        retired = self._close_listener()
        for owner_pid, owner, ref in entries:
            conn = ref()
            if owner_pid != pid or conn is None:
                continue
            retired = True
            if owner == me or owner not in alive:
                with contextlib.suppress(Exception):
                    conn.close()
        return retired

    def _close_listener(self):
        """Close this process's LISTEN connection unless a thread is waiting on it (that
        thread replaces it on its next turn: its generation is old). True when it was open."""
        listener = self._listener
        if listener is None or listener.pid != os.getpid() or listener.conn is None:
            return False
        if listener.turn.acquire(blocking=False):
            try:
                with contextlib.suppress(Exception):
                    listener.conn.close()
                listener.conn = None
            finally:
                listener.turn.release()
        return True

    def _listening_connection(self, listener):
        """The LISTEN connection (its holder has the turn); a new one after ``close()``, a
        fork or a broken connection. Second value: whether LISTEN was just issued."""
        conn = listener.conn
        if (
            conn is not None
            and listener.generation == self._generation
            and not conn.broken
            and not conn.closed
        ):
            return conn, False
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()  # This process's own (a forked child gets a new listener).
            listener.conn = None
        conn = self._connect()
        try:
            conn.execute('listen "{}"'.format(self.channel.replace('"', '""')))
        except BaseException:
            conn.close()
            raise
        listener.conn, listener.generation = conn, self._generation
        return conn, True

    @contextlib.contextmanager
    def db(self, commit=False, close=False):
        """A cursor on this thread's connection (huey's BaseSqlStorage helper), inside a
        transaction with ``commit``; ``close`` closes the connection afterwards."""
        conn = self.conn
        try:
            with conn.transaction() if commit else contextlib.nullcontext():
                with conn.cursor() as cursor:
                    yield cursor
        except _psycopg.errors.UndefinedTable as exc:
            raise self._missing_table(exc) from None
        finally:
            if close:
                self._listen_local.generation = -1
                conn.close()

    # Statements --------------------------------------------------------------------------

    def _run(self, name, params, binary=False):
        """Run the named statement on this thread's connection; its cursor."""
        try:
            return self.conn.execute(self._sql[name], params, binary=binary)
        except _psycopg.errors.UndefinedTable as exc:
            raise self._missing_table(exc) from None

    def _rows(self, name, params, binary=False):
        return self._run(name, params, binary).fetchall()

    def _scalar(self, name, params):
        return self._run(name, params).fetchone()[0]

    @contextlib.contextmanager
    def _transaction(self):
        """This thread's connection inside one transaction (committed unless it raises)."""
        conn = self.conn
        try:
            with conn.transaction():
                yield conn
        except _psycopg.errors.UndefinedTable as exc:
            raise self._missing_table(exc) from None

    def _other_prefixes(self, conn):
        """The other ``table_prefix`` values whose huey tables are on this search path."""
        rows = conn.execute(
            'select left(t.table_name, length(t.table_name) - 5) from '
            'information_schema.tables t where t.table_schema = any(current_schemas(false)) '
            "and t.table_name like '%\\_task' and ("
            'select count(*) from information_schema.tables o where o.table_schema = '
            't.table_schema and o.table_name in (left(t.table_name, length(t.table_name) - 5) '
            "|| '_kv', left(t.table_name, length(t.table_name) - 5) || '_schedule')) = 2 "
            'order by 1'
        ).fetchall()
        mine = self.table_prefix.lower()  # unquoted names are folded to lower case
        return [prefix for (prefix,) in rows if prefix != mine]

    def _missing_table(self, exc):
        """The error for a statement on a table that is not there: names ``table_prefix``
        and the prefixes whose huey tables do exist in the database."""
        found = []
        with contextlib.suppress(Exception):
            found = self._other_prefixes(self.conn)
        hint = (
            f' Tables were found with table_prefix {", ".join(map(repr, found))}: set '
            'table_prefix to the one the other processes on this database use.'
            if found
            else ''
        )
        return ConfigurationError(
            f'PostgresStorage {self.name!r}: {str(exc).strip()} (table_prefix='
            f'{self.table_prefix!r}). Create the tables with create_tables=True or '
            f'storage.initialize_schema().{hint}'
        )

    def initialize_schema(self):
        """Create huey 3.5.4's tables and indexes when missing (one transaction, serialized
        by an advisory lock so that processes starting together do not collide). Creating
        them beside another prefix's tables is logged: a mistyped ``table_prefix`` would
        otherwise give a consumer an empty queue of its own."""
        others = self._create(self.ddl, self.table_task)
        if others:
            logger.warning(
                'PostgresStorage %r created new tables with table_prefix=%r, while this '
                'database has huey tables with table_prefix %s: if the other processes '
                'use those, set table_prefix to match.',
                self.name,
                self.table_prefix,
                ', '.join(map(repr, others)),
            )

    def _create(self, statements, first_table):
        """Run ``statements`` unless ``first_table`` exists; the other prefixes' tables
        when it did not."""
        conn = self._connect()
        try:
            with conn.transaction():
                lock = int.from_bytes(
                    hashlib.sha1(self.table_prefix.encode()).digest()[:8], 'big', signed=True
                )
                conn.execute('select pg_advisory_xact_lock(%s)', (lock,))
                existed = conn.execute('select to_regclass(%s)', (first_table,)).fetchone()[0]
                for statement in statements:
                    conn.execute(statement)
                return [] if existed else self._other_prefixes(conn)
        finally:
            conn.close()

    def _ensure_own_tables(self):
        if not self._own_tables_ready:
            names = [
                self.table_dead_letter,
                self.table_inflight,
                self.table_redelivery,
                self.table_heartbeat,
            ]
            present = self.conn.execute(
                'select count(to_regclass(name)) from unnest(%s::text[]) as name', (names,)
            ).fetchone()[0]
            if present != len(names):
                self._create(_own_ddl(self.table_prefix), self.table_inflight)
            self._own_tables_ready = True

    # Queue -------------------------------------------------------------------------------

    def enqueue(self, data, priority=None):
        self._run('enqueue', (self.name, data, priority or 0, self.channel))

    def enqueue_many(self, items):
        """Enqueue ``(data, priority)`` pairs in order: one statement per 10,000."""
        items = list(items)
        for i in range(0, len(items), _CHUNK):
            chunk = items[i : i + _CHUNK]
            self._run(
                'enqueue_many',
                (
                    self.name,
                    [data for data, _ in chunk],
                    [priority or 0 for _, priority in chunk],
                    self.channel,
                ),
            )

    def _pop(self):
        row = self._run('dequeue', (self.name,), binary=True).fetchone()
        return None if row is None else row[0]

    def dequeue(self):
        """The next message, or None; with ``blocking`` waits up to ``read_timeout`` for
        one when the queue is empty."""
        return self._wait_using(self._pop, self.read_timeout if self.blocking else 0)

    def dequeue_wait(self, timeout):
        """Dequeue, waiting up to ``timeout`` seconds for an enqueue's notification."""
        return self._wait_using(self._pop, timeout)

    def _wait_using(self, pop, timeout):
        if timeout is not None and not (
            isinstance(timeout, (int, float)) and 0 <= timeout < math.inf  # NaN fails
        ):
            _check_timeout('timeout', timeout)
        found = pop()
        if found is not None or not timeout:
            return found
        deadline = time.monotonic() + timeout
        listener = self._listener
        if listener is None or listener.pid != os.getpid():
            with self._open_lock:
                listener = self._listener
                if listener is None or listener.pid != os.getpid():
                    listener = self._listener = _Listener()
        while True:
            # Waited for the turn: what woke the previous holder may have been a burst.
            look = not listener.turn.acquire(blocking=False)
            if look and not listener.turn.acquire(timeout=max(deadline - time.monotonic(), 0)):
                return None
            try:
                conn, listened = self._listening_connection(listener)
                if look or listened:
                    # Notifications start with LISTEN: look again once it is in place.
                    found = pop()
                    if found is not None:
                        return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                notified = False
                # Drains every notification already received (the connection keeps those
                # that arrived while no thread waited) or waits for the next one.
                for _ in conn.notifies(timeout=remaining, stop_after=1):
                    notified = True
                if not notified:
                    return None
            finally:
                listener.turn.release()
            found = pop()
            if found is not None:
                return found  # Otherwise another consumer took it: wait again.

    def queue_size(self):
        return self._scalar('queue_size', (self.name,))

    def enqueued_items(self, limit=None):
        return [data for (data,) in self._rows('enqueued_items', (self.name, limit), True)]

    def flush_queue(self):
        self._run('flush_queue', (self.name,))

    # Schedule ----------------------------------------------------------------------------

    def add_to_schedule(self, data, ts):
        self._run('add_to_schedule', (self.name, data, ts.timestamp()))

    def read_schedule(self, ts):
        rows = self._rows('read_schedule', (self.name, ts.timestamp()), binary=True)
        rows.sort(key=lambda row: (row[0], row[1]))
        return [data for _, _, data in rows]

    def move_due_to_queue(self, ts, on_due=None):
        """Move every scheduled message due at ``ts`` into the queue in one transaction
        (a crash before the commit leaves them all scheduled); returns the moved messages,
        soonest first. ``on_due(data)`` is called for each before any worker can dequeue
        it and gives its priority; the rows are locked (another scheduler skips them), so
        it is called once per message."""
        with self._transaction() as conn:
            rows = conn.execute(
                self._sql['read_schedule'], (self.name, ts.timestamp()), binary=True
            ).fetchall()
            rows.sort(key=lambda row: (row[0], row[1]))
            moved = [data for _, _, data in rows]
            if moved:
                priorities = [(on_due(data) if on_due else 0) or 0 for data in moved]
                conn.execute(self._sql['move_due'], (self.name, moved, priorities))
                conn.execute(self._sql['notify'], (self.channel,))
        return moved

    def schedule_size(self):
        return self._scalar('schedule_size', (self.name,))

    def scheduled_items(self, limit=None):
        return [data for (data,) in self._rows('scheduled_items', (self.name, limit), True)]

    def flush_schedule(self):
        self._run('flush_schedule', (self.name,))

    # Results -----------------------------------------------------------------------------

    @staticmethod
    def _key(key):
        return key.decode('utf-8') if isinstance(key, bytes) else key

    def put_data(self, key, value, is_result=False):
        self._run('put_data', (self.name, self._key(key), value))

    def delete_and_put(self, delete_key, key, value, is_result=False):
        delete_key, key = self._key(delete_key), self._key(key)
        if delete_key == key:
            self._run('put_data', (self.name, key, value))
        else:
            self._run('delete_and_put', (self.name, delete_key, self.name, key, value))

    def peek_data(self, key):
        row = self._run('peek_data', (self.name, self._key(key)), binary=True).fetchone()
        return EmptyData if row is None else row[0]

    def peek_many(self, keys):
        keys = [self._key(key) for key in keys]
        if not keys:
            return {}
        return dict(self._rows('peek_many', (self.name, keys), binary=True))

    def pop_data(self, key):
        row = self._run('pop_data', (self.name, self._key(key)), binary=True).fetchone()
        return EmptyData if row is None else row[0]

    def delete_data(self, key):
        return self._run('delete_data', (self.name, self._key(key))).rowcount > 0

    def has_data_for_key(self, key):
        return self._run('has_data', (self.name, self._key(key))).fetchone() is not None

    def put_if_empty(self, key, value, ttl=None):
        if ttl is not None:
            raise NotImplementedError('ttl is not supported by this storage.')
        return self._run('put_if_empty', (self.name, self._key(key), value)).rowcount == 1

    def result_store_size(self):
        return self._scalar('result_store_size', (self.name,))

    def result_items(self):
        return dict(self._rows('result_items', (self.name,), binary=True))

    def flush_results(self):
        self._run('flush_results', (self.name,))

    # Counters ----------------------------------------------------------------------------

    def incr(self, key, amount=1):
        return self._scalar('incr', (self.name, self._key(key), amount))

    def delete_counter(self, key):
        self._run('delete_counter', (self.name, self._key(key)))

    def flush_counters(self):
        self._run('flush_counters', (self.name,))

    # Dead letters ------------------------------------------------------------------------

    @staticmethod
    def _letter(row):
        id, data, reason, when, deliveries = row
        reason = bytes(reason).decode('utf-8', 'surrogatepass')
        return dead_letter(str(id), bytes(data), reason, when, deliveries)

    @staticmethod
    def _reason(reason):
        return str(reason).encode('utf-8', 'surrogatepass')

    def put_dead_letter(self, data, reason, deliveries=1):
        self._ensure_own_tables()
        row = self._run(
            'put_dead_letter',
            (self.name, data, self._reason(reason), time.time(), int(deliveries)),
        ).fetchone()
        return str(row[0])

    def dead_letters(self, limit=None):
        self._ensure_own_tables()
        rows = self._rows('dead_letters', (self.name, check_limit(limit)), binary=True)
        return [self._letter(row) for row in rows]

    def pop_dead_letter(self, id):
        self._ensure_own_tables()
        try:
            number = int(id)
        except (TypeError, ValueError):
            return None
        if not -(2**63) <= number < 2**63:
            return None
        row = self._run('pop_dead_letter', (self.name, number), binary=True).fetchone()
        return None if row is None else self._letter(row)

    def flush_dead_letters(self):
        self._ensure_own_tables()
        self._run('flush_dead_letters', (self.name,))

    def dead_letter_count(self):
        self._ensure_own_tables()
        return self._scalar('dead_letter_count', (self.name,))

    # Reliable delivery (opt-in, ``Huey(reliable=True)``) -----------------------------------

    def dequeue_reliable(self, consumer, token, lease, timeout=None):
        """Move the next message into ``{p}_rs_inflight`` under ``token`` (one statement);
        returns ``(data, deliveries)`` or None. ``timeout`` waits as ``dequeue_wait``. The
        row keeps the deliveries charged so far until ``mark_started``."""
        _check_lease(lease)
        self._ensure_own_tables()
        params = {'queue': self.name, 'token': token, 'consumer': consumer, 'lease': lease}

        def pop():
            row = self._run('dequeue_reliable', params, binary=True).fetchone()
            return None if row is None else (row[0], row[1])

        return self._wait_using(pop, timeout)

    def mark_started(self, token):
        """Charge the in-flight entry ``token`` its delivery; False when it is gone."""
        self._ensure_own_tables()
        return self._run('mark_started', (self.name, token)).rowcount > 0

    def renew_leases(self, tokens, lease):
        """Extend the lease of every in-flight entry in ``tokens`` (one statement); returns
        how many are still in flight."""
        _check_lease(lease)
        self._ensure_own_tables()
        tokens = list(tokens)
        if not tokens:
            return 0
        return self._run('renew_leases', (lease, self.name, tokens)).rowcount

    def ack(self, token):
        """Remove the in-flight entry ``token``; False when it is no longer there (it was
        recovered after its lease expired)."""
        self._ensure_own_tables()
        return self._run('ack', (self.name, token)).rowcount > 0

    def recover_expired(self, max_deliveries, now=None):
        """In one transaction, put every in-flight entry whose lease expired back in the
        queue, except those delivered ``max_deliveries`` times already: those move into the
        dead-letter queue, returned as ``[(data, deliveries, letter_id)]``. ``now`` (unix
        seconds) defaults to the server's clock."""
        self._ensure_own_tables()
        dead = []
        requeued = 0
        with self._transaction() as conn:
            rows = conn.execute(self._sql['expired'], (self.name, now), binary=True).fetchall()
            for data, priority, deliveries in rows:
                if deliveries >= max_deliveries:
                    letter_id = conn.execute(
                        self._sql['put_dead_letter'],
                        (
                            self.name,
                            data,
                            self._reason(over_cap_reason(deliveries, max_deliveries)),
                            time.time(),
                            deliveries,
                        ),
                    ).fetchone()[0]
                    dead.append((data, deliveries, str(letter_id)))
                    continue
                conn.execute(
                    self._sql['requeue'],
                    {
                        'queue': self.name,
                        'data': data,
                        'priority': priority,
                        'deliveries': deliveries,
                    },
                )
                requeued += 1
            if requeued:
                conn.execute(self._sql['notify'], (self.channel,))
        return requeued, dead

    def inflight_items(self):
        """``[(token, consumer, deliveries, lease_until, data)]`` for this queue."""
        self._ensure_own_tables()
        return self._rows('inflight_items', (self.name,), binary=True)

    # Heartbeats (operators' view, see BaseStorage): one row per consumer in
    # {p}_rs_heartbeat, created with huey-rs's other tables on the first write; reading
    # before then finds none and creates nothing.

    def put_heartbeat(self, consumer, data):
        self._ensure_own_tables()
        self.conn.execute(
            f'insert into {self.table_heartbeat} (queue, consumer, data) values (%s, %s, %s) '
            'on conflict (queue, consumer) do update set data = excluded.data',
            (self.name, consumer, bytes(data)),
        )

    def heartbeats(self):
        try:
            rows = self.conn.execute(
                f'select consumer, data from {self.table_heartbeat} where queue = %s',
                (self.name,),
                binary=True,
            ).fetchall()
        except _psycopg.errors.UndefinedTable:
            return {}
        return {consumer: bytes(data) for consumer, data in rows}

    def delete_heartbeat(self, consumer):
        try:
            self.conn.execute(
                f'delete from {self.table_heartbeat} where queue = %s and consumer = %s',
                (self.name, consumer),
            )
        except _psycopg.errors.UndefinedTable:
            pass
