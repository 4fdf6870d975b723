"""huey.contrib.asyncio against a real consumer running in this process on a SqliteHuey."""

import asyncio
import threading
import time

import pytest

from huey import SqliteHuey
from huey.contrib.asyncio import aget_result, aget_result_group
from huey.exceptions import ResultTimeout, TaskException


@pytest.fixture
def huey(tmp_path):
    return SqliteHuey('asyncio-test', filename=str(tmp_path / 'huey.db'))


@pytest.fixture
def consumer(huey, run_consumer):
    """Start a 2-thread consumer (stopped after the test, see conftest ``run_consumer``)."""
    return lambda: run_consumer(huey)


@pytest.fixture
def tasks(huey):
    """Tasks whose completion the test controls: ``gate(n)`` returns n once ``release(n)``."""
    events = {}
    lock = threading.Lock()

    def event(n):
        with lock:
            return events.setdefault(n, threading.Event())

    @huey.task()
    def add(a, b):
        return a + b

    @huey.task()
    def gate(n):
        if not event(n).wait(10):
            raise RuntimeError(f'gate {n} was never released')
        return n

    @huey.task()
    def fail(message):
        raise ValueError(message)

    class Tasks:
        pass

    t = Tasks()
    t.add, t.gate, t.fail, t.release = add, gate, fail, lambda n: event(n).set()
    return t


def test_aget_result_returns_the_task_value(consumer, tasks):
    consumer()

    async def main():
        return await aget_result(tasks.add(1, 2))

    assert asyncio.run(main()) == 3


def test_aget_result_waits_without_blocking_the_event_loop(consumer, tasks):
    consumer()
    result = tasks.gate(1)

    async def main():
        ticks = 0
        waiting = asyncio.ensure_future(aget_result(result, max_delay=0.02))
        # The loop keeps running other coroutines while the task is still blocked...
        while ticks < 5:
            await asyncio.sleep(0.01)
            ticks += 1
        assert not waiting.done()
        tasks.release(1)  # ...and the wait ends once the task can finish.
        return await asyncio.wait_for(waiting, 10), ticks

    assert asyncio.run(main()) == (1, 5)


def test_aget_result_raises_task_exception_for_a_failed_task(consumer, tasks):
    consumer()

    async def main():
        return await aget_result(tasks.fail('boom'))

    with pytest.raises(TaskException) as info:
        asyncio.run(main())
    assert info.value.metadata['error'] == "ValueError('boom')"


def test_aget_result_consumes_the_result_unless_preserved(consumer, tasks, huey):
    consumer()
    kept = tasks.add(2, 2)
    taken = tasks.add(3, 3)

    async def main():
        return await asyncio.gather(aget_result(kept, preserve=True), aget_result(taken))

    assert asyncio.run(main()) == [4, 6]
    assert huey.get(kept.id, peek=True) == 4
    assert huey.get(taken.id, peek=True) is None


def test_aget_result_timeout(huey, tasks):
    result = tasks.add(1, 1)  # No consumer: the result never arrives.

    async def main():
        started = time.monotonic()
        with pytest.raises(ResultTimeout):
            await aget_result(result, timeout=0.2)
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    assert 0.2 <= elapsed < 1.0  # Stops at the deadline, not at the next full back-off.
    assert huey.pending_count() == 1  # A timeout does not revoke or dequeue the task.


def test_aget_result_group_returns_values_in_order(consumer, tasks):
    consumer()
    group = tasks.gate.map([3, 1, 2])

    async def main():
        waiting = asyncio.ensure_future(aget_result_group(group, max_delay=0.02))
        for n in (1, 2, 3):  # Finish them out of the group's order.
            tasks.release(n)
        return await asyncio.wait_for(waiting, 10)

    assert asyncio.run(main()) == [3, 1, 2]


def test_aget_result_group_passes_options_and_cancels_the_rest_on_failure(consumer, tasks):
    consumer()
    group = tasks.gate.map([10, 11])

    async def main():
        with pytest.raises(ResultTimeout):
            await aget_result_group(group, 1.15, 0.02, False, 0.2)
        # The other wait was cancelled, not left polling: no task but this one remains.
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(main()) == []
    tasks.release(10)
    tasks.release(11)
