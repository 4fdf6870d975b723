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

huey-rs's own tables (dead letters, reliable delivery, heartbeats) are described in
``huey.storage.postgres_reliable``; the connections and the LISTEN wait in
``huey.storage.postgres_connection``; the statement text is in ``huey.storage.postgres_sql``.
"""

import contextlib
import hashlib
import logging
import re
import threading

from huey.constants import EmptyData
from huey.exceptions import ConfigurationError
from huey.storage.base import check_batch, in_dequeue_order
from huey.storage.postgres_connection import (
    MISSING_PSYCOPG,
    PostgresConnections,
    _check_timeout,
    _thread_connection,
    driver,
)
from huey.storage.postgres_reliable import PostgresReliableDelivery
from huey.storage.postgres_sql import huey_ddl, statements
from huey.storage.sql import BaseSqlStorage

logger = logging.getLogger('huey.storage.postgres')

# Rows per statement where a list is sent as an array parameter.
_CHUNK = 10_000


def __getattr__(name):
    if name == 'psycopg':  # huey 3.5.4's ``huey.storage.psycopg``: the module or None
        return driver()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def _channel(prefix, name):
    """huey 3.5.4's notification channel for queue ``name``."""
    channel = f'{prefix}.q.{name}'
    if len(channel.encode('utf-8')) > 63:  # pg_notify() refuses longer channel names
        channel = 'huey.q.' + hashlib.md5(channel.encode('utf-8')).hexdigest()
    return channel


class PostgresStorage(PostgresConnections, PostgresReliableDelivery, BaseSqlStorage):
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
    batch_dequeue = True  # dequeue_many: one DELETE ... RETURNING

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
        self.ddl = huey_ddl(prefix)
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
        self._sql = statements(self.table_prefix)

    # Statements --------------------------------------------------------------------------

    def _run(self, name, params, binary=False):
        """Run the named statement on this thread's connection; its cursor."""
        try:
            return self.conn.execute(self._sql[name], params, binary=binary)
        except driver().errors.UndefinedTable as exc:
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
        except driver().errors.UndefinedTable as exc:
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
        """Run ``statements`` (``create ... if not exists``); returns the other prefixes'
        tables when ``first_table`` did not exist. The advisory lock serializes huey-rs
        processes only: a huey 3.5.4 process creating the same table at the same moment
        makes PostgreSQL report a duplicate, and the next attempt finds the table there."""
        errors = driver().errors
        duplicate = (errors.UniqueViolation, errors.DuplicateTable, errors.DuplicateObject)
        for attempt in range(5):
            try:
                return self._create_once(statements, first_table)
            except duplicate:
                if attempt == 4:
                    raise

    def _create_once(self, statements, first_table):
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

    def _pop(self, n):
        """The next ``n`` messages in dequeue order, deleted by one statement; None if none."""
        return in_dequeue_order(self._run('dequeue', (self.name, n), binary=True).fetchall())

    def dequeue(self):
        """The next message, or None; with ``blocking`` waits up to ``read_timeout`` for
        one when the queue is empty."""
        batch = self.dequeue_many(1)
        return batch[0] if batch else None

    def dequeue_many(self, n, timeout=None):
        """Up to ``n`` messages with one statement; when the queue is empty, waits as
        ``dequeue()`` does, or as ``dequeue_wait(timeout)`` when ``timeout`` is given."""
        check_batch(n)
        if timeout is None:
            timeout = self.read_timeout if self.blocking else 0
        return self._wait_using(lambda: self._pop(n), timeout) or []

    def dequeue_wait(self, timeout):
        """Dequeue, waiting up to ``timeout`` seconds for an enqueue's notification."""
        batch = self._wait_using(lambda: self._pop(1), timeout)
        return batch[0] if batch else None

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
