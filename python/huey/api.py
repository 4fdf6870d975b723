"""The ``Huey`` object: task registration, enqueueing, execution and the storage-backed
helpers (results, revocation, locks, rate limits).

Huey talks to its storage only through the interface ``BaseStorage`` declares, reading the
storage's capability attributes (``blocking``, ``wakeup``, ``reliable_delivery``, ...) rather
than probing it. Its other concerns live in their own modules: tasks (``task.py``), results
(``result.py``), groups, chords and pipelines (``workflow.py``), what running a task does
(``execution.py``), locks and rate limits (``locks.py``), reliable delivery (``reliable.py``)
and the dead-letter queue (``dead_letters.py``). Their names are re-exported here because
users import them from ``huey.api``.
"""

import datetime
import logging
import warnings
from functools import wraps

from huey import execution, scheduling
from huey import signals as S
from huey._native import check_seconds
from huey.consumer import Consumer
from huey.dead_letters import DeadLetters
from huey.periodic import SKIP, check_catch_up
from huey.exceptions import HueyException
from huey.registry import Registry
from huey.reliable import ReliableDelivery, check_storage, crashpoint
from huey.result import Result, ResultGroup
from huey.revocation import Revocations
from huey.serializer import Serializer
from huey.task import PeriodicTask, Task, TaskWrapper
from huey.utils import noop_context, utcnow
from huey.workflow import chord, enqueue_chord, group, pipeline_results

# Re-exported: users import these from huey.api, where huey 3.5.4 defined or imported them.
from huey.constants import EmptyData  # noqa: F401
from huey.crontab import crontab  # noqa: F401
from huey.exceptions import RETRYING_EXCEPTIONS, CancelExecution, ConfigurationError  # noqa: F401
from huey.exceptions import RateLimitExceeded, ResultTimeout  # noqa: F401
from huey.exceptions import RetryTask, TaskException, TaskLockedException, TaskTimeout  # noqa: F401
from huey.locks import RateLimit, TaskLock, flush_locks
from huey.result import ChordResult  # noqa: F401
from huey.storage import BlackHoleStorage, CySqliteStorage, FileStorage, MemoryStorage
from huey.storage import PostgresStorage, SqliteStorage
from huey.storage import PriorityRedisExpireStorage, PriorityRedisStorage  # noqa: F401
from huey.storage import RedisExpireStorage, RedisStorage  # noqa: F401
from huey.task import _signature, signature  # noqa: F401
from huey.utils import SKIPPED, ChordConfig, Error, normalize_expire_time, normalize_time  # noqa: F401

logger = logging.getLogger('huey')


class SerializationError(HueyException, TypeError):
    """A task's arguments (or a result) could not be serialized."""


def _hook_name(name):
    return name if isinstance(name, str) else name.__name__


def _require_callable(kind, fn):
    if not callable(fn):
        raise TypeError(f'{kind} must be callable, got {fn!r}')


