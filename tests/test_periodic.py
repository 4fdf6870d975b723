"""One scheduler for many consumers (``huey.periodic``): three real Consumer objects share a
storage (Memory, File, Sqlite, Redis, and SqlHuey for the storage default), each with its
own clock, and their schedulers are driven minute by minute through that clock (the Huey's
``_get_timestamp``, read once per scheduler pass); their workers run what was enqueued.
Every due minute of every periodic task must run exactly once; after an outage the catch-up
policies run what was missed once (``once``) or once per missed minute (``all``).

tests/test_periodic_processes.py does the same with real ``huey_consumer`` processes.
"""

import datetime
import os
import time

import pytest

from huey import FileHuey, MemoryHuey, RedisHuey, SqliteHuey, crontab
from huey.consumer import Consumer, Scheduler
from huey.contrib.sql_huey import SqlHuey
from huey.storage import BaseStorage, MemoryStorage
from huey.periodic import CLAIM_TTL, MAX_CATCH_UP_RUNS, PeriodicPlanner, parse_mark

START = datetime.datetime(2024, 5, 6, 12, 0)
MINUTE = datetime.timedelta(minutes=1)
BACKENDS = ['memory', 'file', 'sqlite', 'redis', 'sqlhuey']


class DrivenScheduler(Scheduler):
    """A scheduler whose passes the test makes: no waiting between them."""

    def sleep_for_interval(self, start_ts, nseconds):
        pass


class DrivenConsumer(Consumer):
    scheduler_class = DrivenScheduler


class Clock:
    """The simulated time; each consumer reads it with its own offset (skew)."""

    def __init__(self, now=START):
        self.now = now

    def reading(self, skew):
        return lambda: self.now + datetime.timedelta(seconds=skew)


class Fleet:
    """Consumers of one app on one shared storage; ``runs`` lists ``(task, minute)`` for
    every execution, the minute being the simulated one in which it ran."""

    def __init__(self, make_huey, catch_up=None):
        self.make_huey = make_huey
        self.catch_up = catch_up or {}
        self.clock = Clock()
        self.runs = []
        self.consumers = []

    def start(self, skews=(0, 7, 23)):
        """(Re)start the fleet: new Huey instances and Consumer objects (new names)."""
        self.consumers = []
        for skew in skews:
            huey = self.make_huey()
            huey._get_timestamp = self.clock.reading(skew)
            self._register(huey)
            consumer = DrivenConsumer(huey, workers=1, check_worker_health=False)
            self.consumers.append((consumer, consumer._create_scheduler()))
        return self

    def _register(self, huey):
        runs, clock = self.runs, self.clock
        policy = self.catch_up

        def task(name, spec):
            def run():
                runs.append((name, clock.now.replace(second=0)))

            run.__name__ = name
            huey.periodic_task(crontab(**spec), name=name, catch_up=policy.get(name, 'skip'))(run)

        task('every_minute', {'minute': '*'})
        task('every_two', {'minute': '*/2'})
        task('at_three', {'minute': '3'})

    def minute(self, passes=(0, 15, 30)):
        """Every consumer's scheduler passes at these seconds of the current minute (each
        consumer sees them shifted by its skew), then the workers run what was enqueued."""
        for second in passes:
            self.clock.now = self.clock.now.replace(second=second)
            for _, scheduler in self.consumers:
                scheduler.loop()
        self.drain()
        self.clock.now = self.clock.now.replace(second=0) + MINUTE

    def skip(self, minutes):
        """An outage: nobody checks these minutes."""
        self.clock.now += minutes * MINUTE

    def drain(self):
        """Run what was enqueued: until the queue and every consumer's prefetch buffer
        (huey.prefetch) are empty."""
        huey = self.consumers[0][0].huey

        def waiting(consumer):
            return len(huey) or len(consumer.prefetch)

        while any(waiting(consumer) for consumer, _ in self.consumers):
            for consumer, _ in self.consumers:
                worker, _ = consumer.worker_threads[0]
                if waiting(consumer):
                    worker.loop()

    def count(self, name):
        """``{minute offset: runs}`` of one task."""
        counts = {}
        for task, minute in self.runs:
            if task == name:
                offset = int((minute - START) / MINUTE)
                counts[offset] = counts.get(offset, 0) + 1
        return counts


