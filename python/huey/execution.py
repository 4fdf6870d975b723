"""What running one task does, after ``Huey.execute`` decided it should run: call it, map
what it raised to huey's signals and retry rules, then record the outcome (result or error,
post-execute hooks, pipeline continuation, ``on_error`` handler, chord report, retry).

The order of signals, writes and enqueues is huey 3.5.4's, step for step: receivers and
result readers cannot tell the two apart.
"""

import copy
import datetime
import logging
import time
import traceback

from huey import signals as S
from huey.exceptions import (
    RETRYING_EXCEPTIONS,
    CancelExecution,
    RateLimitExceeded,
    RetryTask,
    TaskException,
    TaskLockedException,
    TaskTimeout,
)
from huey.reliable import crashpoint
from huey.task import PeriodicTask
from huey.utils import SKIPPED, Error, normalize_time
from huey.workflow import abort_chord_member, report_to_chord

logger = logging.getLogger('huey')


class Interrupted(BaseException):
    """A KeyboardInterrupt reached a running task (SIGNAL_INTERRUPTED was sent)."""


def execute(huey, task, timestamp=None):
    """``Huey.execute``: run ``task`` if due, then (reliable mode) ack its delivery."""
    reliable = huey._reliable
    if task.delivery is None or reliable is None:
        value = execute_if_due(huey, task, timestamp)
        crashpoint('after_result_before_ack')  # nothing to ack: the same point for tests
        return value
    return reliable.execute(task, lambda: execute_if_due(huey, task, timestamp))


def execute_if_due(huey, task, timestamp=None):
    """Schedule a task that is not due yet; skip a revoked or expired one; else run it."""
    # The clock is read only when something needs it (an eta, an expiry, a timed
    # revocation), unless a subclass customises ready_to_run.
    if timestamp is None and (
        task.eta is not None or task.expires_resolved or huey._custom_ready_to_run
    ):
        timestamp = huey._get_timestamp()
    if timestamp is not None and not huey.ready_to_run(task, timestamp):
        huey.add_schedule(task)
    elif _is_revoked(huey, task, timestamp):
        logger.warning('Task %s was revoked, not executing', task)
        huey._emit(S.SIGNAL_REVOKED, task)
        abort_chord_member(huey, task, SKIPPED)
    elif task.expires_resolved and task.expires_resolved < timestamp:
        logger.info('Task %s expired, not executing.', task)
        huey._emit(S.SIGNAL_EXPIRED, task)
        abort_chord_member(huey, task, SKIPPED)
    else:
        logger.info('Executing %s', task)
        huey._emit(S.SIGNAL_EXECUTING, task)
        return _execute(huey, task)
    return None


def _is_revoked(huey, task, timestamp):
    """``huey.is_revoked(task, timestamp, False)``, with the flags the previous task's
    result write read (``_finish``) unless a revoke or restore in this process since may
    have changed them."""
    read = task.__dict__.pop('_revocation_flags', None)
    if read is None or read[0] != huey._revocations.changes:
        return huey.is_revoked(task, timestamp, False)
    return huey._revocations.is_revoked(task, timestamp, False, stored=read[1])


def _execute(huey, task):
    if huey._pre_execute:
        try:
            run_pre_execute(huey, task)
        except CancelExecution:
            huey._emit(S.SIGNAL_CANCELED, task)
            abort_chord_member(huey, task, SKIPPED)
            return None
    reliable = task.delivery is not None and huey._reliable is not None
    try:
        value, exception, retry_eta = run_task(huey, task)
    except Interrupted:
        if reliable:
            huey._reliable.abandon(task)  # not acked: delivered again after its lease
        return None
    crashpoint('mid_task')
    periodic = isinstance(task, PeriodicTask)
    # The fence: a recovered delivery records nothing. A success's first write checks it
    # in the same step (_finish); anything else checks it first.
    if reliable and not _fenced_by_write(huey, exception, periodic) and huey._reliable.lost(task):
        return value
    # A revocation made while this run was in progress applies to this run only, so the
    # flag is deleted now (together with storing the result where that saves a round
    # trip). Expiring storages implement pop_data as a peek, hence a delete.
    store = huey.results and not periodic
    if exception is None:
        record_success(huey, task, value, store, periodic)
    else:
        record_failure(huey, task, value, exception, retry_eta, store, periodic)
    return value


