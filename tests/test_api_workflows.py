"""Pipelines, groups, chords, Result/ResultGroup/ChordResult, locks and rate limits."""

import time

import pytest

from huey import MemoryHuey, chord, group, signals
from huey.exceptions import (
    RateLimitExceeded,
    ResultTimeout,
    TaskException,
    TaskLockedException,
)
from huey.result import ChordResult, Result, ResultGroup


@pytest.fixture
def huey():
    return MemoryHuey(utc=False)


def drain(huey):
    count = 0
    while (task := huey.dequeue()) is not None:
        huey.execute(task)
        count += 1
    return count


@pytest.fixture
def math(huey):
    @huey.task()
    def add(a, b):
        return a + b

    @huey.task()
    def mul(a, b):
        return a * b

    @huey.task()
    def collect(values):
        return sorted(values)

    @huey.task()
    def fail(*args):
        raise ValueError('member failed')

    return add, mul, collect, fail


def test_pipeline_passes_results_along(huey, math):
    add, mul, _, _ = math
    pipeline = add.s(1, 2).then(mul, 10).then(add, 5)
    results = huey.enqueue(pipeline)
    assert isinstance(results, ResultGroup) and len(results) == 3
    drain(huey)
    assert results.get() == [3, 30, 35]


def test_pipeline_tuple_and_dict_results(huey):
    @huey.task()
    def pair():
        return (2, 3)

    @huey.task()
    def named():
        return {'b': 7}

    @huey.task()
    def add(a, b):
        return a + b

    r1 = huey.enqueue(pair.s().then(add))
    r2 = huey.enqueue(named.s().then(add, 1))
    drain(huey)
    assert r1.get() == [(2, 3), 5] and r2.get() == [{'b': 7}, 8]


def test_pipeline_failure_fails_the_rest_and_runs_error_handler(huey, math):
    add, _, _, fail = math
    errors = []

    @huey.task()
    def on_error(exc):
        errors.append(type(exc).__name__)

    results = huey.enqueue(fail.s().error(on_error).then(add, 1, 2))
    drain(huey)
    for r in results:
        with pytest.raises(TaskException):
            r.get()
    assert errors == ['ValueError']


def test_group_returns_a_result_group(huey, math):
    add, _, _, _ = math
    results = huey.enqueue(group([add.s(1, 1), add.s(2, 2)]))
    assert isinstance(results, ResultGroup)
    drain(huey)
    assert results.get() == [2, 4] and results[1] == 4
    assert [r.get() for r in results] == [2, 4]  # cached by the handle once read


def test_chord_collects_results_in_member_order(huey, math):
    add, mul, collect, _ = math

    @huey.task()
    def identity(values):
        return values

    r = huey.enqueue(group([add.s(5, 5), mul.s(2, 3), add.s(1, 1)]).then(identity))
    assert isinstance(r, ChordResult)
    drain(huey)
    assert r.get() == [10, 6, 2] and r() == [10, 6, 2]
    assert r.results.get() == [10, 6, 2]
    assert huey.storage._counters == {}  # chord bookkeeping cleaned up
    assert huey.result_count() == 0


def test_chord_members_can_be_pipelines_and_chords(huey, math):
    add, mul, collect, _ = math

    @huey.task()
    def total(values):
        return sum(values)

    inner = chord([add.s(1, 1), add.s(2, 2)], total.s())
    r = huey.enqueue(chord([add.s(1, 2).then(mul, 10), inner], total.s()).then(mul, 2))
    drain(huey)
    assert r.get() == 36
    assert r.pipeline_results.get() == [36, 72]


def test_chord_failed_member_delivers_its_error(huey, math):
    add, _, _, fail = math

    @huey.task()
    def inspect_values(values):
        return [type(v).__name__ for v in values]

    r = huey.enqueue(chord([add.s(1, 1), fail.s()], inspect_values.s()))
    drain(huey)
    assert r.get() == ['int', 'Error']


def test_empty_chord_runs_callback_with_empty_list(huey, math):
    _, _, collect, _ = math
    r = huey.enqueue(chord([], collect.s()))
    drain(huey)
    assert r.get() == []


def test_revoked_chord_member_reports_skipped(huey, math):
    add, _, _, _ = math
    from huey.utils import SKIPPED

    @huey.task()
    def seen(values):
        return values

    r = huey.enqueue(chord([add.s(1, 1), add.s(2, 2)], seen.s()))
    r.results._results[1].revoke()
    drain(huey)
    assert r.get() == [2, SKIPPED]


