"""Storages huey 3.5.4 offers on top of optional packages, importable under the same names.

huey-rs does not implement them yet: constructing one raises ``ConfigurationError`` saying
what is missing, the same error huey raises when the package is not installed.
"""

from huey.exceptions import ConfigurationError
from huey.storage.base import BaseStorage
from huey.storage.sqlite import SqliteStorage

try:
    import cysqlite
except ImportError:
    cysqlite = None

try:
    import psycopg
except ImportError:
    psycopg = None


class BaseSqlStorage(BaseStorage):
    """Base class of huey's SQL-server storages."""


class CySqliteStorage(SqliteStorage):
    def __init__(self, *args, **kwargs):
        if cysqlite is None:
            raise ConfigurationError('"cysqlite" not found. Run "pip install cysqlite" to '
                                     'use CySqliteStorage.')
        raise ConfigurationError('CySqliteStorage is not supported by huey-rs yet; '
                                 'SqliteStorage reads and writes the same database.')


class PostgresStorage(BaseSqlStorage):
    def __init__(self, *args, **kwargs):
        if psycopg is None:
            raise ConfigurationError('"psycopg" (version 3.2 or newer) not found. Run "pip '
                                     'install psycopg" to use PostgresStorage.')
        raise ConfigurationError('PostgresStorage is not supported by huey-rs yet.')
