"""Storage backends. ``from huey.storage import X`` works for every storage huey ships."""

from huey.constants import EmptyData  # noqa: F401  (custom storages import it from here)
from huey.storage.base import BaseStorage, BlackHoleStorage
from huey.storage.file import FileStorage
from huey.storage.memory import MemoryStorage
from huey.storage.redis import (
    PriorityRedisExpireStorage,
    PriorityRedisStorage,
    RedisExpireStorage,
    RedisPriorityQueue,
    RedisStorage,
)
from huey.storage.sql import BaseSqlStorage, CySqliteStorage, PostgresStorage, cysqlite, psycopg
from huey.storage.sqlite import SqliteStorage

__all__ = [
    'BaseSqlStorage', 'BaseStorage', 'BlackHoleStorage', 'CySqliteStorage', 'FileStorage',
    'MemoryStorage', 'PostgresStorage', 'PriorityRedisExpireStorage', 'PriorityRedisStorage',
    'RedisExpireStorage', 'RedisPriorityQueue', 'RedisStorage', 'SqliteStorage', 'cysqlite',
    'psycopg',
]
