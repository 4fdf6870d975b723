"""The ``Huey`` object: task registration, enqueueing, execution and the storage-backed
helpers (results, revocation, locks, rate limits).

Tasks, results, workflows and locks live in their own modules; their names are re-exported
here because users import them from ``huey.api``.
"""

import copy
import datetime
import hashlib
import inspect
import itertools
import logging
import os
import time
import traceback
import uuid
import warnings
from functools import wraps

from huey import signals as S
from huey.constants import EmptyData
from huey.crontab import crontab
from huey.exceptions import (
    RETRYING_EXCEPTIONS,
    CancelExecution,
    ConfigurationError,
    HueyException,
    RateLimitExceeded,
    ResultTimeout,
    RetryTask,
    TaskException,
    TaskLockedException,
    TaskTimeout,
)
from huey.locks import RateLimit, TaskLock
from huey.registry import Registry
from huey.reliable import Deliveries, crashpoint
from huey.result import ChordResult, Result, ResultGroup
from huey.serializer import Serializer
from huey.consumer import Consumer  # noqa: F401  (huey.api.Consumer, as in huey)
from huey.storage import (
    BlackHoleStorage,
    CySqliteStorage,
    FileStorage,
    MemoryStorage,
    PostgresStorage,
    PriorityRedisExpireStorage,
    PriorityRedisStorage,
    RedisExpireStorage,
    RedisStorage,
    SqliteStorage,
)
from huey.storage.base import over_cap_reason
from huey.task import PeriodicTask, Task, TaskWrapper, _signature, signature
from huey.utils import (
    SKIPPED,
    ChordConfig,
    Error,
    noop_context,
    normalize_expire_time,
    normalize_time,
    utcnow,
)
from huey.workflow import chord, group

logger = logging.getLogger('huey')

__all__ = [
    'BlackHoleHuey', 'CancelExecution', 'FileHuey', 'SqliteHuey', 'RedisHuey',
    'RedisExpireHuey', 'PriorityRedisHuey', 'PriorityRedisExpireHuey', 'CySqliteHuey',
    'PostgresHuey', 'ChordResult', 'ConfigurationError', 'Error',
    'Huey', 'HueyException', 'MemoryHuey', 'PeriodicTask', 'RateLimit',
    'RateLimitExceeded', 'Result', 'ResultGroup', 'ResultTimeout', 'RetryTask', 'SKIPPED',
    'Task', 'TaskException', 'TaskLock', 'TaskLockedException', 'TaskTimeout', 'TaskWrapper',
    'chord', 'crontab', 'group', 'normalize_expire_time', 'normalize_time', 'signature',
    '_signature', 'utcnow', 'EmptyData',
]


class SerializationError(HueyException, TypeError):
    """A task's arguments (or a result) could not be serialized."""


