"""huey.contrib.stats with real consumers: what a dashboard reads after tasks really ran."""

import threading
import time

import peewee
import pytest

from huey import SqliteHuey
from huey import signals as S

# dashboard_context and known_tasks from huey.contrib.stats, where huey 3.5.4 has them.
from huey.contrib.stats import (
    DEAD_LETTER_TASK,
    HueyStats,
    dashboard_context,
    enable_stats,
    known_tasks,
)

WAIT = 30


@pytest.fixture
def make(tmp_path):
    """(huey, stats) pairs on a SqliteHuey and a stats database in tmp_path; closed after."""
    made = []

    def make_pair(name='stats', db_name='stats.db', **options):
        huey = SqliteHuey(name, filename=str(tmp_path / f'{name}-queue.db'))
        db = peewee.SqliteDatabase(str(tmp_path / db_name), timeout=WAIT)
        stats = enable_stats(huey, db, **{'flush_interval': 0.05, **options})
        made.append((huey, stats))
        return huey, stats

    yield make_pair
    for huey, stats in made:
        stats.close()
        huey.storage.close()


@pytest.fixture
def start_consumer():
    consumers = []

    def start(huey, **options):
        consumer = huey.create_consumer(initial_delay=0.01, max_delay=0.05, **options)
        consumer.start()
        consumers.append(consumer)
        return consumer

    def stop_all():
        while consumers:
            consumer = consumers.pop()
            consumer.stop(graceful=True)
            for _, worker in consumer.worker_threads:
                worker.join(WAIT)
            consumer.scheduler.join(WAIT)

    start.stop_all = stop_all
    yield start
    stop_all()


def wait_for(check, what):
    deadline = time.monotonic() + WAIT
    while not (value := check()):
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.02)
    return value


def test_a_consumers_tasks_show_up_in_every_reading(make, start_consumer):
    huey, stats = make()
    release = threading.Event()

    @huey.task()
    def add(a, b):
        return a + b

    @huey.task(retries=1)
    def broken():
        raise ValueError('broken on purpose')

    @huey.task()
    def slow():
        release.wait(WAIT)

    start_consumer(huey, workers=3)
    assert [add(i, 1).get(blocking=True, timeout=WAIT) for i in range(5)] == [1, 2, 3, 4, 5]
    broken()
    slow()

    running = wait_for(stats.inflight, 'the slow task to be recorded as running')
    assert [row['task'] for row in running] == ['slow']
    release.set()
    wait_for(lambda: not stats.inflight(), 'the slow task to finish')
    wait_for(lambda: stats.overview()['errors'] == 2, 'both attempts of broken to fail')

    overview = stats.overview()
    assert (overview['completed'], overview['errors'], overview['retries']) == (6, 2, 1)
    assert overview['error_rate'] == pytest.approx(2 / 8)
    rows = {row['task']: row for row in stats.task_breakdown()}
    assert (rows['add']['executed'], rows['add']['completed']) == (5, 5)
    assert rows['add']['avg'] is not None and rows['add']['avg'] >= 0
    assert (rows['broken']['errors'], rows['broken']['retries']) == (2, 1)
    assert sum(stats.throughput(5)['complete']) == 6
    assert sum(stats.throughput(5)['error']) == 2

    total, errors = stats.search_events(signal=S.SIGNAL_ERROR)
    assert total == 2 and all('broken on purpose' in e['error'] for e in errors)
    assert stats.search_events(q='BROKEN ON')[0] == 2
    assert set(stats.event_signals()) >= {S.SIGNAL_EXECUTING, S.SIGNAL_COMPLETE, S.SIGNAL_ERROR}

    context = dashboard_context(huey, stats)
    # add's results were read (and so removed); broken's error is kept.
    assert context['live'] == {'pending': 0, 'scheduled': 0, 'results': 1}
    assert {row['task'] for row in context['known']} == {'add', 'broken', 'slow'}


