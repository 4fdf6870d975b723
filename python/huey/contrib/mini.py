"""MiniHuey: a tiny in-process task runner on gevent (no storage, no consumer).

Calling a task spawns it on a gevent pool at once and returns a ``MiniHueyResult`` (a gevent
``AsyncResult``; call it or ``.get()`` it to wait). ``task.schedule(args, kwargs, delay=...,
eta=...)`` keeps the call in a heap until it is due; ``task(validate)`` /
``periodic_task(validate)`` registers a function that runs each minute ``validate(now)``
(e.g. a ``crontab``) accepts. A greenlet started by ``start()`` checks the heap every
``interval`` seconds and the periodic tasks once per wall-clock minute, in local time.
"""

import datetime
import heapq
import itertools
import logging
import time
from functools import wraps

import gevent
from gevent.event import AsyncResult, Event
from gevent.pool import Pool

from huey.crontab import crontab  # noqa: F401  (huey.contrib.mini.crontab, as in huey)
from huey.utils import normalize_time

logger = logging.getLogger('huey.mini')


class MiniHueyResult(AsyncResult):
    """The eventual value of a MiniHuey task; ``result()`` is ``result.get()``."""

    def __call__(self, block=True, timeout=None):
        return self.get(block, timeout)


def _minute(now):
    return now.replace(second=0, microsecond=0)


class MiniHuey:
    def __init__(self, name='huey', interval=1, pool_size=None):
        self.name = name
        self._interval = interval
        self._last_check = _minute(datetime.datetime.now())
        self._periodic_tasks = []  # (validate_func, fn)
        self._scheduled_tasks = []  # heap of (eta, sequence, fn, args, kwargs, result)
        self._sequence = itertools.count()
        self._shutdown = Event()
        self._pool = Pool(pool_size)
        self._run_t = None

    def task(self, validate_func=None):
        """Decorator for a task; with ``validate_func`` the function becomes periodic."""
        if validate_func is not None:
            return self.periodic_task(validate_func)

        def decorator(fn):
            @wraps(fn)
            def call(*args, **kwargs):
                result = MiniHueyResult()
                self._enqueue(fn, args, kwargs, result)
                return result

            def schedule(args=None, kwargs=None, delay=None, eta=None):
                # Local naive time, like the periodic check (raises ValueError unless exactly
                # one of delay/eta is given).
                eta = normalize_time(eta, delay, utc=False)
                result = MiniHueyResult()
                entry = (eta, next(self._sequence), fn, args, kwargs, result)
                heapq.heappush(self._scheduled_tasks, entry)
                return result

            call.schedule = schedule
            return call

        return decorator

    def periodic_task(self, validate_func):
        """Decorator: run the function (no arguments) each minute ``validate_func`` accepts.
        The function itself is returned unchanged."""

        def decorator(fn):
            self._periodic_tasks.append((validate_func, fn))
            return fn

        return decorator

    def start(self):
        if self._run_t is not None:
            raise Exception('Task runner is already running.')
        self._shutdown.clear()
        self._run_t = gevent.spawn(self._run)

    def stop(self):
        """Stop the scheduler greenlet (tasks already spawned keep running)."""
        if self._run_t is None:
            raise Exception('Task runner does not appear to have started.')
        self._shutdown.set()
        logger.info('shutdown requested.')
        self._run_t.join()
        self._run_t = None

    def _enqueue(self, fn, args=None, kwargs=None, result=None):
        logger.info('enqueueing %s', fn.__name__)
        self._pool.spawn(self._execute, fn, args or (), kwargs or {}, result)

    def _execute(self, fn, args, kwargs, result):
        started = time.monotonic()
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            logger.exception('task %s failed', fn.__name__)
            if result is not None:
                result.set_exception(exc)
            return
        if result is not None:
            result.set(value)
        logger.info('executed %s in %0.3fs', fn.__name__, time.monotonic() - started)

    def _run(self):
        logger.info('task runner started.')
        while not self._shutdown.is_set():
            started = time.monotonic()
            try:
                self._tick(datetime.datetime.now())
            except Exception:
                # A broken validate function must not stop the runner.
                logger.exception('error in task scheduler.')
            remaining = self._interval - (time.monotonic() - started)
            if remaining > 0:
                self._shutdown.wait(remaining)
        logger.info('exiting task runner')

    def _tick(self, now):
        minute = _minute(now)
        if minute > self._last_check:
            self._last_check = minute
            for validate_func, fn in self._periodic_tasks:
                if validate_func(now):
                    self._enqueue(fn)
        heap = self._scheduled_tasks
        while heap and heap[0][0] <= now:
            _, _, fn, args, kwargs, result = heapq.heappop(heap)
            self._enqueue(fn, args, kwargs, result)
