"""Tasks: ``Task`` (one invocation), ``PeriodicTask`` and ``TaskWrapper`` (the decorated
function users call to enqueue)."""

import datetime
import inspect
import time

from huey._native import new_task_id
from huey.exceptions import ConfigurationError, TaskTimeout
from huey.periodic import SKIP
from huey.result import ResultGroup
from huey.utils import normalize_expire_time, normalize_time


class Task:
    """One invocation of a task function, with its arguments and execution settings."""

    default_expires = None
    default_priority = None
    default_retries = 0
    default_retry_delay = 0
    default_retry_backoff = 0
    default_timeout = None
    # Set by ``Huey.dequeue`` in reliable mode: the ``huey.reliable.Delivery`` this run holds
    # (its token in the storage's in-flight area). None for every other task.
    delivery = None
    # Set by the consumer's prefetch (``huey.prefetch``) on the tasks it hands out: the
    # buffer the task's result write may take the next task from.
    _prefetch = None

    def __init__(
        self,
        args=None,
        kwargs=None,
        id=None,
        eta=None,
        retries=None,
        retry_delay=None,
        priority=None,
        expires=None,
        on_complete=None,
        on_error=None,
        expires_resolved=None,
        timeout=None,
        chord_config=None,
        retry_backoff=None,
    ):
        self.name = type(self).__name__
        self.args = () if args is None else args
        self.kwargs = {} if kwargs is None else kwargs
        self.id = id or self.create_id()
        self.revoke_id = f'r:{self.id}'
        self.eta = eta
        self.retries = self.default_retries if retries is None else retries
        self.retry_delay = self.default_retry_delay if retry_delay is None else retry_delay
        self.retry_backoff = self.default_retry_backoff if retry_backoff is None else retry_backoff
        self.priority = self.default_priority if priority is None else priority
        self.expires = self.default_expires if expires is None else expires
        self.expires_resolved = expires_resolved
        self.timeout = self.default_timeout if timeout is None else timeout
        self.chord_config = chord_config
        self._deadline = None
        self.on_complete = on_complete
        self.on_error = on_error

    @property
    def data(self):
        return (self.args, self.kwargs)

    def __repr__(self):
        parts = [f'{self.__module__}.{self.name}: {self.id}']
        if self.eta:
            parts.append(f' @{self.eta}')
        if self.expires:
            if self.expires_resolved and self.expires != self.expires_resolved:
                parts.append(f' exp={self.expires} ({self.expires_resolved})')
            else:
                parts.append(f' exp={self.expires}')
        if self.priority:
            parts.append(f' p={self.priority}')
        if self.retries:
            parts.append(f' {self.retries} retries')
        if self.timeout:
            parts.append(f' timeout={self.timeout}')
        if self.on_complete:
            parts.append(f' -> {self.on_complete}')
        if self.on_error:
            parts.append(f', on error {self.on_error}')
        if self.chord_config:
            parts.append(f', chord {self.chord_config.cid}')
        return ''.join(parts)

    def __hash__(self):
        return hash(self.id)

    def __eq__(self, other):
        if not isinstance(other, Task):
            return False
        return self.id == other.id and self.eta == other.eta and type(self) is type(other)

    def create_id(self):
        return new_task_id()  # str(uuid.uuid4()), minus the UUID object

    def resolve_expires(self, utc=True):
        """Turn a relative ``expires`` into an absolute time, once, when enqueued."""
        if self.expires:
            self.expires_resolved = normalize_expire_time(self.expires, utc)
        return self.expires_resolved

    @property
    def time_remaining(self):
        if self._deadline:
            return max(0, self._deadline - time.monotonic())
        return float('inf')

    @property
    def is_timed_out(self):
        return self._deadline and time.monotonic() >= self._deadline

    def check_timeout(self):
        """Raise ``TaskTimeout`` when the task has run past its ``timeout``."""
        if self.is_timed_out:
            raise TaskTimeout(f'timeout {self.timeout}s')

    def extend_data(self, data):
        """Pass a parent's result on: tuples extend args, dicts fill missing kwargs,
        anything else is appended as one argument; None and () add nothing."""
        if data is None or data == ():
            return
        if isinstance(data, tuple):
            self.args += data
        elif isinstance(data, dict):
            for key, value in data.items():
                self.kwargs.setdefault(key, value)
        else:
            self.args = self.args + (data,)

    def then(self, task, *args, **kwargs):
        """Run ``task`` after this one succeeds, receiving its return value."""
        if self.on_complete:
            self.on_complete.then(task, *args, **kwargs)
        else:
            self.on_complete = signature(task, args, kwargs)
        return self

    def error(self, task, *args, **kwargs):
        """Run ``task`` if this one fails, receiving the exception."""
        if self.on_error:
            self.on_error.error(task, *args, **kwargs)
        else:
            self.on_error = signature(task, args, kwargs)
        return self

    def execute(self):
        raise NotImplementedError


def signature(task, args=(), kwargs=None):
    """A Task from a Task (extended with args/kwargs) or from a TaskWrapper (``.s()``)."""
    if not isinstance(task, Task):
        if not hasattr(task, 's'):
            raise TypeError(f'expected a task or task wrapper, got {task!r}')
        return task.s(*args, **(kwargs or {}))
    if args:
        task.extend_data(args)
    if kwargs:
        task.extend_data(kwargs)
    return task


