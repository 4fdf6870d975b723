"""Result handles: ``Result`` (one task), ``ResultGroup`` (several), ``ChordResult``."""

import time
from collections import deque

from huey._native import check_seconds
from huey.constants import EmptyData
from huey.exceptions import ResultTimeout, TaskException
from huey.utils import Error, normalize_time


class Result:
    """The eventual return value of an enqueued task."""

    __slots__ = ('huey', 'task', 'revoke_id', '_result')

    def __init__(self, huey, task):
        self.huey = huey
        self.task = task
        self.revoke_id = task.revoke_id
        self._result = EmptyData

    def __repr__(self):
        return f'<Result: task {self.id}>'

    @property
    def id(self):
        return self.task.id

    def __call__(self, *args, **kwargs):
        return self.get(*args, **kwargs)

    def is_ready(self):
        return self._get() is not EmptyData

    def _get(self, preserve=False):
        if self._result is EmptyData:
            raw = self.huey.get_raw(self.task.id, peek=preserve)
            if raw is EmptyData:
                return EmptyData
            self._result = self.huey.serializer.deserialize(raw)
        return self._result

    def get_raw_result(
        self,
        blocking=False,
        timeout=None,
        backoff=1.15,
        max_delay=1.0,
        revoke_on_timeout=False,
        preserve=False,
    ):
        value = self._get(preserve)
        if value is not EmptyData:
            return value
        if not blocking:
            return None
        if timeout is not None:
            check_seconds('timeout', timeout)  # NaN, infinity, negative: ValueError
        if self.huey.storage.wait_result(self.task.id, timeout, backoff, max_delay):
            value = self._get(preserve)
            if value is not EmptyData:
                return value
        if revoke_on_timeout:
            self.revoke()
        raise ResultTimeout('timed out waiting for result')

    def get(
        self,
        blocking=False,
        timeout=None,
        backoff=1.15,
        max_delay=1.0,
        revoke_on_timeout=False,
        preserve=False,
    ):
        """The task's return value (None while not ready unless ``blocking``). A failed
        task raises ``TaskException`` carrying the error metadata."""
        value = self.get_raw_result(
            blocking, timeout, backoff, max_delay, revoke_on_timeout, preserve
        )
        if value is not None and isinstance(value, Error):
            raise TaskException(value.metadata)
        return value

    def is_revoked(self):
        return self.huey.is_revoked(self.task, peek=True)

    def revoke(self, revoke_once=True):
        self.huey.revoke(self.task, revoke_once=revoke_once)

    def restore(self):
        return self.huey.restore(self.task)

    def reschedule(
        self, eta=None, delay=None, expires=None, priority=None, preserve_pipeline=True
    ):
        """Revoke this run and enqueue a copy under a new id (optionally at another time)."""
        self.revoke()
        if eta is not None or delay is not None:
            eta = normalize_time(eta, delay, self.huey.utc)
        task = self.task
        task_copy = type(task)(
            task.args,
            task.kwargs,
            eta=eta,
            retries=task.retries,
            retry_delay=task.retry_delay,
            retry_backoff=task.retry_backoff,
            priority=task.priority if priority is None else priority,
            expires=task.expires if expires is None else expires,
            timeout=task.timeout,
            chord_config=task.chord_config,
            on_complete=task.on_complete if preserve_pipeline else None,
            on_error=task.on_error if preserve_pipeline else None,
        )
        return self.huey.enqueue(task_copy)

    def reset(self):
        """Forget a cached value so the next ``get`` reads the store again."""
        self._result = EmptyData


class ResultGroup:
    """Results of several tasks (a group, a pipeline or ``map``), in order."""

    __slots__ = ('_results',)

    def __init__(self, results):
        self._results = results

    def get(self, *args, **kwargs):
        return [result.get(*args, **kwargs) for result in self._results]

    __call__ = get

    def __getitem__(self, index):
        return self._results[index].get(True)

    def __iter__(self):
        return iter(self._results)

    def __len__(self):
        return len(self._results)

    def as_completed(self, backoff=1.15, max_delay=1.0):
        """Yield values as their tasks finish, in completion order."""
        pending = deque(self._results)
        delays = {r.id: 0.0 for r in pending}
        while pending:
            result = pending.popleft()
            if delays[result.id]:
                time.sleep(delays[result.id])
            if result._get() is EmptyData:
                pending.append(result)
                delays[result.id] = min((delays[result.id] or 0.1) * backoff, max_delay)
            else:
                yield result.get()


class ChordResult:
    """Results of a chord: its members' and its callback's (``get`` returns the latter)."""

    __slots__ = ('results', 'callback', 'pipeline_results')

    def __init__(self, results, callback_result, pipeline=None):
        self.results = ResultGroup(results)
        self.callback = callback_result
        self.pipeline_results = pipeline

    def get(self, *args, **kwargs):
        return self.callback.get(*args, **kwargs)

    __call__ = get

    def reset(self):
        self.callback.reset()
