"""huey.contrib.mini: MiniHuey on real gevent greenlets."""

import datetime
import time

import pytest

gevent = pytest.importorskip('gevent')

from gevent.event import Event  # noqa: E402

from huey import crontab  # noqa: E402
from huey.contrib.mini import MiniHuey, MiniHueyResult  # noqa: E402


def wait_until(condition, timeout=10):
    """Yield to other greenlets until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, 'condition not met in time'
        gevent.sleep(0.01)


@pytest.fixture
def mini():
    huey = MiniHuey('mini-test', interval=0.01)
    huey.start()
    yield huey
    if huey._run_t is not None:
        huey.stop()


def test_task_runs_on_a_greenlet_and_returns_a_result(mini):
    @mini.task()
    def add(a, b=0):
        return a + b

    result = add(1, b=2)
    assert isinstance(result, MiniHueyResult)
    assert result.get(timeout=5) == 3
    assert add(3, 4)(timeout=5) == 7  # Calling the result waits for it too.
    assert add.__name__ == 'add'


def test_task_error_is_raised_by_get(mini):
    @mini.task()
    def fail():
        raise ValueError('nope')

    result = fail()
    with pytest.raises(ValueError, match='nope'):
        result.get(timeout=5)
    assert isinstance(result.exception, ValueError)


def test_tasks_run_concurrently_up_to_pool_size():
    huey = MiniHuey(pool_size=2)
    gate = Event()
    running = []

    @huey.task()
    def wait(n):
        running.append(n)
        gate.wait(5)
        return n

    calling = Event()

    def call_third():
        calling.set()  # Does not switch: this greenlet goes straight on into the call.
        return wait(2)

    first = [wait(0), wait(1)]
    # A full pool makes the caller wait for a free greenlet (gevent Pool semantics).
    third = gevent.spawn(call_third)
    assert calling.wait(5)
    wait_until(lambda: len(running) >= 2)
    assert running == [0, 1] and not third.ready()
    gate.set()
    assert [r.get(timeout=5) for r in first] == [0, 1]
    assert third.get(timeout=5).get(timeout=5) == 2


def test_schedule_runs_tasks_in_eta_order(mini):
    order = []

    @mini.task()
    def record(label):
        order.append(label)
        return label

    now = datetime.datetime.now()
    late = record.schedule(('late',), eta=now + datetime.timedelta(seconds=0.2))
    middle = record.schedule(kwargs={'label': 'middle'}, delay=0.1)
    early = record.schedule(args=('early',), delay=datetime.timedelta(seconds=0.05))
    assert not early.ready()  # Not run at once.
    assert late.get(timeout=5) == 'late'
    assert early.get(timeout=5) == 'early' and middle.get(timeout=5) == 'middle'
    assert order == ['early', 'middle', 'late']


def test_schedule_accepts_an_aware_eta(mini):
    @mini.task()
    def answer():
        return 42

    # Converted to naive local time (whole seconds, as huey does).
    eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=0.1)
    assert answer.schedule(eta=eta).get(timeout=5) == 42


def test_schedule_needs_exactly_one_of_delay_and_eta(mini):
    @mini.task()
    def noop():
        pass

    with pytest.raises(ValueError):
        noop.schedule()
    with pytest.raises(ValueError):
        noop.schedule(delay=1, eta=datetime.datetime.now())


def test_periodic_task_runs_when_validate_accepts_the_minute(mini):
    seen = []
    ran = Event()

    @mini.periodic_task(crontab())  # Every minute.
    def every_minute():
        ran.set()

    def validate(now):
        seen.append(now)
        return False

    @mini.task(validate)
    def never():
        raise AssertionError('validate rejected this minute')

    assert every_minute.__name__ == 'every_minute'  # Returned undecorated.
    mini._last_check -= datetime.timedelta(minutes=1)  # As if a new minute had begun.
    assert ran.wait(5)
    assert seen and isinstance(seen[0], datetime.datetime) and seen[0].tzinfo is None


def test_periodic_check_runs_once_per_minute():
    # Not started: the test makes the scheduler passes itself, at times it chooses, so the
    # wall clock crossing a minute cannot change the outcome.
    huey = MiniHuey()
    runs = []

    @huey.periodic_task(lambda now: True)
    def tick():
        runs.append(1)

    def passes_during(minute):
        """Ten scheduler passes spread over ``minute``; returns how many runs they caused."""
        before = len(runs)
        for second in range(0, 60, 6):
            huey._tick(minute + datetime.timedelta(seconds=second))
        assert huey._pool.join(timeout=5)
        return len(runs) - before

    created = huey._last_check
    assert passes_during(created) == 0  # The minute it was created in: nothing due.
    assert passes_during(created + datetime.timedelta(minutes=1)) == 1
    assert passes_during(created + datetime.timedelta(minutes=2)) == 1


def test_broken_validate_function_does_not_stop_the_runner(mini):
    called = Event()

    def broken_validate(now):
        called.set()
        return 1 / 0

    @mini.task(broken_validate)
    def broken():
        pass

    @mini.task()
    def add(a, b):
        return a + b

    mini._last_check -= datetime.timedelta(minutes=1)
    assert called.wait(5)
    assert not mini._run_t.dead
    assert add.schedule((1, 2), delay=0.02).get(timeout=5) == 3


def test_start_stop_and_restart(mini):
    with pytest.raises(Exception, match='already running'):
        mini.start()
    mini.stop()
    assert mini._run_t is None
    with pytest.raises(Exception, match='not appear to have started'):
        mini.stop()

    @mini.task()
    def add(a, b):
        return a + b

    pending = add.schedule((1, 1), eta=datetime.datetime.now())  # Due at once.
    # Deliberate sleep: five scheduler intervals, in which a runner still going would have
    # started the due task.
    gevent.sleep(0.05)
    assert not pending.ready()  # Stopped: nothing moves the schedule.
    mini.start()
    assert pending.get(timeout=5) == 2
