"""huey-rs: a drop-in replacement for the huey task queue, with its hot paths in Rust."""

__author__ = 'huey-rs developers'
__license__ = 'MIT'
__version__ = '3.5.4'  # the huey API version this package reproduces

# First: importing it raises MixedInstallError if huey's files are mixed into this folder.
from huey._implementation import IMPLEMENTATION as __implementation__  # noqa: F401

from huey.api import (
    BlackHoleHuey,
    CySqliteHuey,
    FileHuey,
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
    'SKIPPED',
    'BlackHoleHuey',
    'CancelExecution',
    'CySqliteHuey',
    'Error',
    'FileHuey',
    'Huey',
    'MemoryHuey',
    'PostgresHuey',
    'PriorityRedisExpireHuey',
    'PriorityRedisHuey',
    'RedisExpireHuey',
    'RedisHuey',
    'RetryTask',
    'SqliteHuey',
    'chord',
    'crontab',
    'group',
]
