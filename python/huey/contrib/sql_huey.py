"""SqlHuey and SqlStorage: the queue in any database peewee can talk to.

``SqlHuey(name, database=...)`` takes a peewee ``Database`` (Sqlite, Postgresql, MySQL, a
pooled database, ...) or a database URL (``sqlite:///path/huey.db``,
``postgresql://user:password@host/db``, as understood by ``playhouse.db_url``). Install it
with ``pip install huey-rs[peewee]`` (plus the database's own driver).

The tables are huey 3.5.4's, so huey 3.5.4 and huey-rs processes share one database. Every
table holds the rows of many queues, told apart by ``queue`` (the storage name)::

    task(id auto primary key, queue varchar, data blob, priority float)
        index task_priority_id (priority desc, id); dequeue order: priority desc, then id
    schedule(id auto primary key, queue varchar, data blob, timestamp integer)
        index schedule_queue_timestamp (queue, timestamp); timestamp in milliseconds
    kv(queue varchar, key varchar, value blob, primary key (queue, key))  results, locks
    counter(queue varchar, key varchar, value integer, primary key (queue, key))
    dead_letter(id auto primary key, queue text, data blob, reason text, time float,
                deliveries integer)              huey-rs's own: undecodable messages

A dequeue is one transaction: on Postgres (and MySQL 8 / MariaDB 10.6) the row is picked
with ``FOR UPDATE SKIP LOCKED`` so consumers never wait on each other; on Sqlite the
transaction starts with ``BEGIN IMMEDIATE`` (the database's write lock, waited for up to
the database's busy timeout).
"""

import itertools
import time

from huey.api import Huey
from huey.constants import EmptyData
from huey.exceptions import ConfigurationError
from huey.storage.base import BaseStorage, check_limit, dead_letter

try:
    import peewee
    from playhouse.db_url import connect as connect_url
except ImportError as exc:  # pragma: no cover - the import error names the package.
    raise ImportError(
        'huey.contrib.sql_huey needs peewee: run "pip install huey-rs[peewee]" '
        '(or "pip install peewee") to install it.'
    ) from exc

# Bound parameters per statement stay below sqlite's historical limit of 999.
_CHUNK = 500


class _Bytes(peewee.BlobField):
    """A blob column read back as ``bytes`` (Postgres drivers hand out memoryviews)."""

    def python_value(self, value):
        if value is None or isinstance(value, bytes):
            return value
        return bytes(value)


