"""HueyBackend: Django's tasks framework running on the project's Huey.

Django 6 has the framework built in (``django.tasks``); earlier Django versions get it from
the ``django-tasks`` backport (``pip install huey-rs[django-tasks]``). Configure::

    TASKS = {
        'default': {
            'BACKEND': 'huey.contrib.djhuey.tasks_backend.HueyBackend',
            'ENQUEUE_ON_COMMIT': False,  # True: enqueue when the transaction commits
        },
    }

A Django task enqueued here becomes one huey task named ``djtasks.run`` whose arguments are
the function's import path, its args and its kwargs; Django's priority is huey's priority and
``run_after`` its eta. ``manage.py run_huey`` runs it beside the project's huey tasks.
Its ``TaskResult`` is kept in the Huey's result store under ``djt.<id>`` as a dict of
JSON-able fields (status, timestamps in ISO 8601, return value, errors, worker ids), so
``get_result`` and ``refresh`` work from any process. The task name, key and record are
huey 3.5.4's: consumers of either version run tasks enqueued by the other.
"""

import os
import socket
import traceback
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

try:  # Django 6
    from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
except ImportError:
    try:  # The django-tasks backport.
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
        from django_tasks.exceptions import TaskResultDoesNotExist
        from django_tasks.signals import task_enqueued, task_finished, task_started
        from django_tasks.utils import normalize_json
    except ImportError as exc:
        raise ImportError(
            'huey.contrib.djhuey.tasks_backend needs Django 6 (django.tasks) or the '
            'django-tasks backport, 0.9 or newer (Python 3.10+): run "pip install '
            'huey-rs[django-tasks]" (or "pip install django-tasks") to install it.'
        ) from exc
    try:
        from django_tasks.exceptions import InvalidTask
    except ImportError:  # django-tasks 0.12 and earlier
        from django_tasks.exceptions import InvalidTaskError as InvalidTask

from huey.contrib.djhuey import HUEY, close_db

# The result record of Django task ``id`` is stored under this key.
KEY = 'djt.%s'
# The huey task that runs Django tasks.
TASK_NAME = 'djtasks.run'


def _iso(moment):
    return None if moment is None else moment.isoformat()


def _when(text):
    return None if text is None else datetime.fromisoformat(text)


def _now():
    return _iso(timezone.now())


def _function(path):
    """The function at ``path`` (the function itself when a Task object is found there)."""
    found = import_string(path)
    return found.func if isinstance(found, Task) else found


def _stand_in(path):
    """A function named like ``path`` for a result whose function is gone (moved, renamed):
    the result can still be read, and running it raises ImportError."""
    module, _, name = path.rpartition('.')

    def missing(*args, **kwargs):
        raise ImportError(f'the task function {path} cannot be imported')

    missing.__module__, missing.__qualname__, missing.__name__ = module, name, name
    return missing


class _StoredTask(Task):
    """A Task rebuilt from a stored record: it was validated when enqueued, and settings
    may have changed since."""

    def __post_init__(self):
        pass


def _new_record(alias, task, id, args, kwargs):
    return {
        'id': id,
        'backend': alias,
        'task_path': task.module_path,
        'priority': task.priority,
        'queue_name': task.queue_name,
        'takes_context': task.takes_context,
        'run_after': _iso(task.run_after),
        'status': TaskResultStatus.READY.value,
        'enqueued_at': None,
        'started_at': None,
        'last_attempted_at': None,
        'finished_at': None,
        'args': args,
        'kwargs': kwargs,
        'return_value': None,
        'errors': [],  # [exception class path, traceback]
        'worker_ids': [],
    }


