"""Storage backends. ``from huey.storage import X`` works for every storage huey ships."""

from huey.constants import EmptyData  # noqa: F401  (custom storages import it from here)
from huey.storage.base import BaseStorage, BlackHoleStorage
from huey.storage.memory import MemoryStorage
from huey.storage.redis import (PriorityRedisExpireStorage, PriorityRedisStorage,
                                RedisExpireStorage, RedisPriorityQueue, RedisStorage)
from huey.storage.sqlite import SqliteStorage
from huey.storage.sql import BaseSqlStorage, CySqliteStorage, PostgresStorage, cysqlite, psycopg

__all__ = ['BaseStorage', 'BlackHoleStorage', 'MemoryStorage']
__all__ += ['SqliteStorage', 'RedisStorage', 'RedisExpireStorage', 'PriorityRedisStorage',
            'PriorityRedisExpireStorage']
__all__ += ['BaseSqlStorage', 'CySqliteStorage', 'PostgresStorage', 'cysqlite', 'psycopg']
__all__ += ['RedisPriorityQueue']