def run_task(huey, task):
    """Call the task; returns (value, exception or None, retry eta or None). Raises
    ``Interrupted`` when the run was interrupted."""
    start = time.monotonic()
    if task.timeout:
        task._deadline = start + task.timeout
    huey._tasks_in_flight.add(task)
    try:
        if task.timeout and huey._timeout_handler is not None:
            with huey._timeout_handler(task.timeout):
                value = task.execute()
        else:
            value = task.execute()  # no context manager to enter on the common path
    except TaskTimeout as exc:
        logger.warning('Task %s timed out after %ss.', task.id, task.timeout)
        huey._emit(S.SIGNAL_TIMEOUT, task)
        return None, exc, None
    except RateLimitExceeded as exc:
        retry_eta = None
        delay = task.retry_delay or exc.delay
        if exc.retry or task.retries:
            logger.info('Task %s rate-limited on "%s", retrying in %s', task.id, exc.key, delay)
            retry_eta = normalize_time(None, delay, huey.utc)
            if exc.retry:
                task.retries += 1  # a rate-limit retry does not use up a retry
        else:
            logger.info('Task %s rate-limited on "%s"', task.id, exc.key)
        huey._emit(S.SIGNAL_RATE_LIMITED, task)
        return None, exc, retry_eta
    except TaskLockedException as exc:
        logger.warning('Task %s not run, %s.', task.id, exc)
        huey._emit(S.SIGNAL_LOCKED, task)
        return None, exc, None
    except RetryTask as exc:
        logger.info('Task %s raised RetryTask, retrying.', task.id)
        task.retries += 1
        retry_eta = None
        if exc.eta or exc.delay is not None:
            retry_eta = normalize_time(exc.eta, exc.delay, huey.utc)
        return None, exc, retry_eta
    except CancelExecution as exc:
        if exc.retry or (exc.retry is None and task.retries):
            task.retries = max(task.retries, 1)
            note = '(task will be retried)'
        else:
            task.retries = 0
            note = '(aborted, will not be retried)'
        logger.warning('Task %s raised CancelExecution %s.', task.id, note)
        huey._emit(S.SIGNAL_CANCELED, task)
        return None, exc, None
    except KeyboardInterrupt:
        logger.warning('Received exit signal, %s did not finish.', task.id)
        huey._emit(S.SIGNAL_INTERRUPTED, task)
        raise Interrupted from None
    except Exception as exc:
        logger.exception('Unhandled exception in task %s.', task.id)
        huey._emit(S.SIGNAL_ERROR, task, exc)
        return None, exc, None
    finally:
        huey._tasks_in_flight.discard(task)
    logger.info('%s executed in %0.3fs', task, time.monotonic() - start)
    return value, None, None


def _fenced_by_write(huey, exception, periodic):
    """Whether a reliable run's fence is checked by its result write (``_finish``): for a
    success whose first write is ``_finish``'s."""
    return exception is None and not periodic and huey._direct_results


def record_success(huey, task, value, store, periodic):
    """Store the result (clearing a revocation made while the task ran), run post-execute
    hooks, send SIGNAL_COMPLETE, then enqueue the continuation and report to the chord."""
    if store and (value is not None or huey.store_none):
        if huey._direct_results:
            if not _finish(huey, task, task.id, huey.serializer.serialize(value)):
                return
        else:  # a subclass customises how results are stored
            huey.delete(task.revoke_id)
            huey.put_result(task.id, value)
    elif not periodic:
        if not _finish(huey, task, None, None):
            return
    run_post_execute(huey, task, value, None)
    huey._emit(S.SIGNAL_COMPLETE, task)
    if task.on_complete:
        task.on_complete.extend_data(value)
        huey.enqueue(task.on_complete)
    if task.chord_config is not None:
        report_to_chord(huey, task.chord_config, value)