class Huey:
    """A task queue: decorate functions with ``task()``/``periodic_task()``, call them to
    enqueue, and run a consumer to execute them.

    ``results`` stores return values, ``store_none`` stores ``None`` too, ``utc`` keeps
    times in UTC, ``immediate`` runs tasks in-process at call time (on memory storage unless
    ``immediate_use_memory=False``); remaining keyword arguments configure the storage.

    ``reliable=True`` gives at-least-once delivery (see ``huey.reliable``) on storages with
    ``reliable_delivery`` (Sqlite, File, Redis): a message stays in the storage's in-flight
    area, under a lease of ``lease`` seconds renewed while it runs, until its run is
    recorded, so a killed consumer's tasks are redelivered; after ``max_deliveries``
    deliveries a message goes to the dead-letter queue instead. Other storages raise
    ``ConfigurationError``.
    """

    storage_class = None

    def __init__(
        self,
        name='huey',
        results=True,
        store_none=False,
        utc=True,
        immediate=False,
        serializer=None,
        compression=False,
        use_zlib=False,
        immediate_use_memory=True,
        storage_class=None,
        store_intermediate_errors=True,
        reliable=False,
        lease=30,
        max_deliveries=3,
        **storage_kwargs,
    ):
        check_seconds('lease', lease)  # NaN and infinity included: ValueError naming it
        if lease <= 0 or max_deliveries < 1:
            raise ValueError(
                f'lease must be > 0 and max_deliveries >= 1, got lease={lease!r}'
                f', max_deliveries={max_deliveries!r}'
            )
        self.name = name
        self.results = results
        self.store_none = store_none
        self.store_intermediate_errors = store_intermediate_errors
        self.utc = utc
        self._immediate = immediate
        self.immediate_use_memory = immediate_use_memory
        self.serializer = serializer or Serializer(compression, use_zlib=use_zlib)
        self.storage_kwargs = storage_kwargs
        if storage_class is not None:
            self.storage_class = storage_class
        self.lease = lease
        self.max_deliveries = max_deliveries
        self._reliable = ReliableDelivery(self, lease, max_deliveries) if reliable else None
        self._dead_letters = DeadLetters(self)
        self.storage = self.create_storage()
        check_storage(self)
        self.task_wrapper_class = self.get_task_wrapper_class()
        self._locks = set()
        self._pre_execute = {}
        self._post_execute = {}
        self._startup = {}
        self._shutdown = {}
        self._registry = Registry()
        self._signal = S.Signal()
        self._tasks_in_flight = set()
        self._revocations = Revocations(self)
        self._timeout_handler = None  # set by the consumer for process/greenlet workers
        # Results go to the storage in one call (delete the revocation flag, store the
        # value) unless a subclass customises put_result; the clock is read only when a
        # task needs it unless a subclass customises ready_to_run.
        self._direct_results = type(self).put_result is Huey.put_result
        self._custom_ready_to_run = type(self).ready_to_run is not Huey.ready_to_run
        own = ('is_revoked', 'revoke', 'restore', 'revoke_all', 'restore_all')
        self._custom_revocation = any(getattr(type(self), n) is not getattr(Huey, n) for n in own)

    def __repr__(self):
        return f'<{type(self).__name__} {self.name!r} storage={type(self.storage).__name__}>'

    # -- storage ---------------------------------------------------------------------------

    def get_task_wrapper_class(self):
        return TaskWrapper

    def create_storage(self):
        if self._immediate and self.immediate_use_memory:
            return self.get_immediate_storage()
        return self.get_storage(**self.storage_kwargs)

    def get_immediate_storage(self):
        return MemoryStorage(self.name)

    def get_storage(self, **kwargs):
        storage_class = self.storage_class
        if storage_class is None:
            warnings.warn(
                'storage_class not specified when initializing huey, will default '
                'to RedisStorage.',
                stacklevel=3,
            )
            storage_class = RedisStorage
        return storage_class(self.name, **kwargs)

    @property
    def immediate(self):
        return self._immediate

    @immediate.setter
    def immediate(self, value):
        if self._immediate != value:
            self._immediate = value
            if self.immediate_use_memory:
                self.storage = self.create_storage()
                check_storage(self)

    @property
    def reliable(self):
        """Whether reliable delivery is on (requested, and the storage in use has it)."""
        return self._reliable is not None and self.storage.reliable_delivery

    def create_consumer(self, **options):
        return Consumer(self, **options)

    # -- registration ----------------------------------------------------------------------

    def task(
        self,
        retries=0,
        retry_delay=0,
        retry_backoff=0,
        priority=None,
        context=False,
        name=None,
        expires=None,
        timeout=None,
        **kwargs,
    ):
        """Decorator turning a function into a task (see ``TaskWrapper``)."""

        def decorator(func):
            return self.task_wrapper_class(
                self,
                func.func if isinstance(func, TaskWrapper) else func,
                context=context,
                name=name,
                default_retries=retries,
                default_retry_delay=retry_delay,
                default_retry_backoff=retry_backoff,
                default_priority=priority,
                default_expires=expires,
                default_timeout=timeout,
                **kwargs,
            )

        return decorator

    def periodic_task(
        self,
        validate_datetime,
        retries=0,
        retry_delay=0,
        retry_backoff=0,
        priority=None,
        context=False,
        name=None,
        expires=None,
        timeout=None,
        catch_up=SKIP,
        **kwargs,
    ):
        """Decorator for a task the consumer enqueues whenever ``validate_datetime(now)``
        is true (typically a ``crontab``), checked once a minute; once per due minute however
        many consumers run (see ``huey.periodic``). ``catch_up``: what a consumer coming back
        after every consumer was down does about due minutes nobody ran: ``'skip'`` them
        (huey's behaviour), run the task ``'once'`` for the whole gap, or run it once for
        ``'all'`` of them (the 100 most recent, within a week)."""
        _require_callable('periodic_task validate_datetime', validate_datetime)
        check_catch_up(catch_up)

        def method_validate(task, timestamp):
            return validate_datetime(timestamp)

        return self.task(
            retries,
            retry_delay,
            retry_backoff,
            priority,
            context,
            name,
            expires,
            timeout,
            validate_datetime=method_validate,
            catch_up=catch_up,
            task_base=PeriodicTask,
            **kwargs,
        )

    def context_task(self, obj, as_argument=False, **kwargs):
        """Decorator for a task that runs inside ``with obj`` (passing the context value as
        the first argument when ``as_argument``)."""

        def task_decorator(fn):
            @wraps(fn)
            def inner(*args, **kw):
                with obj as ctx:
                    if as_argument:
                        return fn(ctx, *args, **kw)
                    return fn(*args, **kw)

            return self.task(**kwargs)(inner)

        return task_decorator

    def _hook(self, registry, kind, name):
        def decorator(fn):
            _require_callable(f'{kind} hook', fn)
            registry[name or fn.__name__] = fn
            return fn

        return decorator

    def pre_execute(self, name=None):
        return self._hook(self._pre_execute, 'pre_execute', name)

    def unregister_pre_execute(self, name):
        return self._pre_execute.pop(_hook_name(name), None) is not None

    def post_execute(self, name=None):
        return self._hook(self._post_execute, 'post_execute', name)

    def unregister_post_execute(self, name):
        return self._post_execute.pop(_hook_name(name), None) is not None

    def on_startup(self, name=None):
        return self._hook(self._startup, 'on_startup', name)

    def unregister_on_startup(self, name):
        return self._startup.pop(_hook_name(name), None) is not None

    def on_shutdown(self, name=None):
        return self._hook(self._shutdown, 'on_shutdown', name)

    def unregister_on_shutdown(self, name=None):
        return self._shutdown.pop(_hook_name(name), None) is not None

    # -- signals ---------------------------------------------------------------------------

    def signal(self, *signals):
        """Decorator connecting a receiver ``fn(signal, task, *args)`` to the given signals
        (all signals when none are named)."""

        def decorator(fn):
            self._signal.connect(fn, *signals)
            return fn

        return decorator

    def disconnect_signal(self, receiver, *signals):
        self._signal.disconnect(receiver, *signals)

    def _emit(self, signal, task, *args, **kwargs):
        self._signal.send(signal, task, *args, **kwargs)

    def notify_interrupted_tasks(self):
        """Emit SIGNAL_INTERRUPTED for every task still running (consumer shutdown)."""
        while self._tasks_in_flight:
            try:
                task = self._tasks_in_flight.pop()
            except KeyError:
                break  # finished meanwhile
            self._emit(S.SIGNAL_INTERRUPTED, task)

    # -- messages --------------------------------------------------------------------------

    def serialize_task(self, task):
        message = self._registry.create_message(task)
        serializer = self.serializer
        try:
            serialize = getattr(serializer, 'serialize_message', None) or serializer.serialize
            return serialize(message)
        except Exception as exc:
            raise SerializationError(
                f'cannot serialize task {message.name} ({task.id}): {exc}'
            ) from exc

    def deserialize_task(self, data):
        return self._registry.create_task(self.serializer.deserialize(data))

    # -- enqueue and dequeue ---------------------------------------------------------------

    def enqueue(self, task):
        """Enqueue a task, a pipeline, a ``group`` (-> ResultGroup) or a ``chord``
        (-> ChordResult). Returns the result handle, or None when results are off."""
        if not isinstance(task, Task):
            if isinstance(task, group):
                return ResultGroup([self.enqueue(t) for t in task.tasks])
            if isinstance(task, chord):
                return enqueue_chord(self, task)
            raise TypeError(f'enqueue() takes a task, group or chord, got {task!r}')
        if task.expires:
            task.resolve_expires(self.utc)
        if self._signal.active:
            self._emit(S.SIGNAL_ENQUEUED, task)
        if self._immediate:
            self.execute(task)
        else:
            self.storage.enqueue(self.serialize_task(task), task.priority)
        return self._result_for(task)

    def enqueue_many(self, tasks):
        """Enqueue plain tasks with one ``storage.enqueue_many`` call (one round trip where
        the storage allows it); returns their result handles (None each when results are
        off)."""
        if self._immediate:
            return [self.enqueue(task) for task in tasks]
        batch = []
        signals = self._signal.active
        for task in tasks:
            if task.expires:
                task.resolve_expires(self.utc)
            if signals:
                self._emit(S.SIGNAL_ENQUEUED, task)
            batch.append((self.serialize_task(task), task.priority))
        self.storage.enqueue_many(batch)
        return [self._result_for(task) for task in tasks]

    def _result_for(self, task):
        if not self.results:
            return None
        if task.on_complete is None:
            return Result(self, task)
        return ResultGroup(pipeline_results(self, task))

    def dequeue(self, timeout=None):
        """The next task from the queue, or None. With ``timeout``, storages that can be
        woken wait up to that many seconds for one. Undecodable messages are set aside
        (see ``huey.dead_letters``) and the next message is tried. In reliable mode the
        task carries its ``delivery``."""
        tasks = self.dequeue_many(1, timeout)
        return tasks[0] if tasks else None

    def dequeue_many(self, n, timeout=None):
        """Up to ``n`` tasks taken with one storage call where the storage can (see
        ``BaseStorage.dequeue_many``), waiting as ``dequeue`` does when the queue is empty;
        [] when none came. In reliable mode each task holds a lease (``huey.reliable``)."""
        if self.reliable:
            return self._reliable.dequeue_many(n, timeout)
        storage = self.storage
        while True:
            batch = storage.dequeue_many(n, timeout)
            if not batch:
                return []
            crashpoint('after_dequeue')
            tasks = self._dead_letters.decode_all(batch)
            for extra in tasks[n:]:  # more than asked for (a storage's bug): none is dropped
                storage.enqueue(self.serialize_task(extra), extra.priority)
            if tasks:
                return tasks[:n]

    def recover_expired(self, now=None):
        """Reliable mode: requeue in-flight messages whose lease expired (dead-letter those
        delivered ``max_deliveries`` times); returns (requeued, dead-lettered). The
        consumer's scheduler calls this on every pass."""
        if not self.reliable:
            return 0, 0
        return self._reliable.recover_expired(now)

    # -- dead letters ----------------------------------------------------------------------

    def dead_letters(self, limit=None):
        """Messages set aside because they could not be decoded, oldest first: dicts with
        ``id``, ``data`` (the original bytes), ``reason``, ``time`` and ``deliveries``."""
        return self.storage.dead_letters(limit)

    def dead_letter_count(self):
        return self.storage.dead_letter_count()

    def requeue_dead_letter(self, id):
        """Put dead letter ``id``'s original bytes back on the queue (after deploying the
        missing task, say). True when there was such a letter."""
        return self._dead_letters.requeue(id)

    def purge_dead_letters(self):
        """Delete every dead letter; returns how many there were."""
        return self._dead_letters.purge()

    # -- key/value -------------------------------------------------------------------------

    def put(self, key, data):
        return self.storage.put_data(key, self.serializer.serialize(data))

    def put_result(self, key, data):
        return self.storage.put_data(key, self.serializer.serialize(data), is_result=True)

    def put_if_empty(self, key, data, ttl=None):
        return self.storage.put_if_empty(key, self.serializer.serialize(data), ttl)

    def get_raw(self, key, peek=False):
        if peek:
            return self.storage.peek_data(key)
        return self.storage.pop_data(key)

    def get(self, key, peek=False):
        data = self.get_raw(key, peek)
        if data is not EmptyData:
            return self.serializer.deserialize(data)
        return None

    def delete(self, key):
        return self.storage.delete_data(key)

    # -- execution (see huey.execution) ----------------------------------------------------

    def _timeout_context(self, task):
        if not task.timeout or self._timeout_handler is None:
            return noop_context()
        return self._timeout_handler(task.timeout)

    def _get_timestamp(self):
        return utcnow() if self.utc else datetime.datetime.now()

    def execute(self, task, timestamp=None):
        """Run a task now if it is due, not revoked and not expired (a task that is not
        due yet goes to the schedule). Returns the task's value. In reliable mode the
        task's delivery is acked once its outcome is recorded."""
        return execution.execute(self, task, timestamp)

    def build_error_result(self, task, exception):
        return execution.error_result(task, exception)

    # -- revocation (see huey.revocation) --------------------------------------------------

    def revoke_all(self, task_class, revoke_until=None, revoke_once=False):
        key = self._revocations.class_key(task_class)
        self._revocations.revoke(key, revoke_until, revoke_once)

    def restore_all(self, task_class):
        return self._revocations.restore(self._revocations.class_key(task_class))

    def revoke(self, task, revoke_until=None, revoke_once=False):
        self._revocations.revoke(task.revoke_id, revoke_until, revoke_once)

    def restore(self, task):
        """Un-revoke; True when the task was revoked."""
        return self._revocations.restore(task.revoke_id)

    def revoke_by_id(self, id, revoke_until=None, revoke_once=False):
        return self.revoke(Task(id=id), revoke_until, revoke_once)

    def restore_by_id(self, id):
        return self.restore(Task(id=id))

    def is_revoked(self, task, timestamp=None, peek=True):
        """Whether a task, task class/wrapper, result or task id is revoked. With
        ``peek=False`` a one-time or expired revocation is consumed."""
        return self._revocations.is_revoked(task, timestamp, peek)

    # -- schedule and introspection ---------------------------------------------------------

    def add_schedule(self, task):
        scheduling.add(self, task)

    def read_schedule(self, timestamp=None):
        if timestamp is None:
            timestamp = self._get_timestamp()
        return self._dead_letters.decode_all(self.storage.read_schedule(timestamp))

    def move_due_to_queue(self, timestamp=None):
        """Move the scheduled tasks due at ``timestamp`` (default: now) into the queue,
        crash-safe where the storage can (see ``BaseStorage.move_due_to_queue``); returns
        the moved tasks (see ``huey.scheduling.move_due``)."""
        if timestamp is None:
            timestamp = self._get_timestamp()
        return scheduling.move_due(self, timestamp)

    def read_periodic(self, timestamp):
        if timestamp is None:
            timestamp = self._get_timestamp()
        return [
            task for task in self._registry.periodic_tasks if task.validate_datetime(timestamp)
        ]

    def ready_to_run(self, task, timestamp=None):
        if timestamp is None:
            timestamp = self._get_timestamp()
        return task.eta is None or task.eta <= timestamp

    def pending(self, limit=None):
        return self._dead_letters.decode_listing(self.storage.enqueued_items(limit))

    def pending_count(self):
        return self.storage.queue_size()

    def scheduled(self, limit=None):
        return self._dead_letters.decode_listing(self.storage.scheduled_items(limit))

    def scheduled_count(self):
        return self.storage.schedule_size()

    def all_results(self):
        return self.storage.result_items()

    def result_count(self):
        return self.storage.result_store_size()

    def __bool__(self):
        return True

    def __len__(self):
        return self.pending_count()

    def flush(self):
        self.storage.flush_all()

    # -- locks, rate limits, results ---------------------------------------------------------

    def lock_task(self, lock_name, ttl=None):
        return TaskLock(self, lock_name, ttl)

    def is_locked(self, lock_name):
        return TaskLock(self, lock_name).is_locked()

    def flush_locks(self, *names):
        """Delete the locks this instance knows (plus ``names``); returns the names of
        those that were held."""
        return flush_locks(self, names)

    def rate_limit(self, name, limit, per, retry=True):
        return RateLimit(self, name, limit, per, retry=retry)

    def _result_handle(self, task):
        return Result(self, task)

    def result(
        self,
        id,
        blocking=False,
        timeout=None,
        backoff=1.15,
        max_delay=1.0,
        revoke_on_timeout=False,
        preserve=False,
    ):
        return Result(self, Task(id=id)).get(
            blocking, timeout, backoff, max_delay, revoke_on_timeout, preserve
        )


class BlackHoleHuey(Huey):
    storage_class = BlackHoleStorage


class MemoryHuey(Huey):
    storage_class = MemoryStorage


class FileHuey(Huey):
    storage_class = FileStorage


class SqliteHuey(Huey):
    storage_class = SqliteStorage


class CySqliteHuey(Huey):
    storage_class = CySqliteStorage


class PostgresHuey(Huey):
    storage_class = PostgresStorage


class RedisHuey(Huey):
    storage_class = RedisStorage


class RedisExpireHuey(RedisHuey):
    storage_class = RedisExpireStorage


class PriorityRedisHuey(RedisHuey):
    storage_class = PriorityRedisStorage


class PriorityRedisExpireHuey(RedisHuey):
    storage_class = PriorityRedisExpireStorage