@pytest.fixture
def make_huey(request, tmp_path):
    """A factory of Huey instances (one per consumer) sharing one storage of the backend."""
    backend = request.param
    name = 'periodic'
    if backend == 'memory':
        shared = MemoryHuey(name)

        def make():
            huey = MemoryHuey(name)
            huey.storage = shared.storage  # one process: three consumers, one storage
            return huey

    elif backend == 'file':

        def make():
            return FileHuey(name, path=str(tmp_path / 'files'))

    elif backend == 'sqlite':

        def make():
            return SqliteHuey(name, filename=str(tmp_path / 'huey.db'))

    elif backend == 'redis':
        port = request.getfixturevalue('redis_db').port

        def make():
            return RedisHuey(name, port=port)

    else:
        url = f'sqlite:///{tmp_path / "sql.db"}'

        def make():
            return SqlHuey(name, database=url)

    yield make


all_backends = pytest.mark.parametrize('make_huey', BACKENDS, indirect=True)


@all_backends
def test_three_consumers_run_each_due_minute_once(make_huey):
    fleet = Fleet(make_huey).start()
    for _ in range(5):
        fleet.minute()
    assert fleet.count('every_minute') == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}
    assert fleet.count('every_two') == {0: 1, 2: 1, 4: 1}
    assert fleet.count('at_three') == {3: 1}


@all_backends
def test_a_consumer_minutes_behind_does_not_run_those_minutes_again(make_huey):
    fleet = Fleet(make_huey).start(skews=(0, 10, -150))  # the third lags 2.5 minutes
    for _ in range(5):
        fleet.minute()
    # Between them the clocks reached 11:57 to 12:04, each minute once: the laggard ran
    # 11:57-11:59, which nobody else reached, and found 12:00-12:02 claimed.
    assert sum(fleet.count('every_minute').values()) == 8
    assert sum(fleet.count('every_two').values()) == 4  # 11:58, 12:00, 12:02, 12:04


@all_backends
@pytest.mark.parametrize('restart', [True, False], ids=['restarted', 'stalled'])
def test_catch_up_once_runs_a_three_minute_outage_once(make_huey, restart):
    fleet = Fleet(make_huey, {'every_minute': 'once', 'at_three': 'once'}).start()
    fleet.minute()
    fleet.minute()
    fleet.skip(3)  # 12:02, 12:03, 12:04: every consumer down (or stalled)
    if restart:
        fleet.start()
    fleet.minute()
    fleet.minute()
    assert fleet.count('every_minute') == {0: 1, 1: 1, 5: 2, 6: 1}  # 5: catch-up + 12:05
    assert fleet.count('at_three') == {5: 1}
    assert fleet.count('every_two') == {0: 1, 6: 1}  # skip: huey's behaviour


@all_backends
def test_catch_up_all_runs_each_missed_minute_once(make_huey):
    fleet = Fleet(make_huey, {'every_minute': 'all', 'every_two': 'all'}).start()
    fleet.minute()
    fleet.minute()
    fleet.skip(3)
    fleet.start()
    fleet.minute()
    fleet.minute()
    assert fleet.count('every_minute') == {0: 1, 1: 1, 5: 4, 6: 1}  # 12:02-12:04, 12:05
    assert fleet.count('every_two') == {0: 1, 5: 2, 6: 1}  # 12:02, 12:04
    assert fleet.count('at_three') == {}  # skip


@pytest.mark.parametrize('make_huey', ['memory'], indirect=True)
def test_catch_up_all_is_capped_to_the_most_recent_runs(make_huey):
    fleet = Fleet(make_huey, {'every_minute': 'all'}).start(skews=(0,))
    fleet.minute()
    fleet.skip(MAX_CATCH_UP_RUNS + 50)
    fleet.minute()
    assert sum(fleet.count('every_minute').values()) == 1 + MAX_CATCH_UP_RUNS + 1