_signature = signature  # the name huey 3.5.4 uses


class PeriodicTask(Task):
    #: What to do about due minutes no consumer ran: 'skip', 'once' or 'all' (huey.periodic).
    catch_up = SKIP

    def validate_datetime(self, timestamp):
        return False


def _seconds(delay):
    if isinstance(delay, datetime.timedelta):
        return delay.total_seconds()
    return delay


# Keyword arguments that set a task's options instead of being passed to the function.
_RESERVED = frozenset(
    (
        'eta',
        'delay',
        'id',
        'retries',
        'retry_delay',
        'retry_backoff',
        'priority',
        'expires',
        'timeout',
    )
)


class TaskWrapper:
    """What ``@huey.task()`` returns: calling it enqueues the function."""

    task_base = Task

    def __init__(self, huey, func, context=False, name=None, task_base=None, **settings):
        if not callable(func):
            raise TypeError(f'huey.task() decorates a function, got {func!r}')
        self.__doc__ = getattr(func, '__doc__', None)
        self.huey = huey
        self.func = func
        self.context = context
        self.name = name
        self.settings = settings
        if task_base is not None:
            self.task_base = task_base
        self.task_class = self.create_task(func, context, name, **settings)
        self.huey._registry.register(self.task_class)

    @property
    def retries(self):
        return self.task_class.default_retries

    @property
    def retry_delay(self):
        return self.task_class.default_retry_delay

    def unregister(self):
        return self.huey._registry.unregister(self.task_class)

    def create_task(self, func, context=False, name=None, **settings):
        if inspect.iscoroutinefunction(func):
            raise ConfigurationError(
                'huey does not support async functions. Wrap the '
                'coroutine with asyncio.run() in a regular function.'
            )

        def execute(task):
            args, kwargs = task.args, task.kwargs
            if task.context:
                kwargs = dict(kwargs, task=task)  # a copy: a retry must not pickle the task
            return func(*args, **kwargs)

        attrs = {
            'context': context,
            'execute': execute,
            '__module__': getattr(func, '__module__', None) or __name__,
            '__doc__': getattr(func, '__doc__', None),
        }
        attrs.update(settings)
        name = name or getattr(func, '__name__', None) or type(func).__name__
        return type(name, (self.task_base,), attrs)

    def is_revoked(self, timestamp=None, peek=True):
        return self.huey.is_revoked(self.task_class, timestamp, peek)

    def revoke(self, revoke_until=None, revoke_once=False):
        self.huey.revoke_all(self.task_class, revoke_until, revoke_once)

    def restore(self):
        return self.huey.restore_all(self.task_class)

    def schedule(
        self,
        args=None,
        kwargs=None,
        eta=None,
        delay=None,
        priority=None,
        retries=None,
        retry_delay=None,
        retry_backoff=None,
        expires=None,
        timeout=None,
        id=None,
    ):
        """Enqueue to run at ``eta`` or after ``delay`` seconds."""
        if eta is None and delay is None:
            if isinstance(args, (int, float, datetime.timedelta)):
                delay = _seconds(args)
            elif isinstance(args, datetime.datetime):
                eta = args
            else:
                raise ValueError('schedule() missing required eta= or delay=')
            args = None
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ValueError('schedule() kwargs argument must be a dict.')
        task = self.task_class(
            args or (),
            kwargs or {},
            id=id,
            eta=normalize_time(eta, _seconds(delay), self.huey.utc),
            retries=retries,
            retry_delay=retry_delay,
            retry_backoff=retry_backoff,
            priority=priority,
            expires=expires,
            timeout=timeout,
        )
        return self.huey.enqueue(task)

    def _apply(self, iterable):
        # Positional arguments only, so no reserved keywords to look for (as in __call__).
        task_class = self.task_class
        return [task_class(item if isinstance(item, tuple) else (item,), {}) for item in iterable]

    def map(self, iterable):
        """Enqueue one task per item (tuples are unpacked into arguments)."""
        tasks = self._apply(iterable)
        results = self.huey.enqueue_many(tasks)
        if self.huey.results:
            return ResultGroup(results)
        return None

    def __call__(self, *args, **kwargs):
        if kwargs and not _RESERVED.isdisjoint(kwargs):
            return self.huey.enqueue(self.s(*args, **kwargs))
        return self.huey.enqueue(self.task_class(args, kwargs))  # no options: skip s()

    def call_local(self, *args, **kwargs):
        """Run the function here and now, bypassing the queue."""
        return self.func(*args, **kwargs)

    def s(self, *args, **kwargs):
        """A Task for these arguments, not yet enqueued. Reserved keywords (eta, delay, id,
        retries, retry_delay, retry_backoff, priority, expires, timeout) set its options."""
        pop = kwargs.pop
        eta = pop('eta', None)
        delay = _seconds(pop('delay', None))
        if eta is not None or delay is not None:
            eta = normalize_time(eta, delay, self.huey.utc)
        return self.task_class(
            args,
            kwargs,
            id=pop('id', None),
            eta=eta,
            retries=pop('retries', None),
            retry_delay=pop('retry_delay', None),
            retry_backoff=pop('retry_backoff', None),
            priority=pop('priority', None),
            expires=pop('expires', None),
            timeout=pop('timeout', None),
        )