def _finish(huey, task, key, data):
    """Clear the task's revocation flag and store ``data`` under ``key`` (None: no result);
    False when nothing was written because a reliable run lost its delivery (the fence,
    checked in the same step: ``ReliableDelivery.finish``). When the worker can take its
    next task now (``huey.prefetch``), that task's revocation flags are read in the same
    round trip (``storage.delete_put_and_peek``), where they would have been read anyway:
    after this write, before the next start. Hooks and signal receivers still run in
    between; one that revokes or restores anything (in this process) makes the next start
    read its flags again (``Revocations.changes``)."""
    if task.delivery is not None and huey._reliable is not None and huey._direct_results:
        return huey._reliable.finish(task, key, data)
    prefetch = task._prefetch
    ahead = None
    if prefetch is not None and huey._direct_results and not huey._custom_revocation:
        ahead = prefetch.take_ahead()
    if ahead is not None:
        changes = huey._revocations.changes
        keys = huey._revocations.keys(ahead)
        flags = huey.storage.delete_put_and_peek(task.revoke_id, key, data, keys)
        ahead._revocation_flags = (changes, flags)
    elif key is None:
        huey.delete(task.revoke_id)
    else:
        huey.storage.delete_and_put(task.revoke_id, key, data, is_result=True)
    return True


def record_failure(huey, task, value, exception, retry_eta, store, periodic):
    """Clear a revocation made while the task ran, store the error where it surfaces, run
    post-execute hooks, enqueue the ``on_error`` handler, then retry the task or, on its
    last failure, report to its chord."""
    if not periodic:
        huey.delete(task.revoke_id)
    final = not task.retries
    # Intermediate failures surface only when configured, and never for "retry later"
    # exceptions (rate limits, locks, RetryTask).
    surface = final or (
        huey.store_intermediate_errors and not isinstance(exception, RETRYING_EXCEPTIONS)
    )
    error = None
    if surface:
        error = Error(huey.build_error_result(task, exception))
        if store:
            # A final failure is also the result of every task left in the pipeline.
            failed = task
            while failed is not None:
                huey.put_result(failed.id, error)
                failed = failed.on_complete if final else None
    run_post_execute(huey, task, value, exception)
    if surface and task.on_error:
        handler = copy.copy(task.on_error)  # on_error is shared across retries
        handler.extend_data(exception)
        huey.enqueue(handler)
    if final:
        abort_chord_member(huey, task, error)
    else:
        huey._emit(S.SIGNAL_RETRYING, task)
        requeue(huey, task, huey._get_timestamp(), retry_eta)


def requeue(huey, task, timestamp, retry_eta=None):
    """Use up one retry: schedule the task for ``retry_eta`` or after its retry delay
    (growing by ``retry_backoff``), or enqueue it at once."""
    task.retries -= 1
    logger.info('Requeueing %s, %s retries', task.id, task.retries)
    if retry_eta is not None:
        task.eta = retry_eta
        huey.add_schedule(task)
    elif task.retry_delay:
        task.eta = timestamp + datetime.timedelta(seconds=task.retry_delay)
        if task.retry_backoff:
            task.retry_delay *= task.retry_backoff
        huey.add_schedule(task)
    else:
        huey.enqueue(task)


def run_pre_execute(huey, task):
    """Call the pre-execute hooks; ``CancelExecution`` from one propagates."""
    for name, callback in huey._pre_execute.items():
        logger.debug('Pre-execute hook %s for %s.', name, task)
        try:
            callback(task)
        except CancelExecution:
            logger.warning('Task %s cancelled by %s (pre-execute).', task, name)
            raise
        except Exception:
            logger.exception('Unhandled exception calling pre-execute hook %s for %s.', name, task)


def run_post_execute(huey, task, value, exception):
    for name, callback in huey._post_execute.items():
        logger.debug('Post-execute hook %s for %s.', name, task)
        try:
            callback(task, value, exception)
        except Exception:
            logger.exception(
                'Unhandled exception calling post-execute hook %s for %s.', name, task
            )


def error_result(task, exception):
    """The dict stored (wrapped in ``Error``) as a failed task's result."""
    tb = ''.join(traceback.format_exception(type(exception), exception, exception.__traceback__))
    if isinstance(exception, TaskException):
        error = exception.metadata.get('error') or repr(exception)
    else:
        error = repr(exception)
    return {'error': error, 'retries': task.retries, 'traceback': tb, 'task_id': task.id}