@pytest.mark.parametrize('make_huey', ['memory'], indirect=True)
def test_no_catch_up_the_first_time_a_task_is_seen(make_huey):
    fleet = Fleet(make_huey, {'every_minute': 'all', 'at_three': 'once'}).start()
    fleet.skip(10)
    fleet.minute()
    assert fleet.count('every_minute') == {10: 1}
    assert fleet.count('at_three') == {}


@all_backends
def test_marks_record_the_last_run_and_who_enqueued_it(make_huey):
    fleet = Fleet(make_huey, {'every_minute': 'once', 'every_two': 'all'}).start()
    fleet.minute()
    fleet.minute()
    huey = fleet.consumers[0][0].huey
    marks = fleet.consumers[0][0].periodic_planner.marks()
    owners = {consumer.periodic_planner.owner for consumer, _ in fleet.consumers}
    names = {name.rsplit('.', 1)[1]: mark for name, mark in marks.items()}
    assert names['every_minute'][0] == START + MINUTE
    assert names['every_two'][0] == START
    assert 'at_three' not in names
    assert {mark[1] for mark in names.values()} <= owners
    key = fleet.consumers[0][0].periodic_planner.mark_key(next(iter(marks)))
    assert parse_mark(huey.storage.peek_data(key)) == marks[next(iter(marks))]


@pytest.mark.parametrize('make_huey', ['memory', 'file', 'sqlite', 'redis'], indirect=True)
def test_tasks_without_catch_up_store_nothing_in_the_results(make_huey):
    """As in huey 3.5.4, periodic runs leave the result store as it was (a storage with its own
    claims keeps them apart)."""
    fleet = Fleet(make_huey).start()
    for _ in range(3):
        fleet.minute()
    assert sum(fleet.count('every_minute').values()) == 3
    assert fleet.consumers[0][0].huey.storage.result_items() == {}


class NoClaimsStorage(MemoryStorage):
    """A storage as written for huey 3.5.4, whose ``put_if_empty`` was never implemented (so
    the default ``claim`` cannot work)."""

    claim = BaseStorage.claim

    def put_if_empty(self, key, value, ttl=None):
        raise NotImplementedError


def test_a_storage_that_cannot_claim_enqueues_as_huey_did(caplog):
    huey = MemoryHuey('periodic', storage_class=NoClaimsStorage)

    @huey.periodic_task(crontab())
    def every_minute():
        pass

    consumer = DrivenConsumer(huey, workers=1, check_worker_health=False)
    for minute in range(2):
        consumer._create_scheduler().loop(START + minute * MINUTE)
    assert [task.name for task in huey.pending()] == ['every_minute'] * 2
    assert 'cannot take claims' in caplog.text


@pytest.mark.parametrize('make_huey', ['memory'], indirect=True)
def test_clock_going_back_does_not_run_minutes_again(make_huey):
    fleet = Fleet(make_huey).start(skews=(0,))
    for _ in range(3):
        fleet.minute()  # 12:00, 12:01, 12:02
    fleet.clock.now -= 2 * MINUTE  # an NTP step back
    for _ in range(4):
        fleet.minute()  # 12:01 and 12:02 again (skipped), then 12:03, 12:04
    assert fleet.count('every_minute') == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}


@pytest.mark.parametrize('make_huey', ['memory'], indirect=True)
def test_one_consumer_checking_one_minute_twice_enqueues_it_twice(make_huey):
    """huey 3.5.4's own tests ask a consumer's fresh scheduler to check a minute again and
    expect the tasks again (claims are reentrant for their owner); other consumers still
    cannot take that minute."""
    fleet = Fleet(make_huey).start(skews=(0, 0))
    (first, _), (second, _) = fleet.consumers
    first._create_scheduler().loop(START)
    first._create_scheduler().loop(START)
    second._create_scheduler().loop(START)
    assert [task.name for task in first.huey.pending()] == ['every_minute', 'every_two'] * 2


