"""Every name users import from huey 3.5.4's modules imports from huey-rs too.

The lists were taken from huey 3.5.4 by introspection (public attributes of each module),
leaving out what no user imports from there: other packages' names a module happens to import
(redis-py, gevent, functools, ...), loggers, regexes and Lua script texts. djhuey needs Django
configured, so it is checked in a subprocess.
"""

import subprocess
import sys
import textwrap

import pytest

NAMES = {
    'huey': [
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
        'SKIPPED',
        'SqliteHuey',
        'chord',
        'crontab',
        'group',
    ],
    'huey.api': [
        'BlackHoleHuey',
        'BlackHoleStorage',
        'CancelExecution',
        'ChordConfig',
        'ChordResult',
        'ConfigurationError',
        'Consumer',
        'CySqliteHuey',
        'CySqliteStorage',
        'EmptyData',
        'Error',
        'FileHuey',
        'FileStorage',
        'Huey',
        'MemoryHuey',
        'MemoryStorage',
        'PeriodicTask',
        'PostgresHuey',
        'PostgresStorage',
        'PriorityRedisExpireHuey',
        'PriorityRedisExpireStorage',
        'PriorityRedisHuey',
        'PriorityRedisStorage',
        'RETRYING_EXCEPTIONS',
        'RateLimit',
        'RateLimitExceeded',
        'RedisExpireHuey',
        'RedisExpireStorage',
        'RedisHuey',
        'RedisStorage',
        'Registry',
        'Result',
        'ResultGroup',
        'ResultTimeout',
        'RetryTask',
        'SKIPPED',
        'Serializer',
        'SqliteHuey',
        'SqliteStorage',
        'Task',
        'TaskException',
        'TaskLock',
        'TaskLockedException',
        'TaskTimeout',
        'TaskWrapper',
        'chord',
        'crontab',
        'group',
        'noop_context',
        'normalize_expire_time',
        'normalize_time',
    ],
    'huey.storage': [
        'BaseSqlStorage',
        'BaseStorage',
        'BlackHoleStorage',
        'CySqliteStorage',
        'EmptyData',
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
    ],
    'huey.consumer': [
        'BaseProcess',
        'ConfigurationError',
        'Consumer',
        'ConsumerStopped',
        'Environment',
        'ForkSafeFlag',
        'GreenletEnvironment',
        'ProcessEnvironment',
        'Scheduler',
        'TaskTimeout',
        'ThreadEnvironment',
        'WORKER_GREENLET',
        'WORKER_PROCESS',
        'WORKER_THREAD',
        'WORKER_TO_ENVIRONMENT',
        'WORKER_TYPES',
        'Worker',
        'WorkerRecycle',
        'noop_context',
    ],
    'huey.consumer_options': [
        'ConsumerConfig',
        'OptionParserHandler',
        'WORKER_THREAD',
        'WORKER_TYPES',
        'config_defaults',
        'config_keys',
        'option',
    ],
    'huey.bin.huey_consumer': [
        'ConsumerConfig',
        'OptionParserHandler',
        'consumer_main',
        'err',
        'load_huey',
    ],
    'huey.signals': [
        'SIGNAL_CANCELED',
        'SIGNAL_COMPLETE',
        'SIGNAL_ENQUEUED',
        'SIGNAL_ERROR',
        'SIGNAL_EXECUTING',
        'SIGNAL_EXPIRED',
        'SIGNAL_INTERRUPTED',
        'SIGNAL_LOCKED',
        'SIGNAL_RATE_LIMITED',
        'SIGNAL_RETRYING',
        'SIGNAL_REVOKED',
        'SIGNAL_SCHEDULED',
        'SIGNAL_TIMEOUT',
        'Signal',
    ],
    'huey.exceptions': [
        'CancelExecution',
        'ConfigurationError',
        'HueyException',
        'RETRYING_EXCEPTIONS',
        'RateLimitExceeded',
        'ResultTimeout',
        'RetryTask',
        'TaskException',
        'TaskLockedException',
        'TaskTimeout',
    ],
    'huey.serializer': ['Serializer', 'SignedSerializer', 'encode', 'is_compressed'],
    'huey.registry': ['ChordConfig', 'HueyException', 'Message', 'Registry'],
    'huey.utils': [
        'ChordConfig',
        'Error',
        'FileLock',
        'SKIPPED',
        'aware_to_utc',
        'encode',
        'is_naive',
        'load_class',
        'local_to_utc',
        'make_naive',
        'noop_context',
        'normalize_expire_time',
        'normalize_time',
        'utcnow',
    ],
    'huey.constants': [
        'EmptyData',
        'WORKER_GREENLET',
        'WORKER_PROCESS',
        'WORKER_THREAD',
        'WORKER_TYPES',
    ],
    'huey.contrib.asyncio': ['aget_result', 'aget_result_group'],
    'huey.contrib.helpers': ['RedisSemaphore', 'lock_task_semaphore'],
    'huey.contrib.mini': ['MiniHuey', 'MiniHueyResult', 'crontab'],
}

DJHUEY_NAMES = [
    'HUEY',
    'close_db',
    'config_error',
    'configuration_message',
    'db_periodic_task',
    'db_task',
    'default_backend_path',
    'default_queue_name',
    'disconnect_signal',
    'enqueue',
    'get_backend',
    'is_revoked',
    'lock_task',
    'on_commit_task',
    'on_shutdown',
    'on_startup',
    'periodic_task',
    'post_execute',
    'pre_execute',
    'restore',
    'restore_all',
    'restore_by_id',
    'result',
    'revoke',
    'revoke_all',
    'revoke_by_id',
    'scheduled',
    'signal',
    'task',
]


def cases():
    for module, names in NAMES.items():
        for name in names:
            yield pytest.param(module, name, id=f'{module}.{name}')


@pytest.mark.parametrize('module, name', list(cases()))
def test_name_imports(module, name):
    namespace = {}
    exec(f'from {module} import {name}', namespace)
    # The driver modules are None where they are not installed (as in huey).
    assert namespace[name] is not None or name in ('cysqlite', 'psycopg')


def test_reexports_are_the_same_objects():
    import huey
    import huey.api
    import huey.storage

    for name in NAMES['huey']:
        if hasattr(huey, name):
            assert getattr(huey, name) is getattr(huey.api, name), name
    for name in NAMES['huey.storage']:
        if hasattr(huey.storage, name) and hasattr(huey.api, name):
            assert getattr(huey.storage, name) is getattr(huey.api, name), name


# The optional backends without their driver (each test dependency installs it):
# test_contrib_optional_packages.py hides cysqlite, test_storage_postgres.py hides psycopg.


def test_djhuey_names_import():
    pytest.importorskip('django')
    script = textwrap.dedent(f"""
        import django
        from django.conf import settings
        from huey import MemoryHuey
        settings.configure(HUEY=MemoryHuey('imports'), DATABASES={{}})
        django.setup()
        from huey.contrib.djhuey import {', '.join(DJHUEY_NAMES)}
        from huey.contrib.djhuey.management.commands.run_huey import Command
        from huey.contrib.djhuey.management.commands.create_huey_tables import Command
        print('ok')
    """)
    done = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'ok'
