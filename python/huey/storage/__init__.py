"""Storage backends. ``from huey.storage import X`` works for every storage huey ships."""

from huey.storage.base import BaseStorage, BlackHoleStorage
from huey.storage.file import FileStorage
from huey.storage.memory import MemoryStorage
from huey.storage.optional import BaseSqlStorage, CySqliteStorage, PostgresStorage
from huey.storage.optional import cysqlite, psycopg  # noqa: F401 (huey exposes these)
from huey.storage.redis import (
    PriorityRedisExpireStorage,
    PriorityRedisStorage,
    RedisExpireStorage,
    RedisStorage,
)
from huey.storage.sqlite import SqliteStorage

__all__ = [
    'BaseSqlStorage', 'BaseStorage', 'BlackHoleStorage', 'CySqliteStorage', 'FileStorage',
    'MemoryStorage', 'PostgresStorage',
    'PriorityRedisExpireStorage', 'PriorityRedisStorage', 'RedisExpireStorage', 'RedisStorage',
    'SqliteStorage',
]