def test_a_dead_letter_is_recorded_without_a_task(make, start_consumer):
    huey, stats = make()
    huey.storage.enqueue(b'garbage, not a task')
    start_consumer(huey, workers=1)
    wait_for(lambda: huey.dead_letter_count() == 1, 'the message to be set aside')
    [event] = wait_for(lambda: stats.search_events(signal=S.SIGNAL_DEAD_LETTER)[1], 'the event')
    [letter] = huey.dead_letters()
    assert event['task_full'] == DEAD_LETTER_TASK
    assert event['task_id'] == letter['id']
    assert 'pickle' in event['error'].lower()
    assert stats.overview()['dead_letters'] == 1
    assert stats.task_breakdown() == []  # Not a task of its own.


def test_process_workers_record_and_flush_at_shutdown(make, start_consumer):
    huey, stats = make(flush_interval=3600)  # Only the shutdown flush can write.

    @huey.task()
    def square(n):
        return n * n

    start_consumer(huey, workers=2, worker_type='process')
    assert [square(n).get(blocking=True, timeout=WAIT) for n in range(4)] == [0, 1, 4, 9]
    start_consumer.stop_all()
    # Each worker wrote its own events in its shutdown hook before leaving.
    assert stats.overview()['completed'] == 4
    # This process only enqueued: its own events wait for its writer (or its exit).
    assert {row['signal'] for row in stats._buf} == {S.SIGNAL_ENQUEUED}


def test_two_hueys_record_into_their_own_databases(make):
    first, first_stats = make('first', 'first.db')
    second, second_stats = make('second', 'second.db')
    for huey in (first, second):

        @huey.task(name='job')
        def job():
            return 1

        huey.execute(job.s())
    for stats in (first_stats, second_stats):
        wait_for(lambda s=stats: s.overview()['completed'] == 1, 'one completion each')
        assert [e['task'] for e in stats.search_events(signal=S.SIGNAL_COMPLETE)[1]] == ['job']
    # Once per Huey: a second call returns the recorder already running.
    assert enable_stats(first, peewee.SqliteDatabase(':memory:')) is first_stats
    assert isinstance(first_stats, HueyStats)


def test_a_failing_database_loses_the_batch_but_never_the_task(make, caplog, tmp_path):
    huey, stats = make()

    @huey.task()
    def add(a, b):
        return a + b

    stats._event._meta.database.close()
    stats._event._meta.database.init(str(tmp_path / 'missing-dir' / 'stats.db'))
    result = huey.execute(add.s(1, 2))  # Recording never gets in the task's way.
    assert result == 3
    with caplog.at_level('ERROR', logger='huey.stats'):
        assert stats._flush() == 0
    assert 'could not write' in caplog.text
    assert stats._buf == []


def test_stats_and_a_reliable_sqlite_queue_share_one_database_file(tmp_path):
    # huey.contrib.stats owns the huey_inflight table (huey 3.5.4's name); the reliable
    # Sqlite queue keeps its in-flight rows in tables of its own.
    path = str(tmp_path / 'everything.db')
    huey = SqliteHuey('one-file', filename=path, reliable=True)
    stats = enable_stats(huey, peewee.SqliteDatabase(path, timeout=WAIT), flush_interval=3600)
    try:

        @huey.task()
        def add(a, b):
            return a + b

        add(1, 2)
        task = huey.dequeue()
        assert [row[1] for row in huey.storage.inflight_items()] == [
            huey._reliable.leases().consumer
        ]
        huey.execute(task)
        assert huey.result(task.id) == 3
        assert stats._flush() > 0
        assert stats.overview()['completed'] == 1
        assert stats.inflight() == [] and huey.storage.inflight_items() == []
    finally:
        stats.close()
        huey.storage.close()


def test_known_tasks_lists_the_registered_tasks_and_whether_they_are_revoked(tmp_path):
    huey = SqliteHuey('known', filename=str(tmp_path / 'known.db'))

    @huey.task()
    def alpha():
        pass

    @huey.task()
    def beta():
        pass

    alpha.revoke()
    rows = {row['task']: row for row in known_tasks(huey)}
    assert set(rows) == {'alpha', 'beta'}
    assert (rows['alpha']['revoked'], rows['beta']['revoked']) == (True, False)
    assert rows['alpha']['full'].endswith('.alpha')
