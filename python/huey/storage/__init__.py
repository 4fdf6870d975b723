"""Storage backends. ``from huey.storage import X`` works for every storage huey ships."""

from huey.storage.base import BaseStorage, BlackHoleStorage
from huey.storage.memory import MemoryStorage
from huey.storage.redis import (PriorityRedisExpireStorage, PriorityRedisStorage,
                                RedisExpireStorage, RedisStorage)
from huey.storage.sqlite import SqliteStorage

__all__ = ['BaseStorage', 'BlackHoleStorage', 'MemoryStorage']
__all__ += ['SqliteStorage', 'RedisStorage', 'RedisExpireStorage', 'PriorityRedisStorage',
            'PriorityRedisExpireStorage']