def test_group_cannot_be_a_chord_member(huey, math):
    add, _, collect, _ = math
    with pytest.raises(ValueError, match='chord member'):
        huey.enqueue(chord([group([add.s(1, 1)])], collect.s()))


def test_result_blocking_get_timeout_and_revoke_on_timeout(huey, math):
    add, _, _, _ = math
    r = add(1, 2)
    start = time.monotonic()
    with pytest.raises(ResultTimeout):
        r.get(blocking=True, timeout=0.05)
    assert time.monotonic() - start >= 0.05
    with pytest.raises(ResultTimeout):
        r.get(blocking=True, timeout=0.01, revoke_on_timeout=True)
    assert r.is_revoked()


def test_result_preserve_reset_and_restore(huey, math):
    add, _, _, _ = math
    r = add(2, 2)
    drain(huey)
    assert r.get(preserve=True) == 4
    r.reset()
    assert r.get() == 4
    r.reset()
    assert r.get() is None  # popped by the previous get
    r2 = add(1, 1)
    r2.revoke()
    assert r2.restore() is True and not r2.is_revoked()
    assert repr(r2) == f'<Result: task {r2.id}>'


def test_reschedule_revokes_and_enqueues_a_copy(huey, math):
    add, mul, _, _ = math
    r = list(huey.enqueue(add.s(1, 2).then(mul, 3)))[0]
    new = r.reschedule(delay=60, priority=9)
    assert isinstance(new, ResultGroup)  # the pipeline came along
    assert r.is_revoked()
    copy = next(t for t in huey.pending() if t.id != r.id)
    assert copy.priority == 9 and copy.eta is not None and copy.on_complete is not None
    assert copy.args == (1, 2)
    plain = r.reschedule(preserve_pipeline=False)
    assert isinstance(plain, Result)


def test_result_group_as_completed(huey, math):
    add, _, _, _ = math
    group_result = add.map([(1, 1), (2, 2), (3, 3)])
    drain(huey)
    assert sorted(group_result.as_completed()) == [2, 4, 6]


def test_task_lock_context_and_decorator(huey):
    lock = huey.lock_task('resource')
    with lock:
        assert huey.is_locked('resource') and lock.is_locked()
        with pytest.raises(TaskLockedException):
            with huey.lock_task('resource'):
                pass
    assert not huey.is_locked('resource')
    assert lock.acquire() is True
    assert huey.flush_locks() == {'resource'}
    assert lock.acquire() and lock.release() and not lock.locked()

    @huey.task(retries=1)
    @huey.lock_task('exclusive')
    def exclusive():
        return 'ok'

    huey.lock_task('exclusive').acquire()
    seen = []
    huey.signal(signals.SIGNAL_LOCKED)(lambda sig, task: seen.append(sig))
    r = exclusive()
    drain(huey)  # locked: retried once, still locked, then fails
    with pytest.raises(TaskException, match='TaskLockedException'):
        r.get()
    assert seen == [signals.SIGNAL_LOCKED, signals.SIGNAL_LOCKED]
    assert huey.flush_locks('exclusive', 'other') == {'exclusive'}


def test_rate_limit_window(huey):
    rl = huey.rate_limit('api', limit=2, per=3600)
    rl.acquire()
    rl.acquire()
    assert rl.current_usage() == 2
    with pytest.raises(RateLimitExceeded) as exc:
        rl.acquire()
    assert exc.value.retry and 0 < exc.value.delay <= 3600
    assert 'retry in' in str(exc.value)
    rl.reset()
    assert rl.current_usage() == 0


@pytest.mark.parametrize(
    'retry, retries, expect_scheduled',
    [
        (True, 0, True),
        (True, 2, True),
        (False, 2, True),
        (False, 0, False),
    ],
)
def test_rate_limited_task_retry_table(huey, retry, retries, expect_scheduled):
    @huey.task(retries=retries)
    @huey.rate_limit('limited', limit=0, per=3600, retry=retry)
    def limited():
        return 'ran'

    seen = []
    huey.signal(signals.SIGNAL_RATE_LIMITED)(lambda sig, task: seen.append(sig))
    limited()
    drain(huey)
    assert seen == [signals.SIGNAL_RATE_LIMITED]
    assert (huey.scheduled_count() == 1) is expect_scheduled
    if expect_scheduled:
        task = huey.scheduled()[0]
        # retry=True does not use up one of the task's own retries
        assert task.retries == (retries if retry else retries - 1)


def test_rate_limit_rejects_bad_arguments(huey):
    with pytest.raises(ValueError, match='per'):
        huey.rate_limit('x', limit=1, per=0)
