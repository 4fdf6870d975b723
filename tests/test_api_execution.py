"""Execution outcomes: retries, RetryTask, CancelExecution, errors, revocation, signals."""

import datetime

import pytest

from huey import MemoryHuey, signals
from huey.exceptions import CancelExecution, RetryTask, TaskException
from huey.utils import Error

from conftest import run_next


@pytest.fixture
def huey():
    return MemoryHuey(utc=False)


def record_signals(huey):
    seen = []
    huey.signal()(lambda sig, task, *args: seen.append(sig))
    return seen


def test_failure_raises_task_exception_with_metadata(huey):
    @huey.task()
    def boom():
        raise ValueError('bad value')

    r = boom()
    seen = record_signals(huey)
    run_next(huey)
    with pytest.raises(TaskException) as exc:
        r.get()
    meta = exc.value.metadata
    assert meta['error'] == "ValueError('bad value')" and meta['retries'] == 0
    assert meta['task_id'] == r.id and 'Traceback' in meta['traceback']
    assert str(exc.value) == "ValueError('bad value')"
    assert seen == [signals.SIGNAL_EXECUTING, signals.SIGNAL_ERROR]


def test_retries_requeue_until_exhausted(huey):
    attempts = []

    @huey.task(retries=2)
    def flaky():
        attempts.append(1)
        raise OSError('try again')

    r = flaky()
    seen = record_signals(huey)
    for _ in range(3):
        run_next(huey)
    assert len(attempts) == 3 and huey.pending_count() == 0
    with pytest.raises(TaskException) as exc:
        r()
    assert exc.value.metadata['retries'] == 0
    assert seen.count(signals.SIGNAL_RETRYING) == 2


def test_intermediate_errors_can_be_withheld():
    huey = MemoryHuey(store_intermediate_errors=False)

    @huey.task(retries=1)
    def flaky():
        raise OSError('x')

    r = flaky()
    run_next(huey)
    assert r() is None  # retry pending: nothing stored yet
    run_next(huey)
    with pytest.raises(TaskException):
        r()


def test_retry_delay_and_backoff_schedule_the_retry(huey):
    @huey.task(retries=2, retry_delay=10, retry_backoff=2)
    def flaky():
        raise OSError('x')

    flaky()
    now = datetime.datetime.now()
    run_next(huey, now)
    assert huey.pending_count() == 0 and huey.scheduled_count() == 1
    task = huey.scheduled()[0]
    assert task.retries == 1 and task.retry_delay == 20
    assert abs((task.eta - now).total_seconds() - 10) < 5


def test_retry_task_exception(huey):
    calls = []

    @huey.task()
    def again(n):
        calls.append(n)
        if len(calls) == 1:
            raise RetryTask('later', delay=30)
        if len(calls) == 2:
            raise RetryTask()
        return 'done'

    r = again(1)
    run_next(huey)
    scheduled = huey.scheduled()
    assert len(scheduled) == 1 and scheduled[0].retries == 0  # RetryTask adds a retry
    eta = scheduled[0].eta
    assert huey.execute(huey.read_schedule(eta)[0], eta) is None
    assert huey.pending_count() == 1  # no delay: straight back on the queue (eta kept)
    assert run_next(huey, eta) == 'done' and r() == 'done'


@pytest.mark.parametrize(
    'retry, retries, expect_retry',
    [
        (None, 0, False),
        (None, 2, True),
        (True, 0, True),
        (True, 2, True),
        (False, 0, False),
        (False, 2, False),
    ],
)
def test_cancel_execution_retry_table(huey, retry, retries, expect_retry):
    @huey.task(retries=retries)
    def cancels():
        raise CancelExecution(retry=retry)

    cancels()
    seen = record_signals(huey)
    run_next(huey)
    assert signals.SIGNAL_CANCELED in seen
    assert (huey.pending_count() == 1) is expect_retry


def test_cancel_in_pre_execute_skips_the_task(huey):
    ran = []

    @huey.pre_execute()
    def gate(task):
        if task.args == ('skip',):
            raise CancelExecution()

    @huey.task()
    def f(arg):
        ran.append(arg)

    f('skip')
    f('run')
    seen = record_signals(huey)
    run_next(huey), run_next(huey)
    assert ran == ['run'] and signals.SIGNAL_CANCELED in seen


def test_post_execute_sees_the_exception(huey):
    seen = []

    @huey.post_execute()
    def post(task, value, exc):
        seen.append((value, type(exc).__name__))

    @huey.task()
    def boom():
        raise KeyError('k')

    boom()
    run_next(huey)
    assert seen == [(None, 'KeyError')]


