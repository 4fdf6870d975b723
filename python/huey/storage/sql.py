"""BaseSqlStorage, the connection/transaction helper huey 3.5.4 builds its SQL storages on,
and CySqliteStorage, which needs the optional ``cysqlite`` driver. (PostgresStorage lives in
``huey.storage.postgres``.)

CySqliteStorage is SqliteStorage (same tables, statements, wake-ups and reliable mode) with
its connections opened by the ``cysqlite`` driver instead of the standard library's
``sqlite3``: the two drivers share one SQL layer, and their databases are interchangeable.
``BaseSqlStorage`` works for custom storages.
"""

import contextlib
import threading

from huey.exceptions import ConfigurationError
from huey.storage.base import BaseStorage
from huey.storage.sqlite import SqliteBusyError, SqliteStorage

# huey 3.5.4 exposes the driver module here (or None when missing), and callers test
# ``huey.storage.cysqlite is not None`` before using the backend.
try:
    import cysqlite
except ImportError:
    cysqlite = None


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


if cysqlite is not None:

    class CySqliteBusyError(SqliteBusyError, cysqlite.DatabaseLockedError):
        """SqliteBusyError raised by CySqliteStorage: also a ``cysqlite.OperationalError``."""


class CySqliteStorage(SqliteStorage):
    """SqliteStorage on the ``cysqlite`` driver (``pip install huey-rs[cysqlite]``).

    As in huey 3.5.4, ``pragmas`` is a dict of pragmas cysqlite applies to each new
    connection, and ``journal_mode`` may be given there or as a keyword. ``cache_mb`` and
    ``fsync`` mean what they mean for SqliteStorage and, when given, override the
    ``cache_size`` and ``synchronous`` pragmas; when neither names them, SqliteStorage's
    defaults apply (8 MB cache, ``synchronous=NORMAL``). Other keyword arguments go to
    ``cysqlite.connect``.
    """

    if cysqlite is not None:
        operational_error = cysqlite.OperationalError
        integrity_error = cysqlite.IntegrityError
        busy_error = CySqliteBusyError
        has_returning = cysqlite.sqlite_version_info >= (3, 35, 0)

    def __init__(
        self,
        name='huey',
        filename='huey.db',
        pragmas=None,
        timeout=5,
        strict_fifo=False,
        create_tables=True,
        **kwargs,
    ):
        if cysqlite is None:
            raise ConfigurationError(
                '"cysqlite" not found. Run "pip install cysqlite" to install.'
            )
        pragmas = dict(pragmas or {})
        journal_mode = kwargs.pop('journal_mode', pragmas.pop('journal_mode', 'wal'))
        cache_mb = kwargs.pop('cache_mb', None if 'cache_size' in pragmas else 8)
        fsync = kwargs.pop('fsync', None if 'synchronous' in pragmas else False)
        self.pragmas = pragmas
        super().__init__(
            name,
            filename,
            cache_mb=cache_mb,
            fsync=fsync,
            journal_mode=journal_mode,
            timeout=timeout,
            strict_fifo=strict_fifo,
            create_tables=create_tables,
            **kwargs,
        )

    def _connect(self):
        # cysqlite connections are in autocommit mode unless a transaction is begun.
        return cysqlite.connect(
            self.filename, timeout=self._timeout, pragmas=self.pragmas, **self._conn_kwargs
        )
