"""huey-rs: a drop-in replacement for the huey task queue, with its hot paths in Rust."""

__author__ = 'huey-rs developers'
__license__ = 'MIT'
__version__ = '3.5.4'  # the huey API version this package reproduces

from huey.api import (
    BlackHoleHuey,
    CySqliteHuey,
    Huey,
    MemoryHuey,
    PostgresHuey,
    PriorityRedisExpireHuey,
    PriorityRedisHuey,
    RedisExpireHuey,
    RedisHuey,
    SqliteHuey,
    chord,
    crontab,
    group,
)
from huey.exceptions import CancelExecution, RetryTask
from huey.utils import SKIPPED, Error

__all__ = [
    'SKIPPED', 'BlackHoleHuey', 'CancelExecution', 'Error', 'Huey', 'MemoryHuey', 'RetryTask',
    'chord', 'crontab', 'group',
    'SqliteHuey', 'CySqliteHuey', 'PostgresHuey', 'RedisHuey',
    'RedisExpireHuey', 'PriorityRedisHuey', 'PriorityRedisExpireHuey',
]
