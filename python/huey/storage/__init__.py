"""Storage backends. ``from huey.storage import X`` works for every storage huey ships."""

import huey._implementation  # noqa: F401  (first: fails clearly if huey's files are mixed in)
from huey.constants import EmptyData  # noqa: F401  (custom storages import it from here)
from huey.storage.base import BaseStorage, BlackHoleStorage
from huey.storage.file import FileStorage
from huey.storage.memory import MemoryStorage
from huey.storage.redis import RedisStorage
from huey.storage.redis_expire import RedisExpireStorage
from huey.storage.redis_priority import (
    PriorityRedisExpireStorage,
    PriorityRedisStorage,
    RedisPriorityQueue,
)
from huey.storage.postgres import PostgresStorage
from huey.storage.sql import BaseSqlStorage, CySqliteStorage, cysqlite
from huey.storage.sqlite import SqliteStorage

__all__ = [
    'BaseSqlStorage',
    'BaseStorage',
    'BlackHoleStorage',
    'CySqliteStorage',
    'FileStorage',
    'MemoryStorage',
    'PostgresStorage',
    'PriorityRedisExpireStorage',
    'PriorityRedisStorage',
    'RedisExpireStorage',
    'RedisPriorityQueue',
    'RedisStorage',
    'SqliteStorage',
    'cysqlite',
    'psycopg',
]


def __getattr__(name):
    # huey 3.5.4's ``huey.storage.psycopg`` (the driver module or None), imported on first
    # use: see huey.storage.postgres.driver().
    if name == 'psycopg':
        from huey.storage.postgres import driver

        return driver()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
