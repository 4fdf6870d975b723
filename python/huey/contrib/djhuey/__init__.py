"""Django integration: one Huey built from ``settings.HUEY``, and decorators for tasks that
use the Django database.

``settings.HUEY`` is either a Huey instance, or a dict::

    HUEY = {
        'name': 'my-app',                  # default: the default database's NAME
        'huey_class': 'huey.SqliteHuey',   # import path; default huey.RedisHuey
        'immediate': False,                # default: settings.DEBUG
        'connection': {'filename': '/var/lib/my-app/huey.db'},  # storage keyword arguments
        'consumer': {'workers': 4, 'worker_type': 'thread'},    # run_huey defaults
        # any other key is a Huey() keyword argument (results, utc, serializer, ...)
    }

Without ``settings.HUEY``, a RedisHuey named after the default database is used. The
consumer is ``python manage.py run_huey``; it imports every installed app's ``tasks`` module.
"""

import sys
import traceback
from functools import wraps

from django.conf import settings
from django.db import close_old_connections, transaction

from huey.utils import load_class

configuration_message = """
Configuring Huey for use with Django
====================================

With no configuration, huey uses Redis on localhost. To configure it, set
settings.HUEY to a dict, for example four worker threads on a local Redis:

HUEY = {
    'name': 'my-app',
    'connection': {'host': 'localhost', 'port': 6379},
    'consumer': {
        'workers': 4,
        'worker_type': 'thread',  # or "process" / "greenlet"
    },
}

or to a Huey instance:

from huey import RedisHuey
HUEY = RedisHuey('my-app')

The consumer logs to the logger named "huey", which Django's LOGGING setting
can configure.
"""

default_backend_path = 'huey.RedisHuey'


def default_queue_name():
    try:
        return str(settings.DATABASES['default']['NAME'])
    except (AttributeError, KeyError):
        return 'huey'


def get_backend(import_path=default_backend_path):
    return load_class(import_path)


def config_error(msg):
    print(configuration_message)
    print('\n\n')
    print(msg)
    sys.exit(1)


def _huey_from_settings(config):
    """Build the Huey instance that ``settings.HUEY`` describes."""
    if config is None:
        try:
            huey_class = get_backend(default_backend_path)
        except ImportError:
            config_error('Error: Huey could not import the redis backend. Install `redis-py`.')
        return huey_class(default_queue_name())
    if not isinstance(config, dict):
        return config  # Already a Huey instance.

    options = dict(config)
    name = options.pop('name', default_queue_name())
    class_path = options.pop('huey_class', default_backend_path)
    connection = options.pop('connection', {})
    options.pop('consumer', None)  # Only run_huey reads these.
    options.setdefault('immediate', settings.DEBUG)
    options.update(connection)
    try:
        huey_class = get_backend(class_path)
    except (ValueError, ImportError, AttributeError):
        config_error(f'Error: could not import Huey backend:\n{traceback.format_exc()}')
    return huey_class(name, **options)


HUEY = _huey_from_settings(getattr(settings, 'HUEY', None))

# Module-level shortcuts to the configured instance, as huey users import them.
task = HUEY.task
periodic_task = HUEY.periodic_task
lock_task = HUEY.lock_task

enqueue = HUEY.enqueue
restore = HUEY.restore
restore_all = HUEY.restore_all
restore_by_id = HUEY.restore_by_id
revoke = HUEY.revoke
revoke_all = HUEY.revoke_all
revoke_by_id = HUEY.revoke_by_id
is_revoked = HUEY.is_revoked
result = HUEY.result
scheduled = HUEY.scheduled

on_startup = HUEY.on_startup
on_shutdown = HUEY.on_shutdown
pre_execute = HUEY.pre_execute
post_execute = HUEY.post_execute
signal = HUEY.signal
disconnect_signal = HUEY.disconnect_signal


def close_db(fn):
    """Wrap a task so stale or broken database connections are closed before and after it
    runs in the consumer (in immediate mode the caller's connection is left alone)."""

    @wraps(fn)
    def inner(*args, **kwargs):
        if not HUEY.immediate:
            close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            if not HUEY.immediate:
                close_old_connections()

    return inner


def db_task(*args, **kwargs):
    """``task`` for functions that use the Django database (see ``close_db``)."""

    def decorator(fn):
        wrapper = task(*args, **kwargs)(close_db(fn))
        wrapper.call_local = fn
        return wrapper

    return decorator


def db_periodic_task(*args, **kwargs):
    """``periodic_task`` for functions that use the Django database."""

    def decorator(fn):
        wrapper = periodic_task(*args, **kwargs)(close_db(fn))
        wrapper.call_local = fn
        return wrapper

    return decorator


def on_commit_task(*args, **kwargs):
    """A db task that is enqueued only when the current transaction commits.

    Calling it returns a result handle at once; if the transaction rolls back the task is
    never enqueued and the handle never gets a value. The returned function has none of the
    TaskWrapper methods (``schedule``, ``s``, ...): decorate the same function with
    ``db_task`` too (under another ``name``) where those are needed.
    """

    def decorator(fn):
        wrapper = task(*args, **kwargs)(close_db(fn))

        @wraps(fn)
        def inner(*a, **k):
            pending = wrapper.s(*a, **k)
            transaction.on_commit(lambda: wrapper.huey.enqueue(pending))
            return HUEY._result_handle(pending)

        inner.call_local = fn
        return inner

    return decorator