def _chunks(items, size=_CHUNK):
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class SqlStorage(BaseStorage):
    """huey's storage on a peewee database (see the module docstring for the tables)."""

    priority = True

    def __init__(self, name='huey', database=None, create_tables=True, **kwargs):
        super().__init__(name)
        if database is None:
            raise ConfigurationError(
                'SqlStorage needs a database= argument: a peewee Database, or a database '
                'URL such as "sqlite:///huey.db" or "postgresql://user@host/dbname".'
            )
        if isinstance(database, peewee.Database):
            self.database = database
        elif isinstance(database, str):
            try:
                self.database = connect_url(database)
            except (KeyError, ValueError, RuntimeError) as exc:  # RuntimeError: unknown scheme
                raise ConfigurationError(
                    f'SqlStorage could not use the database URL {database!r}: {exc}'
                ) from exc
        else:
            raise ConfigurationError(
                f'SqlStorage database= must be a peewee Database or a URL string, got '
                f'{type(database).__name__}'
            )
        self.KV, self.Schedule, self.Task, self.Counter, self.DeadLetter = self.create_models()
        self._is_sqlite = isinstance(self.database, peewee.SqliteDatabase)
        self._is_mysql = isinstance(self.database, peewee.MySQLDatabase)
        self.for_update = self._row_lock_clause()
        if create_tables:
            self.create_tables()

    # Schema ------------------------------------------------------------------------------

    def create_models(self):
        """The peewee models of the tables, bound to this storage's database."""

        class Base(peewee.Model):
            class Meta:
                database = self.database

        class KV(Base):
            queue = peewee.CharField()
            key = peewee.CharField()
            value = _Bytes()

            class Meta:
                table_name = 'kv'
                primary_key = peewee.CompositeKey('queue', 'key')

        class Schedule(Base):
            queue = peewee.CharField()
            data = _Bytes()
            timestamp = peewee.TimestampField(resolution=1000)

            class Meta:
                table_name = 'schedule'
                indexes = ((('queue', 'timestamp'), False),)

        class Task(Base):
            queue = peewee.CharField()
            data = _Bytes()
            priority = peewee.FloatField(default=0.0)

            class Meta:
                table_name = 'task'

        Task.add_index(Task.priority.desc(), Task.id)

        class Counter(Base):
            queue = peewee.CharField()
            key = peewee.CharField()
            value = peewee.IntegerField()

            class Meta:
                table_name = 'counter'
                primary_key = peewee.CompositeKey('queue', 'key')

        class DeadLetter(Base):
            queue = peewee.TextField()
            data = _Bytes()
            reason = peewee.TextField()
            time = peewee.DoubleField()
            deliveries = peewee.IntegerField(default=1)

            class Meta:
                table_name = 'dead_letter'

        return KV, Schedule, Task, Counter, DeadLetter

    @property
    def models(self):
        return [self.KV, self.Schedule, self.Task, self.Counter, self.DeadLetter]

    def create_tables(self):
        self._with_connection(self.database.create_tables, self.models, safe=True)

    def initialize_schema(self):
        """Create the tables (what ``manage.py create_huey_tables`` calls)."""
        self.create_tables()

    def drop_tables(self):
        self._with_connection(self.database.drop_tables, self.models, safe=True)

    def _with_connection(self, fn, *args, **kwargs):
        # A connection opened only for this is closed again, so that a process forked
        # afterwards (consumer workers) does not inherit it.
        was_closed = self.database.is_closed()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_closed and not self.database.in_transaction():
                self.database.close()

    def _row_lock_clause(self):
        if isinstance(self.database, peewee.PostgresqlDatabase):
            return 'FOR UPDATE SKIP LOCKED'
        if self._is_mysql:
            # SKIP LOCKED arrived in MySQL 8.0.1 and MariaDB 10.6.
            (banner,) = self.database.execute_sql('select version()').fetchone()
            version = self.database.server_version or ()
            needed = (10, 6) if 'mariadb' in str(banner).lower() else (8, 0, 1)
            return 'FOR UPDATE SKIP LOCKED' if tuple(version) >= needed else 'FOR UPDATE'
        return None  # Sqlite: the transaction holds the whole database's write lock.

    # Connections -------------------------------------------------------------------------

    def close(self):
        closed = self.database.close()
        # A pooled database keeps idle connections, which forked workers must not share.
        close_idle = getattr(self.database, 'close_idle', None)
        if close_idle is not None:
            close_idle()
        return closed

    def _ready(self):
        """Reconnect this thread when its connection was lost (a restarted server)."""
        database = self.database
        if not database.is_closed() and not database.is_connection_usable():
            database.close()

    def _write_transaction(self):
        if self._is_sqlite:
            return self.database.atomic('IMMEDIATE')
        return self.database.atomic()

    def _locked(self, query):
        return query.for_update(self.for_update) if self.for_update else query

    def _mine(self, model):
        return model.queue == self.name

    # Queue -------------------------------------------------------------------------------

    def enqueue(self, data, priority=None):
        self._ready()
        self.Task.insert(queue=self.name, data=data, priority=priority or 0).execute()

    def enqueue_many(self, items):
        """Enqueue ``(data, priority)`` pairs in order, a few hundred per statement."""
        self._ready()
        rows = ({'queue': self.name, 'data': d, 'priority': p or 0} for d, p in items)
        for chunk in _chunks(rows, 300):
            with self.database.atomic():
                self.Task.insert_many(chunk).execute()

    def _next_tasks(self, *columns):
        Task = self.Task
        return (
            Task.select(*columns).where(self._mine(Task)).order_by(Task.priority.desc(), Task.id)
        )

    def dequeue(self):
        self._ready()
        Task = self.Task
        with self._write_transaction():
            row = self._locked(self._next_tasks(Task.id, Task.data).limit(1)).tuples().first()
            if row is None:
                return None
            task_id, data = row
            if Task.delete().where(Task.id == task_id).execute() != 1:
                return None
        return data

    def queue_size(self):
        self._ready()
        return self.Task.select().where(self._mine(self.Task)).count()

    def enqueued_items(self, limit=None):
        self._ready()
        query = self._next_tasks(self.Task.data)
        if limit is not None:
            query = query.limit(limit)
        return [data for (data,) in query.tuples()]

    def flush_queue(self):
        self._ready()
        self.Task.delete().where(self._mine(self.Task)).execute()

    # Schedule ----------------------------------------------------------------------------

    def add_to_schedule(self, data, ts):
        self._ready()
        self.Schedule.insert(queue=self.name, data=data, timestamp=ts).execute()

    def _schedule(self, *columns):
        Schedule = self.Schedule
        return (
            Schedule.select(*columns)
            .where(self._mine(Schedule))
            .order_by(Schedule.timestamp, Schedule.id)
        )

    def read_schedule(self, ts):
        self._ready()
        Schedule = self.Schedule
        with self._write_transaction():
            query = self._schedule(Schedule.id, Schedule.data).where(Schedule.timestamp <= ts)
            rows = list(self._locked(query).tuples())
            for chunk in _chunks([row_id for row_id, _ in rows]):
                Schedule.delete().where(Schedule.id.in_(chunk)).execute()
        return [data for _, data in rows]

    def schedule_size(self):
        self._ready()
        return self.Schedule.select().where(self._mine(self.Schedule)).count()

    def scheduled_items(self, limit=None):
        self._ready()
        query = self._schedule(self.Schedule.data)
        if limit is not None:
            query = query.limit(limit)
        return [data for (data,) in query.tuples()]

    def flush_schedule(self):
        self._ready()
        self.Schedule.delete().where(self._mine(self.Schedule)).execute()

    # Results -----------------------------------------------------------------------------

    def _key(self, key):
        KV = self.KV
        return self._mine(KV) & (KV.key == key)

    def put_data(self, key, value, is_result=False):
        self._ready()
        KV = self.KV
        query = KV.insert(queue=self.name, key=key, value=value)
        if self._is_mysql:  # ON DUPLICATE KEY UPDATE names no conflict target.
            query = query.on_conflict(preserve=[KV.value])
        else:
            query = query.on_conflict(conflict_target=[KV.queue, KV.key], preserve=[KV.value])
        query.execute()

    def peek_data(self, key):
        self._ready()
        row = self.KV.select(self.KV.value).where(self._key(key)).tuples().first()
        return EmptyData if row is None else row[0]

    def peek_many(self, keys):
        self._ready()
        KV = self.KV
        found = {}
        for chunk in _chunks(keys):
            query = KV.select(KV.key, KV.value).where(self._mine(KV) & KV.key.in_(chunk))
            found.update(query.tuples())
        return found

    def pop_data(self, key):
        self._ready()
        KV = self.KV
        with self._write_transaction():
            row = self._locked(KV.select(KV.value).where(self._key(key))).tuples().first()
            if row is None or KV.delete().where(self._key(key)).execute() != 1:
                return EmptyData
        return row[0]

    def delete_data(self, key):
        self._ready()
        return self.KV.delete().where(self._key(key)).execute() > 0

    def has_data_for_key(self, key):
        self._ready()
        return self.KV.select().where(self._key(key)).exists()

    def put_if_empty(self, key, value, ttl=None):
        if ttl is not None:
            raise NotImplementedError('ttl is not supported by this storage.')
        self._ready()
        try:
            # A savepoint when inside a transaction: Postgres aborts a transaction at the
            # first failed statement.
            with self.database.atomic():
                self.KV.insert(queue=self.name, key=key, value=value).execute()
        except peewee.IntegrityError:
            return False
        return True

    def result_store_size(self):
        self._ready()
        return self.KV.select().where(self._mine(self.KV)).count()

    def result_items(self):
        self._ready()
        KV = self.KV
        return dict(KV.select(KV.key, KV.value).where(self._mine(KV)).tuples())

    def flush_results(self):
        self._ready()
        self.KV.delete().where(self._mine(self.KV)).execute()

    # Counters ----------------------------------------------------------------------------

    def incr(self, key, amount=1):
        self._ready()
        Counter = self.Counter
        query = Counter.insert(queue=self.name, key=key, value=amount)
        update = {Counter.value: Counter.value + amount}
        if self._is_mysql:
            query = query.on_conflict(update=update)
        else:
            query = query.on_conflict(conflict_target=[Counter.queue, Counter.key], update=update)
        with self.database.atomic():
            query.execute()
            (value,) = (
                Counter.select(Counter.value)
                .where(self._mine(Counter) & (Counter.key == key))
                .tuples()
                .get()
            )
        return value

    def delete_counter(self, key):
        self._ready()
        Counter = self.Counter
        Counter.delete().where(self._mine(Counter) & (Counter.key == key)).execute()

    def flush_counters(self):
        self._ready()
        self.Counter.delete().where(self._mine(self.Counter)).execute()

    # Dead letters ------------------------------------------------------------------------

    def _letters(self):
        DeadLetter = self.DeadLetter
        return (
            DeadLetter.select(
                DeadLetter.id,
                DeadLetter.data,
                DeadLetter.reason,
                DeadLetter.time,
                DeadLetter.deliveries,
            )
            .where(self._mine(DeadLetter))
            .order_by(DeadLetter.id)
        )

    @staticmethod
    def _letter(row):
        id, data, reason, when, deliveries = row
        return dead_letter(str(id), data, reason, when, deliveries)

    def put_dead_letter(self, data, reason, deliveries=1):
        self._ready()
        letter_id = self.DeadLetter.insert(
            queue=self.name,
            data=data,
            reason=str(reason),
            time=time.time(),
            deliveries=int(deliveries),
        ).execute()
        return str(letter_id)

    def dead_letters(self, limit=None):
        limit = check_limit(limit)
        self._ready()
        query = self._letters()
        if limit is not None:
            query = query.limit(limit)
        return [self._letter(row) for row in query.tuples()]

    def pop_dead_letter(self, id):
        try:
            letter_id = int(id)
        except (TypeError, ValueError):
            return None
        self._ready()
        DeadLetter = self.DeadLetter
        with self._write_transaction():
            query = self._letters().where(DeadLetter.id == letter_id)
            row = self._locked(query).tuples().first()
            if row is None or DeadLetter.delete().where(DeadLetter.id == letter_id).execute() != 1:
                return None
        return self._letter(row)

    def flush_dead_letters(self):
        self._ready()
        self.DeadLetter.delete().where(self._mine(self.DeadLetter)).execute()

    def dead_letter_count(self):
        self._ready()
        return self.DeadLetter.select().where(self._mine(self.DeadLetter)).count()


class SqlHuey(Huey):
    """A Huey whose storage is ``SqlStorage``: ``SqlHuey(name, database=...)``."""

    storage_class = SqlStorage