def _first_bytes(data):
    return bytes(data[:32]) if isinstance(data, (bytes, bytearray, memoryview)) else data


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

    ``reliable=True`` gives at-least-once delivery on storages that support it (Sqlite,
    File, Redis; see ``huey.reliable``): a message stays in the storage's in-flight area, under a
    lease of ``lease`` seconds renewed while it runs, until its run is recorded, so a
    killed consumer's tasks are redelivered; after ``max_deliveries`` deliveries a message
    goes to the dead-letter queue instead. Other storages ignore it.
    """

    storage_class = None

    def __init__(self, name='huey', results=True, store_none=False, utc=True,
                 immediate=False, serializer=None, compression=False, use_zlib=False,
                 immediate_use_memory=True, storage_class=None,
                 store_intermediate_errors=True, reliable=False, lease=30,
                 max_deliveries=3, **storage_kwargs):
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
        self.storage = self.create_storage()
        self.task_wrapper_class = self.get_task_wrapper_class()
        self._locks = set()
        self._pre_execute = {}
        self._post_execute = {}
        self._startup = {}
        self._shutdown = {}
        self._registry = Registry()
        self._signal = S.Signal()
        self._tasks_in_flight = set()
        self._class_revoke_keys = {}  # task class -> its 'rt:' revocation key
        self._timeout_handler = None  # set by the consumer for process/greenlet workers
        if lease <= 0 or max_deliveries < 1:
            raise ValueError(f'lease must be > 0 and max_deliveries >= 1, got lease={lease!r}'
                             f', max_deliveries={max_deliveries!r}')
        self.lease = lease
        self.max_deliveries = max_deliveries
        self._reliable = reliable
        self._delivery_state = None

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
            warnings.warn('storage_class not specified when initializing huey, will default '
                          'to RedisStorage.', stacklevel=3)
            storage_class = RedisStorage
        return storage_class(self.name, **kwargs)

    @property
    def immediate(self):
        return self._immediate

    @property
    def reliable(self):
        """Whether reliable delivery is on: requested, and supported by the storage."""
        return self._reliable and hasattr(self.storage, 'dequeue_reliable')

    def _deliveries(self):
        """This process's in-flight deliveries (a forked worker starts its own)."""
        state = self._delivery_state
        if state is None or state.pid != os.getpid():
            state = self._delivery_state = Deliveries(self.storage, self.lease)
        return state

    @immediate.setter
    def immediate(self, value):
        if self._immediate != value:
            self._immediate = value
            if self.immediate_use_memory:
                self.storage = self.create_storage()

    def create_consumer(self, **options):
        return Consumer(self, **options)

    # -- registration ----------------------------------------------------------------------

    def task(self, retries=0, retry_delay=0, retry_backoff=0, priority=None, context=False,
             name=None, expires=None, timeout=None, **kwargs):
        """Decorator turning a function into a task (see ``TaskWrapper``)."""
        def decorator(func):
            return self.task_wrapper_class(
                self, func.func if isinstance(func, TaskWrapper) else func,
                context=context, name=name, default_retries=retries,
                default_retry_delay=retry_delay, default_retry_backoff=retry_backoff,
                default_priority=priority, default_expires=expires,
                default_timeout=timeout, **kwargs)
        return decorator

    def periodic_task(self, validate_datetime, retries=0, retry_delay=0, retry_backoff=0,
                      priority=None, context=False, name=None, expires=None, timeout=None,
                      **kwargs):
        """Decorator for a task the consumer enqueues whenever ``validate_datetime(now)``
        is true (typically a ``crontab``), checked once a minute."""
        _require_callable('periodic_task validate_datetime', validate_datetime)

        def decorator(func):
            def method_validate(task, timestamp):
                return validate_datetime(timestamp)

            return self.task_wrapper_class(
                self, func.func if isinstance(func, TaskWrapper) else func,
                context=context, name=name, default_retries=retries,
                default_retry_delay=retry_delay, default_retry_backoff=retry_backoff,
                default_priority=priority, default_expires=expires,
                default_timeout=timeout, validate_datetime=method_validate,
                task_base=PeriodicTask, **kwargs)
        return decorator

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
                f'cannot serialize task {message.name} ({task.id}): {exc}') from exc

    def deserialize_task(self, data):
        return self._registry.create_task(self.serializer.deserialize(data))

    # -- enqueue ---------------------------------------------------------------------------

    def enqueue(self, task):
        """Enqueue a task, a pipeline, a ``group`` (-> ResultGroup) or a ``chord``
        (-> ChordResult). Returns the result handle, or None when results are off."""
        if not isinstance(task, Task):
            if isinstance(task, group):
                return ResultGroup([self.enqueue(t) for t in task.tasks])
            if isinstance(task, chord):
                return self._enqueue_chord(task)
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
        """Enqueue plain tasks in one storage round trip where the storage allows it;
        returns their result handles (None each when results are off)."""
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
        enqueue_many = getattr(self.storage, 'enqueue_many', None)
        if enqueue_many is not None:
            enqueue_many(batch)
        else:
            for data, priority in batch:
                self.storage.enqueue(data, priority)
        return [self._result_for(task) for task in tasks]

    def _result_for(self, task):
        if not self.results:
            return None
        if task.on_complete is None:
            return Result(self, task)
        return ResultGroup(self._pipeline_results(task))

    def _pipeline_results(self, task):
        results = []
        while task is not None:
            results.append(Result(self, task))
            task = task.on_complete
        return results

    def _enqueue_chord(self, chord_obj):
        cid = str(uuid.uuid4())
        size = len(chord_obj.tasks)
        results = []
        for idx, member in enumerate(chord_obj.tasks):
            if isinstance(member, group):
                raise ValueError('cannot use `group` as a chord member - use .then() to '
                                 'convert to a `chord` first.')
            config = ChordConfig(cid, size, idx, chord_obj.callback)
            results.append(self._enqueue_chord_member(member, config))
        if not size:
            callback = copy.copy(chord_obj.callback)
            callback.extend_data(([],))
            self.enqueue(callback)
        pipeline = self._pipeline_results(chord_obj.callback)
        return ChordResult(results, pipeline[0],
                           ResultGroup(pipeline) if len(pipeline) > 1 else None)

    def _enqueue_chord_member(self, member, config):
        head = member.callback if isinstance(member, chord) else member
        tail = head
        while tail.on_complete is not None:
            tail = tail.on_complete
        tail.chord_config = config  # the member reports to the chord when its pipeline ends
        if isinstance(member, chord):
            self._enqueue_chord(member)
        else:
            self.enqueue(head)
        return Result(self, tail)

    def dequeue(self, timeout=None):
        """The next task from the queue, or None. With ``timeout``, storages that can be
        woken wait up to that many seconds for one. Undecodable messages are logged and set
        aside, and the next message is tried."""
        storage = self.storage
        if self.reliable:
            return self._dequeue_reliable(timeout)
        # Storages with ``dequeue_peek`` (Redis) read a message's revocation flags along
        # with it; ``is_revoked`` then uses them instead of asking the storage again.
        peek = getattr(storage, 'dequeue_peek', None)
        while True:
            if peek is not None:
                data, peeked = peek(timeout) or (None, None)
            else:
                data = storage.dequeue() if timeout is None else storage.dequeue_wait(timeout)
                peeked = None
            if data is None:
                return None
            crashpoint('after_dequeue')
            task = self._decode_or_set_aside(data)
            if task is not None:
                if peek is not None:
                    task._peeked = peeked
                return task

    def _dequeue_reliable(self, timeout):
        storage = self.storage
        deliveries = self._deliveries()
        if timeout is None and storage.blocking:
            timeout = getattr(storage, 'read_timeout', None)
        while True:
            token = deliveries.new_token()
            got = storage.dequeue_reliable(deliveries.consumer, token, self.lease, timeout)
            if got is None:
                return None
            deliveries.hold(token)
            crashpoint('after_dequeue')
            task = self._decode_or_set_aside(got[0])
            if task is not None:
                task._delivery = token
                task._deliveries = got[1]
                return task
            deliveries.release(token)
            storage.ack(token)

    def recover_expired(self, now=None):
        """Requeue in-flight messages whose lease expired (dead-letter those delivered
        ``max_deliveries`` times); returns (requeued, dead-lettered). The consumer's
        scheduler calls this on every pass in reliable mode."""
        if not self.reliable:
            return 0, 0
        requeued, dead = self.storage.recover_expired(self.max_deliveries, now)
        if requeued:
            logger.warning('Requeued %d task(s) whose consumer stopped renewing its lease.',
                           requeued)
        # Over-cap messages are already in the dead-letter queue: the storage moves them
        # there in the same step as the recovery.
        for _, deliveries, letter_id in dead:
            reason = over_cap_reason(deliveries, self.max_deliveries)
            logger.error('A task was %s; set aside as dead letter %s.', reason, letter_id)
            self._emit(S.SIGNAL_DEAD_LETTER, None, reason, letter_id)
        return requeued, len(dead)

    def _decode_or_set_aside(self, data):
        """The task in a message taken off the queue or schedule, or None when it cannot be
        decoded: then it is logged once, kept as a dead letter with its original bytes and
        the reason, and SIGNAL_DEAD_LETTER is sent."""
        try:
            return self.deserialize_task(data)
        except Exception as exc:
            reason = f'{type(exc).__name__}: {exc}'
        deliveries = self._previous_deliveries(data) + 1
        try:
            letter_id = self.storage.put_dead_letter(data, reason, deliveries)
        except NotImplementedError:  # A third-party storage without a dead-letter queue.
            logger.error('Unable to deserialize a queued message (%s); %s keeps no dead '
                         'letters, so it is dropped. First bytes: %r', reason,
                         type(self.storage).__name__, _first_bytes(data))
            self._emit(S.SIGNAL_DEAD_LETTER, None, reason, None)
            return None
        except Exception:
            # The message is already off the queue: say so loudly, and keep consuming.
            logger.exception('Unable to deserialize a queued message (%s) and unable to set '
                             'it aside; it is lost. First bytes: %r', reason,
                             _first_bytes(data))
            return None
        logger.error('Unable to deserialize a queued message (%s); set aside as dead letter '
                     '%s. First bytes: %r', reason, letter_id, _first_bytes(data))
        self._emit(S.SIGNAL_DEAD_LETTER, None, reason, letter_id)
        return None

    def _delivery_counter(self, data):
        digest = hashlib.sha1(data if isinstance(data, bytes) else repr(data).encode())
        return f'{self.name}.dead-letter.{digest.hexdigest()}'

    def _previous_deliveries(self, data):
        """How many times this exact message was set aside before and then requeued.

        ``requeue_dead_letter`` leaves the count in a storage counter named after the
        message's digest (the message bytes themselves must not change), so it survives a
        change of consumer process; it is read and deleted here.
        """
        try:
            key = self._delivery_counter(data)
            previous = self.storage.incr(key, 0)
            self.storage.delete_counter(key)
            return previous
        except Exception:
            return 0

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
        letter = self.storage.pop_dead_letter(id)
        if letter is None:
            return False
        data = letter['data']
        try:
            self.storage.incr(self._delivery_counter(data), letter['deliveries'])
            self.storage.enqueue(data)
        except BaseException:
            # Not lost: back into the dead-letter queue, then the error propagates.
            self.storage.put_dead_letter(data, letter['reason'], letter['deliveries'])
            raise
        return True

    def purge_dead_letters(self):
        """Delete every dead letter; returns how many there were."""
        count = self.storage.dead_letter_count()
        self.storage.flush_dead_letters()
        return count

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

    # -- execution -------------------------------------------------------------------------

    def _timeout_context(self, task):
        if not task.timeout or self._timeout_handler is None:
            return noop_context()
        return self._timeout_handler(task.timeout)

    def _get_timestamp(self):
        return utcnow() if self.utc else datetime.datetime.now()

    def execute(self, task, timestamp=None):
        """Run a task now if it is due, not revoked and not expired (a task that is not
        due yet goes to the schedule). Returns the task's value."""
        token = getattr(task, '_delivery', None)
        if token is None:
            value = self._execute_if_due(task, timestamp)
            crashpoint('after_result_before_ack')  # nothing to ack: the same point for tests
            return value
        deliveries = self._deliveries()
        try:
            value = self._execute_if_due(task, timestamp)
        except BaseException:
            # Not acked: the lease runs out and the message is delivered again.
            deliveries.release(token)
            raise
        if task._delivery is not None:  # None: the run lost its lease or was interrupted
            crashpoint('after_result_before_ack')
            deliveries.release(token)
            if not self.storage.ack(token):
                logger.warning('Task %s finished after its delivery was recovered.', task.id)
        return value

    def _lost_delivery(self, task):
        """Reliable mode fence: False when this run still owns its delivery (its lease is
        renewed now); True, and nothing must be recorded, when it was recovered."""
        token = getattr(task, '_delivery', None)
        if token is None:
            return False
        deliveries = self._deliveries()
        if deliveries.still_ours(token):
            return False
        logger.warning('Task %s finished after its lease expired and it was requeued; '
                       'its result and continuation are not recorded.', task.id)
        deliveries.release(token)
        task._delivery = None
        return True

    def _execute_if_due(self, task, timestamp=None):
        # The clock is read only when something needs it (an eta, an expiry, a timed
        # revocation), unless a subclass customises ready_to_run.
        if timestamp is None and (task.eta is not None or task.expires_resolved or
                                  type(self).ready_to_run is not Huey.ready_to_run):
            timestamp = self._get_timestamp()
        if timestamp is not None and not self.ready_to_run(task, timestamp):
            self.add_schedule(task)
        elif self.is_revoked(task, timestamp, False):
            logger.warning('Task %s was revoked, not executing', task)
            self._emit(S.SIGNAL_REVOKED, task)
            self._abort_chord_member(task, SKIPPED)
        elif task.expires_resolved and task.expires_resolved < timestamp:
            logger.info('Task %s expired, not executing.', task)
            self._emit(S.SIGNAL_EXPIRED, task)
            self._abort_chord_member(task, SKIPPED)
        else:
            logger.info('Executing %s', task)
            self._emit(S.SIGNAL_EXECUTING, task)
            return self._execute(task, timestamp)
        return None

    def _execute(self, task, timestamp):
        if self._pre_execute:
            try:
                self._run_pre_execute(task)
            except CancelExecution:
                self._emit(S.SIGNAL_CANCELED, task)
                self._abort_chord_member(task, SKIPPED)
                return None

        try:
            value, exception, retry_eta = self._run_task(task)
        except _Interrupted:
            token = getattr(task, '_delivery', None)
            if token is not None:  # not acked: delivered again once the lease runs out
                self._deliveries().release(token)
                task._delivery = None
            return None
        crashpoint('mid_task')
        if self._lost_delivery(task):
            return value

        # A revocation made while this run was in progress applies to this run only, so the
        # flag is deleted now (together with storing the result where that saves a round
        # trip). Expiring storages implement pop_data as a peek, hence a delete.
        periodic = isinstance(task, PeriodicTask)
        store = self.results and not periodic
        if exception is None:
            self._finish_success(task, value, store, periodic)
        else:
            if not periodic:
                self.delete(task.revoke_id)
            self._finish_failure(task, value, exception, retry_eta, store)
        return value

    def _run_task(self, task):
        """Call the task; returns (value, exception or None, retry eta or None)."""
        start = time.monotonic()
        if task.timeout:
            task._deadline = start + task.timeout
        self._tasks_in_flight.add(task)
        try:
            if task.timeout and self._timeout_handler is not None:
                with self._timeout_context(task):
                    value = task.execute()
            else:
                value = task.execute()  # no context manager to enter on the common path
        except TaskTimeout as exc:
            logger.warning('Task %s timed out after %ss.', task.id, task.timeout)
            self._emit(S.SIGNAL_TIMEOUT, task)
            return None, exc, None
        except RateLimitExceeded as exc:
            retry_eta = None
            delay = task.retry_delay or exc.delay
            if exc.retry or task.retries:
                logger.info('Task %s rate-limited on "%s", retrying in %s', task.id, exc.key,
                            delay)
                retry_eta = normalize_time(None, delay, self.utc)
                if exc.retry:
                    task.retries += 1  # a rate-limit retry does not use up a retry
            else:
                logger.info('Task %s rate-limited on "%s"', task.id, exc.key)
            self._emit(S.SIGNAL_RATE_LIMITED, task)
            return None, exc, retry_eta
        except TaskLockedException as exc:
            logger.warning('Task %s not run, %s.', task.id, exc)
            self._emit(S.SIGNAL_LOCKED, task)
            return None, exc, None
        except RetryTask as exc:
            logger.info('Task %s raised RetryTask, retrying.', task.id)
            task.retries += 1
            retry_eta = None
            if exc.eta or exc.delay is not None:
                retry_eta = normalize_time(exc.eta, exc.delay, self.utc)
            return None, exc, retry_eta
        except CancelExecution as exc:
            if exc.retry or (exc.retry is None and task.retries):
                task.retries = max(task.retries, 1)
                note = '(task will be retried)'
            else:
                task.retries = 0
                note = '(aborted, will not be retried)'
            logger.warning('Task %s raised CancelExecution %s.', task.id, note)
            self._emit(S.SIGNAL_CANCELED, task)
            return None, exc, None
        except KeyboardInterrupt:
            logger.warning('Received exit signal, %s did not finish.', task.id)
            self._emit(S.SIGNAL_INTERRUPTED, task)
            raise _Interrupted from None
        except Exception as exc:
            logger.exception('Unhandled exception in task %s.', task.id)
            self._emit(S.SIGNAL_ERROR, task, exc)
            return None, exc, None
        finally:
            self._tasks_in_flight.discard(task)
        logger.info('%s executed in %0.3fs', task, time.monotonic() - start)
        return value, None, None

    def _finish_success(self, task, value, store, periodic):
        if store and (value is not None or self.store_none):
            if type(self).put_result is Huey.put_result:
                self.storage.delete_and_put(task.revoke_id, task.id,
                                            self.serializer.serialize(value), is_result=True)
            else:  # a subclass customises how results are stored
                self.delete(task.revoke_id)
                self.put_result(task.id, value)
        elif not periodic:
            self.delete(task.revoke_id)
        self._run_post_execute(task, value, None)
        self._emit(S.SIGNAL_COMPLETE, task)
        if task.on_complete:
            task.on_complete.extend_data(value)
            self.enqueue(task.on_complete)
        if task.chord_config is not None:
            self._check_chord(task.chord_config, value)

    def _finish_failure(self, task, value, exception, retry_eta, store):
        final = not task.retries
        # Intermediate failures surface only when configured, and never for "retry later"
        # exceptions (rate limits, locks, RetryTask).
        surface = final or (self.store_intermediate_errors
                            and not isinstance(exception, RETRYING_EXCEPTIONS))
        error = None
        if surface:
            error = Error(self.build_error_result(task, exception))
            if store:
                # A final failure is also the result of every task left in the pipeline.
                failed = task
                while failed is not None:
                    self.put_result(failed.id, error)
                    failed = failed.on_complete if final else None
        self._run_post_execute(task, value, exception)
        if surface and task.on_error:
            handler = copy.copy(task.on_error)  # on_error is shared across retries
            handler.extend_data(exception)
            self.enqueue(handler)
        if final:
            self._abort_chord_member(task, error)
        else:
            self._emit(S.SIGNAL_RETRYING, task)
            self._requeue_task(task, self._get_timestamp(), retry_eta)

    def _abort_chord_member(self, task, value):
        """The rest of this pipeline won't run: report ``value`` to its chord, if any."""
        while task is not None:
            if task.chord_config is not None:
                return self._check_chord(task.chord_config, value)
            task = task.on_complete
        return None

    def _check_chord(self, config, value):
        counter_key = f'chord:{config.cid}'
        self.put_result(f'chord:{config.cid}:{config.idx}', value)
        if self.storage.incr(counter_key) != config.size:
            return
        self.storage.delete_counter(counter_key)
        results = []
        for idx in range(config.size):
            key = f'chord:{config.cid}:{idx}'
            results.append(self.get(key, peek=True))  # peek + delete: expiring storages
            self.delete(key)
        callback = config.callback
        callback.extend_data((results,))
        self.enqueue(callback)

    def _requeue_task(self, task, timestamp, retry_eta=None):
        task.retries -= 1
        logger.info('Requeueing %s, %s retries', task.id, task.retries)
        if retry_eta is not None:
            task.eta = retry_eta
            self.add_schedule(task)
        elif task.retry_delay:
            task.eta = timestamp + datetime.timedelta(seconds=task.retry_delay)
            if task.retry_backoff:
                task.retry_delay *= task.retry_backoff
            self.add_schedule(task)
        else:
            self.enqueue(task)

    def _run_pre_execute(self, task):
        for name, callback in self._pre_execute.items():
            logger.debug('Pre-execute hook %s for %s.', name, task)
            try:
                callback(task)
            except CancelExecution:
                logger.warning('Task %s cancelled by %s (pre-execute).', task, name)
                raise
            except Exception:
                logger.exception('Unhandled exception calling pre-execute hook %s for %s.',
                                  name, task)

    def _run_post_execute(self, task, value, exception):
        for name, callback in self._post_execute.items():
            logger.debug('Post-execute hook %s for %s.', name, task)
            try:
                callback(task, value, exception)
            except Exception:
                logger.exception('Unhandled exception calling post-execute hook %s for %s.',
                                 name, task)

    def build_error_result(self, task, exception):
        tb = ''.join(traceback.format_exception(type(exception), exception,
                                                exception.__traceback__))
        if isinstance(exception, TaskException):
            error = exception.metadata.get('error') or repr(exception)
        else:
            error = repr(exception)
        return {'error': error, 'retries': task.retries, 'traceback': tb, 'task_id': task.id}

    # -- revocation ------------------------------------------------------------------------

    def _task_key(self, task_class, key):
        if isinstance(task_class, TaskWrapper):
            task_class = task_class.task_class
        name = self._registry._names.get(task_class)
        if name is None:
            name = self._registry.task_to_string(task_class)
        return f'{key}:{name}'

    def revoke_all(self, task_class, revoke_until=None, revoke_once=False):
        if revoke_until is not None:
            revoke_until = normalize_time(revoke_until, utc=self.utc)
        self.put(self._task_key(task_class, 'rt'), (revoke_until, revoke_once))

    def restore_all(self, task_class):
        return self.delete(self._task_key(task_class, 'rt'))

    def revoke(self, task, revoke_until=None, revoke_once=False):
        if revoke_until is not None:
            revoke_until = normalize_time(revoke_until, utc=self.utc)
        self.put(task.revoke_id, (revoke_until, revoke_once))

    def restore(self, task):
        """Un-revoke; True when the task was revoked."""
        return self.delete(task.revoke_id)

    def revoke_by_id(self, id, revoke_until=None, revoke_once=False):
        return self.revoke(Task(id=id), revoke_until, revoke_once)

    def restore_by_id(self, id):
        return self.restore(Task(id=id))

    def _check_revoked(self, data, timestamp=None, peek=True):
        """(is revoked, should the revocation be removed) for stored revocation data."""
        if data is EmptyData:
            return False, False
        revoke_until, revoke_once = self.serializer.deserialize(data)
        if revoke_until is not None and timestamp is None:
            timestamp = self._get_timestamp()
        if revoke_once:
            return True, not peek
        if revoke_until is not None and revoke_until <= timestamp:
            return False, not peek
        return True, False

    def _revoke_keys(self, task):
        if isinstance(task, Task):
            cls = type(task)
            class_key = self._class_revoke_keys.get(cls)
            if class_key is None:
                class_key = self._class_revoke_keys[cls] = self._task_key(cls, 'rt')
            return [task.revoke_id, class_key]
        if isinstance(task, TaskWrapper) or inspect.isclass(task):
            return [self._task_key(task, 'rt')]
        if isinstance(task, Result):
            return self._revoke_keys(task.task)
        return [Task(id=task).revoke_id]

    def is_revoked(self, task, timestamp=None, peek=True):
        """Whether a task, task class/wrapper, result or task id is revoked. With
        ``peek=False`` a one-time or expired revocation is consumed."""
        keys = self._revoke_keys(task)
        peeked = getattr(task, '_peeked', None)
        if peeked is not None and peeked[0] == keys:
            task._peeked = None  # read with the message: good for this one check
            stored = peeked[1]
        else:
            stored = self.storage.peek_many(keys)
        if not stored:
            return False
        for key in keys:
            revoked, restore = self._check_revoked(stored.get(key, EmptyData), timestamp,
                                                   peek)
            if restore:
                self.delete(key)
            if revoked:
                return True
        return False

    # -- schedule and introspection ---------------------------------------------------------

    def add_schedule(self, task):
        data = self.serialize_task(task)
        eta = task.eta or datetime.datetime.fromtimestamp(0)
        self.storage.add_to_schedule(data, eta)
        logger.info('Added task %s to schedule, eta %s', task.id, eta)
        self._emit(S.SIGNAL_SCHEDULED, task)

    def read_schedule(self, timestamp=None):
        if timestamp is None:
            timestamp = self._get_timestamp()
        return self._deserialize_all(self.storage.read_schedule(timestamp))

    def move_due_to_queue(self, timestamp=None):
        """Move due scheduled tasks to the queue inside the storage, so a crash cannot lose
        one between the schedule and the queue; returns the moved tasks, or None when the
        storage cannot (then use ``read_schedule`` and ``enqueue``)."""
        move = getattr(self.storage, 'move_due_to_queue', None)
        if move is None:
            return None
        if timestamp is None:
            timestamp = self._get_timestamp()
        decoded = {}

        def priority_of(data):
            crashpoint('mid_schedule_move')
            try:
                task = decoded[bytes(data)] = self.deserialize_task(data)
            except Exception:
                return 0  # moved as it is; the dequeue sets it aside
            return task.priority

        moved = move(timestamp, priority_of)
        tasks = []
        for data in moved:
            task = decoded.get(bytes(data))
            if task is None:
                task = self._try_decode(data)
            if task is not None:
                tasks.append(task)
                self._emit(S.SIGNAL_ENQUEUED, task)
        if moved:
            crashpoint('mid_schedule_move')
        return tasks

    def _try_decode(self, data):
        try:
            return self.deserialize_task(data)
        except Exception:
            return None

    def _deserialize_all(self, messages):
        """Tasks of messages removed from the schedule; undecodable ones are set aside."""
        tasks = []
        for data in messages:
            task = self._decode_or_set_aside(data)
            if task is not None:
                tasks.append(task)
        return tasks

    def _decodable(self, messages):
        """Tasks of messages still in storage (a listing); undecodable ones are skipped,
        and left where they are for the consumer to set aside when it takes them."""
        tasks = []
        for data in messages:
            try:
                tasks.append(self.deserialize_task(data))
            except Exception as exc:
                logger.debug('Skipping an undecodable message in a listing (%s: %s)',
                             type(exc).__name__, exc)
        return tasks

    def read_periodic(self, timestamp):
        if timestamp is None:
            timestamp = self._get_timestamp()
        return [task for task in self._registry.periodic_tasks
                if task.validate_datetime(timestamp)]

    def ready_to_run(self, task, timestamp=None):
        if timestamp is None:
            timestamp = self._get_timestamp()
        return task.eta is None or task.eta <= timestamp

    def pending(self, limit=None):
        return self._decodable(self.storage.enqueued_items(limit))

    def pending_count(self):
        return self.storage.queue_size()

    def scheduled(self, limit=None):
        return self._decodable(self.storage.scheduled_items(limit))

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
        locks = self._locks
        if names:
            locks = itertools.chain(locks, (f'{self.name}.lock.{n.strip()}' for n in names))
        flushed = set()
        for lock_key in list(locks):
            if self.delete(lock_key):
                flushed.add(lock_key.split('.lock.', 1)[-1])
        return flushed

    def rate_limit(self, name, limit, per, retry=True):
        return RateLimit(self, name, limit, per, retry=retry)

    def _result_handle(self, task):
        return Result(self, task)

    def result(self, id, blocking=False, timeout=None, backoff=1.15, max_delay=1.0,
               revoke_on_timeout=False, preserve=False):
        return Result(self, Task(id=id)).get(
            blocking=blocking, timeout=timeout, backoff=backoff, max_delay=max_delay,
            revoke_on_timeout=revoke_on_timeout, preserve=preserve)


class _Interrupted(BaseException):
    """A KeyboardInterrupt reached a running task; ``_execute`` returns quietly."""


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
