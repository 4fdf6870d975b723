"""Shared by every workload: parameters in, timing, storages, one JSON line out.

A workload is run as ``python -m workloads.<family> '<json params>'`` and prints one line
``{"huey": <huey.__file__>, "metrics": [...]}``. It uses only huey's public API so the same
code drives huey-rs and huey 3.5.4.
"""

import importlib.util
import json
import os
import pickle
import statistics
import sys
import tempfile
import time


def params():
    return json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}


def metric(name, value, unit, higher_is_better=True):
    return {'name': name, 'value': value, 'unit': unit, 'higher_is_better': higher_is_better}


def emit(metrics, **check):
    """Print the result line; ``check`` holds values both packages must agree on."""
    import huey

    print(json.dumps({'huey': huey.__file__, 'metrics': metrics, 'check': check}))


def rate(fn, min_time):
    """Calls per second of ``fn()``, timed over a batch that lasts at least ``min_time``."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return n / elapsed
        n *= 10 if elapsed < min_time / 10 else 2


def percentile(samples, p):
    """The p-th percentile (0-100) by linear interpolation between closest ranks."""
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method='inclusive')[p - 1]


# Storage name -> (Huey class, keyword naming its on-disk location, file or directory name).
STORAGES = {
    'memory': ('MemoryHuey', None, None),
    'file': ('FileHuey', 'path', 'huey'),
    'sqlite': ('SqliteHuey', 'filename', 'huey.db'),
    'redis': ('RedisHuey', None, None),
    'priority-redis': ('PriorityRedisHuey', None, None),
    'postgres': ('PostgresHuey', None, None),
}

# Every table either package's PostgresStorage may create with the default prefix.
POSTGRES_TABLES = (
    'huey_task, huey_schedule, huey_kv, huey_counter, huey_rs_dead_letter, huey_rs_inflight, '
    'huey_rs_redelivery'
)


IS_HUEY_RS = importlib.util.find_spec('huey._native') is not None


def make_huey(storage, redis_url=None, pg_dsn=None, **kwargs):
    """A fresh Huey on ``storage`` (a key of STORAGES): new temp dir for files, empty Redis db,
    no huey tables in the Postgres database; ``kwargs`` go to the storage (e.g.
    ``notify_result``)."""
    import huey

    class_name, location_arg, location = STORAGES[storage]
    if location_arg:
        kwargs[location_arg] = os.path.join(tempfile.mkdtemp(prefix='huey-bench-'), location)
    if 'redis' in storage:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        kwargs['url'] = redis_url
    if storage == 'postgres':
        import psycopg

        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'drop table if exists {POSTGRES_TABLES}')
        kwargs['dsn'] = pg_dsn
    return getattr(huey, class_name)('bench', **kwargs)


def message_fields(i=0):
    return (
        f'{i:08d}-6f1c-4c1e-9a51-0c6a8e0f2b7d',
        'app.tasks.send_welcome_email',
        None,
        2,
        10,
        None,
        ('user@example.com', 42),
        {'subject': 'Welcome aboard!', 'lang': 'en-GB'},
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


def message(i=0):
    """A realistic task message: ``huey.registry.Message`` (a plain tuple if that is missing)."""
    try:
        from huey.registry import Message
    except ImportError:
        return message_fields(i)
    return Message(*message_fields(i))


def payload(i=0):
    """The same ~200 bytes in both packages, shaped like an enqueued task, distinct per ``i``."""
    return pickle.dumps(('huey.registry.Message', message_fields(i)), pickle.HIGHEST_PROTOCOL)