def _result(record):
    """The TaskResult a stored record describes."""
    path = record['task_path']
    try:
        func = _function(path)
    except ImportError:
        func = _stand_in(path)
    task = _StoredTask(
        func=func,
        priority=record['priority'],
        backend=record['backend'],
        queue_name=record['queue_name'],
        run_after=_when(record['run_after']),
        takes_context=record['takes_context'],
    )
    result = TaskResult(
        task=task,
        id=record['id'],
        status=TaskResultStatus(record['status']),
        enqueued_at=_when(record['enqueued_at']),
        started_at=_when(record['started_at']),
        last_attempted_at=_when(record['last_attempted_at']),
        finished_at=_when(record['finished_at']),
        args=record['args'],
        kwargs=record['kwargs'],
        backend=record['backend'],
        errors=[TaskError(exception_class_path=cls, traceback=tb) for cls, tb in record['errors']],
        worker_ids=list(record['worker_ids']),
    )
    if record['status'] == TaskResultStatus.SUCCESSFUL.value:
        object.__setattr__(result, '_return_value', record['return_value'])
    return result


def _save(key, record, **changes):
    record.update(changes)
    HUEY.put_result(key, record)


def _run_django_task(task_path, args, kwargs, task=None):
    """The body of huey's ``djtasks.run``: call the function, keeping its record current."""
    key = KEY % task.id
    record = HUEY.get(key, peek=True)
    if record is None:
        # The record is gone (results flushed): still run what was enqueued.
        _function(task_path)(*args, **kwargs)
        return
    now = _now()
    record['worker_ids'].append(f'{socket.gethostname()}.{os.getpid()}')
    _save(
        key, record, status=TaskResultStatus.RUNNING.value, started_at=now, last_attempted_at=now
    )
    try:
        func = _function(task_path)
        running = _result(record)
        task_started.send(sender=HueyBackend, task_result=running)
        if record['takes_context']:
            value = func(TaskContext(task_result=running), *args, **kwargs)
        else:
            value = func(*args, **kwargs)
        value = normalize_json(value)
    except Exception as exc:
        failure = [
            f'{type(exc).__module__}.{type(exc).__qualname__}',
            ''.join(traceback.format_exception(exc)),
        ]
        record['errors'].append(failure)
        _save(key, record, status=TaskResultStatus.FAILED.value, finished_at=_now())
        task_finished.send(sender=HueyBackend, task_result=_result(record))
        raise
    _save(
        key,
        record,
        status=TaskResultStatus.SUCCESSFUL.value,
        finished_at=_now(),
        return_value=value,
    )
    task_finished.send(sender=HueyBackend, task_result=_result(record))


run_django_task = HUEY.task(name=TASK_NAME, context=True)(close_db(_run_django_task))


class HueyBackend(BaseTaskBackend):
    """Django tasks enqueued as huey tasks (see the module docstring)."""

    supports_defer = True
    supports_get_result = True
    supports_async_task = False

    def __init__(self, alias, params):
        super().__init__(alias, params)
        self.enqueue_on_commit = bool(
            params.get('ENQUEUE_ON_COMMIT', self.options.get('enqueue_on_commit', False))
        )

    @property
    def supports_priority(self):
        return bool(HUEY.storage.priority)

    def _check_importable(self, task):
        # The consumer finds the function by its import path: a lambda, a nested function
        # or one replaced at module level would run something else, or nothing.
        try:
            found = _function(task.module_path)
        except ImportError:
            found = None
        if found is not task.func:
            raise InvalidTask(
                f'Task function must be importable from its module path '
                f'({task.module_path!r}): lambdas, nested and class-body functions cannot '
                'be used.'
            )

    def enqueue(self, task, args, kwargs):
        self.validate_task(task)
        self._check_importable(task)
        args, kwargs = normalize_json(list(args)), normalize_json(dict(kwargs))
        message = run_django_task.s(
            task.module_path,
            args,
            kwargs,
            priority=task.priority or None,
            eta=task.run_after,
        )
        key = KEY % message.id
        record = _new_record(self.alias, task, message.id, args, kwargs)

        def send():
            _save(key, record, enqueued_at=_now())
            task_enqueued.send(sender=HueyBackend, task_result=_result(record))
            HUEY.enqueue(message)

        if self.enqueue_on_commit:
            transaction.on_commit(send)
            return _result(record)
        send()
        # Immediate mode has run it already: report what the record says now.
        return _result(HUEY.get(key, peek=True) or record)

    def get_result(self, result_id):
        record = HUEY.get(KEY % result_id, peek=True)
        if record is None:
            raise TaskResultDoesNotExist(result_id)
        return _result(record)