def test_revoke_task_and_restore(huey):
    @huey.task()
    def f():
        return 1

    r = f()
    r.revoke()
    assert r.is_revoked() and huey.is_revoked(r.task) and huey.is_revoked(r.id)
    seen = record_signals(huey)
    assert run_next(huey) is None and r() is None
    assert signals.SIGNAL_REVOKED in seen
    assert not r.is_revoked()  # revoke_once (the Result default) is consumed by that run

    r2 = f()
    huey.revoke_by_id(r2.id)
    assert huey.restore_by_id(r2.id) is True
    assert run_next(huey) == 1


def test_revoke_all_until_and_once(huey):
    @huey.task()
    def f():
        return 'ran'

    f.revoke()
    assert f.is_revoked()
    f()
    assert run_next(huey) is None
    assert f.restore() is True and not f.is_revoked()

    now = datetime.datetime.now()
    f.revoke(revoke_until=now + datetime.timedelta(seconds=60))
    f()
    assert huey.execute(huey.dequeue(), now) is None
    f()
    later = now + datetime.timedelta(seconds=61)
    assert huey.execute(huey.dequeue(), later) == 'ran'
    assert not f.is_revoked()  # the expired revocation was removed by that run

    f.revoke(revoke_once=True)
    f(), f()
    assert run_next(huey) is None and run_next(huey) == 'ran'


def test_revoked_while_running_applies_to_that_run_only(huey):
    @huey.task(context=True)
    def f(task=None):
        huey.revoke_by_id(task.id)
        return 'done'

    r = f()
    assert run_next(huey) == 'done'
    assert not huey.is_revoked(r.id)


def test_periodic_tasks_are_matched_by_their_validator(huey):
    @huey.periodic_task(lambda dt: dt.minute == 30)
    def every_half_hour():
        return 'tick'

    at = datetime.datetime(2026, 1, 1, 10, 30)
    tasks = huey.read_periodic(at)
    assert [t.name for t in tasks] == ['every_half_hour']
    assert huey.read_periodic(at.replace(minute=31)) == []
    huey.enqueue(tasks[0])
    assert run_next(huey) == 'tick'
    assert huey.result_count() == 0  # periodic task results are not stored


def test_every_signal_fires_with_the_documented_arguments(huey):
    received = {}

    @huey.signal()
    def any_signal(signal, task, *args):
        received.setdefault(signal, []).append(args)

    @huey.task(retries=1)
    def boom():
        raise RuntimeError('x')

    @huey.task()
    def ok():
        return 1

    ok()
    run_next(huey)
    boom()
    run_next(huey)
    run_next(huey)  # the retry
    later = ok.schedule(delay=60)
    run_next(huey)
    later.revoke()
    huey.notify_interrupted_tasks()
    assert set(received) >= {
        signals.SIGNAL_ENQUEUED,
        signals.SIGNAL_EXECUTING,
        signals.SIGNAL_COMPLETE,
        signals.SIGNAL_ERROR,
        signals.SIGNAL_RETRYING,
        signals.SIGNAL_SCHEDULED,
    }
    assert all(isinstance(args[0], RuntimeError) for args in received[signals.SIGNAL_ERROR])
    assert received[signals.SIGNAL_COMPLETE] == [()]


def test_signal_receiver_errors_are_logged(huey, caplog):
    @huey.signal(signals.SIGNAL_ENQUEUED)
    def broken(signal, task):
        raise RuntimeError('receiver broke')

    @huey.task()
    def f():
        pass

    f()
    assert huey.pending_count() == 1 and 'receiver broke' in caplog.text


def test_disconnect_signal(huey):
    seen = []

    def receiver(signal, task):
        seen.append(signal)

    huey.signal(signals.SIGNAL_ENQUEUED, signals.SIGNAL_EXECUTING)(receiver)
    huey.disconnect_signal(receiver, signals.SIGNAL_EXECUTING)

    @huey.task()
    def f():
        pass

    f()
    run_next(huey)
    assert seen == [signals.SIGNAL_ENQUEUED]
    huey.disconnect_signal(receiver)
    f()
    assert seen == [signals.SIGNAL_ENQUEUED]


def test_interrupted_tasks_are_notified(huey):
    seen = []
    huey.signal(signals.SIGNAL_INTERRUPTED)(lambda sig, task: seen.append(task.id))

    @huey.task(context=True)
    def long(task=None):
        huey.notify_interrupted_tasks()  # as the consumer does when killed mid-task
        return 'finished'

    r = long()
    run_next(huey)
    assert seen == [r.id]


def test_error_result_is_an_error_namedtuple(huey):
    @huey.task()
    def boom():
        raise ValueError()

    r = boom()
    run_next(huey)
    raw = huey.serializer.deserialize(huey.storage.peek_data(r.id))
    assert isinstance(raw, Error) and raw.metadata['task_id'] == r.id
