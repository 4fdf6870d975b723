"""SQL storages that need an optional database driver: CySqliteStorage and PostgresStorage,
and BaseSqlStorage, the connection/transaction helper huey 3.5.4 builds them on.

huey-rs does not implement these two backends yet. The names import as in huey, so code that
mentions them keeps importing; constructing one raises ``ConfigurationError``: naming the
package to install when the driver is missing (huey's message), or saying the backend is not
available in huey-rs when it is installed. ``BaseSqlStorage`` works for custom storages.
"""

import contextlib
import importlib.util
import threading

from huey.exceptions import ConfigurationError
from huey.storage.base import BaseStorage
from huey.storage.sqlite import SqliteStorage

# huey 3.5.4 exposes the driver modules here (or None when missing), and callers test
# ``huey.storage.cysqlite is not None`` before using the backend. huey-rs can use neither.
cysqlite = None
psycopg = None


class BaseSqlStorage(BaseStorage):
    """One shared DB-API connection, opened lazily by ``_create_connection`` and guarded by
    a lock; ``db()`` yields a cursor (optionally inside a transaction), ``sql()`` runs one
    statement, and the statements in ``ddl`` run at start-up unless ``create_tables=False``.
    """

    begin_sql = 'begin'
    ddl = []

    def __init__(self, *args, **kwargs):
        create_tables = kwargs.pop('create_tables', True)
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self._conn = None
        if create_tables:
            self.initialize_schema()

    def _create_connection(self):
        raise NotImplementedError

    @property
    def conn(self):
        if self._conn is None:
            self._conn = self._create_connection()
        return self._conn

    def close(self):
        with self.lock:
            if self._conn is None:
                return False
            self._conn.close()
            self._conn = None
        return True

    @contextlib.contextmanager
    def db(self, commit=False, close=False):
        with self.lock:
            conn = self.conn
            cursor = conn.cursor()
            try:
                if commit:
                    cursor.execute(self.begin_sql)
                yield cursor
            except Exception:
                if commit:
                    conn.rollback()
                raise
            else:
                if commit:
                    conn.commit()
            finally:
                cursor.close()
                if close:
                    conn.close()
                    self._conn = None

    def initialize_schema(self):
        with self.db(commit=True, close=True) as cursor:
            for statement in self.ddl:
                cursor.execute(statement)

    def sql(self, query, params=None, commit=False, results=False):
        with self.db(commit=commit) as cursor:
            cursor.execute(query, params or ())
            if results:
                return cursor.fetchall()
            return None


def _unavailable(backend, package, missing_message):
    if importlib.util.find_spec(package) is None:
        raise ConfigurationError(missing_message)
    raise ConfigurationError(f'{backend} is not available in huey-rs yet; use SqliteStorage, '
                             'a Redis storage or FileStorage.')


class CySqliteStorage(SqliteStorage):
    def __init__(self, name='huey', filename='huey.db', pragmas=None, timeout=5,
                 strict_fifo=False, create_tables=True, **kwargs):
        _unavailable('CySqliteStorage', 'cysqlite',
                     '"cysqlite" not found. Run "pip install cysqlite" to install.')


class PostgresStorage(BaseSqlStorage):
    def __init__(self, name='huey', dsn=None, connection=None, blocking=True, read_timeout=1,
                 table_prefix='huey', create_tables=True, **connection_params):
        _unavailable('PostgresStorage', 'psycopg',
                     '"psycopg" (version 3.2 or newer) not found, cannot use Postgres storage '
                     'backend. Run "pip install psycopg" to install.')