@pytest.mark.parametrize('value', ['sometimes', 'ONCE', None, 1, True])
def test_catch_up_must_name_a_policy(value):
    huey = MemoryHuey('periodic')
    with pytest.raises(ValueError, match=r"catch_up must be one of 'skip', 'once' or 'all'"):
        huey.periodic_task(crontab(), catch_up=value)(lambda: None)
    assert huey._registry._periodic_tasks == []


def test_catch_up_is_a_task_setting():
    huey = MemoryHuey('periodic')

    @huey.periodic_task(crontab(), catch_up='all')
    def task_all():
        pass

    @huey.periodic_task(crontab())
    def task_default():
        pass

    assert task_all.task_class.catch_up == 'all'
    assert task_default.task_class.catch_up == 'skip'


# -- claims in each storage ------------------------------------------------------------------


def claim_records(storage):
    """How many claims the storage keeps (lapsed ones included)."""
    name = type(storage).__name__
    if name == 'MemoryStorage':
        return len(storage._claims)
    if name == 'FileStorage':
        return len([n for n in os.listdir(storage.claim_path) if not n.startswith('.')])
    if name == 'SqliteStorage':
        return storage.conn.execute('select count(*) from huey_rs_claim').fetchone()[0]
    if name == 'RedisStorage':
        return len(storage.conn.keys('huey.claim.*'))
    return len([k for k in storage.result_items() if str(k).startswith('claim:')])


@all_backends
def test_claims_are_exclusive_reentrant_and_lapse(make_huey):
    storage = make_huey().storage
    assert storage.claim('k', 'a', 60)
    assert not storage.claim('k', 'b', 60)
    assert storage.claim('k', 'a', 60)  # reentrant
    assert storage.claim('other', 'b', 60)
    assert claim_records(storage) == 2


@all_backends
def test_lapsed_claims_are_removed(make_huey):
    storage = make_huey().storage
    for i in range(50):
        assert storage.claim(f'short-{i}', 'a', 0.2)
    deadline = time.monotonic() + 10
    # Lapsed claims go when the storage next claims (Redis: on its own). A fresh storage
    # object for the File and default kinds, whose sweep runs first in a process.
    while True:
        fresh = make_huey().storage
        fresh.claim('later', 'b', 60)
        if claim_records(fresh) == 1:
            break
        assert time.monotonic() < deadline, claim_records(fresh)
        time.sleep(0.05)
    assert not fresh.claim('later', 'a', 60)


@pytest.mark.parametrize('make_huey', ['redis'], indirect=True)
def test_claims_of_a_minute_are_kept_for_the_claim_ttl(make_huey):
    """Consumers whose clocks disagree by less than ``CLAIM_TTL`` (an hour) never enqueue
    one minute twice: Redis keeps each claim that long, then drops it on its own."""
    fleet = Fleet(make_huey).start()
    fleet.minute()
    conn = fleet.consumers[0][0].huey.storage.conn
    keys = conn.keys('huey.claim.*')
    assert len(keys) == 2  # every_minute and every_two at 12:00
    for key in keys:
        assert (CLAIM_TTL - 60) * 1000 < conn.pttl(key) <= CLAIM_TTL * 1000


def test_planner_owner_names_the_host_and_process():
    planner = PeriodicPlanner(MemoryHuey('periodic'))
    host, pid, _ = planner.owner.split(':')
    assert pid == str(os.getpid()) and host


def test_read_periodic_still_decides_which_tasks_are_due():
    """A Huey subclass overriding ``read_periodic`` (huey's scheduler calls it) is obeyed."""

    class OnlyEven(MemoryHuey):
        def read_periodic(self, timestamp):
            return [t for t in super().read_periodic(timestamp) if timestamp.minute % 2 == 0]

    huey = OnlyEven('periodic')
    huey.periodic_task(crontab(), name='every_minute')(lambda: None)
    consumer = DrivenConsumer(huey, workers=1, check_worker_health=False)
    scheduler = consumer._create_scheduler()
    for minute in range(4):
        scheduler.loop(START + minute * MINUTE)
    assert [task.name for task in huey.pending()] == ['every_minute'] * 2
