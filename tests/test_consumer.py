"""The consumer run for real, in this process: thread, greenlet and process workers, the
scheduler (driven through its own clock attributes for periodic tasks), graceful and
interrupting stops, start-up/shut-down hooks, health checks, worker recycling, timeouts.

Workers report what happened through a pipe (``Recorder``), which works the same from a
thread, a greenlet or a forked process. Tasks that must stay busy wait on a ``Gate`` that
the test opens; nothing here sleeps to synchronise.
"""

import datetime
import multiprocessing
import os
import select
import signal
import threading
import time

import gevent
import gevent.event
import gevent.select
import pytest

from huey import FileHuey, MemoryHuey, SqliteHuey, crontab
from huey import signals as S
from huey.consumer import Consumer
from huey.exceptions import ConfigurationError, TaskException

WAIT = 10  # seconds a test waits for something that should take milliseconds

# Process workers fork: a MemoryHuey's queue is copied into the child at fork time, so tasks
# enqueued before start() run there, but results written by the child never reach this
# process. Reading results back needs a storage shared across fork.
SHARED_STORAGES = {
    'file': lambda tmp_path: FileHuey('consumer-tests', path=str(tmp_path / 'queue')),
    'sqlite': lambda tmp_path: SqliteHuey('consumer-tests', filename=str(tmp_path / 'q.db')),
}


class Recorder:
    """Lines written by workers (signals, hooks, notes) to a pipe, read by the test."""

    def __init__(self, worker_type):
        self._r, self._w = os.pipe()
        self._select = gevent.select.select if worker_type == 'greenlet' else select.select
        self._partial = b''
        self.lines = []

    def connect(self, huey):
        @huey.signal()
        def receive(signal_name, task, *args):
            self.note(signal_name, task.id)

        return self

    def note(self, kind, value=''):
        os.write(self._w, f'{kind} {value}\n'.encode())

    def values(self, kind):
        self._drain(0)
        return [value for k, value in self.lines if k == kind]

    def count(self, kind, value=None):
        return sum(1 for v in self.values(kind) if value is None or v == value)

    def wait_for(self, predicate, timeout=WAIT):
        deadline = time.monotonic() + timeout
        self._drain(0)
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f'timed out; workers reported {self.lines}')
            self._drain(remaining)

    def wait_count(self, kind, n, value=None, timeout=WAIT):
        self.wait_for(lambda: self.count(kind, value) >= n, timeout)

    def _drain(self, timeout):
        while True:
            ready, _, _ = self._select([self._r], [], [], timeout)
            if not ready:
                return
            data = self._partial + os.read(self._r, 65536)
            *complete, self._partial = data.split(b'\n')
            for line in complete:
                kind, _, value = line.decode().partition(' ')
                self.lines.append((kind, value))
            timeout = 0

    def close(self):
        os.close(self._r)
        os.close(self._w)


class Gate:
    """An event a task waits on, of the kind its worker type can wait on."""

    def __init__(self, worker_type):
        if worker_type == 'greenlet':
            self._event = gevent.event.Event()
        elif worker_type == 'process':
            self._event = multiprocessing.get_context('fork').Event()
        else:
            self._event = threading.Event()

    def set(self):
        self._event.set()

    def is_set(self):
        return self._event.is_set()

    def wait(self, timeout=None):
        return self._event.wait(timeout)


class Background:
    """Run ``fn`` next to the test: a greenlet in greenlet mode, else a thread."""

    def __init__(self, worker_type, fn, *args, **kwargs):
        if worker_type == 'greenlet':
            self._greenlet = gevent.spawn(fn, *args, **kwargs)
            self._thread = None
        else:
            self._thread = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
            self._thread.start()

    def join(self, timeout):
        (self._thread or self._greenlet).join(timeout)

    def is_alive(self):
        return self._thread.is_alive() if self._thread else not self._greenlet.dead


class Harness:
    """Starts consumers, gates and recorders, and cleans all of them up."""

    def __init__(self):
        self.consumers, self.gates, self.recorders = [], [], []
        handled = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
        self._saved_handlers = {s: signal.getsignal(s) for s in handled}

    def start(self, huey, **options):
        consumer = huey.create_consumer(**options)
        consumer.start()
        self.consumers.append(consumer)
        return consumer

    def gate(self, worker_type):
        gate = Gate(worker_type)
        self.gates.append(gate)
        return gate

    def recorder(self, huey, worker_type):
        recorder = Recorder(worker_type).connect(huey)
        self.recorders.append(recorder)
        return recorder

    def close(self):
        for gate in self.gates:
            gate.set()
        for consumer in self.consumers:
            if not consumer.stop_flag.is_set():
                consumer.stop(graceful=False)
            # Wait for every worker, so none writes to a recorder pipe whose descriptor
            # number the next test gets back from os.pipe().
            for proc in [p for _, p in consumer.worker_threads] + [consumer.scheduler]:
                if isinstance(proc, multiprocessing.process.BaseProcess) and proc.is_alive():
                    proc.kill()
                proc.join(WAIT)
        for recorder in self.recorders:
            recorder.close()
        for signum, handler in self._saved_handlers.items():
            signal.signal(signum, handler)


def get_result(result, worker_type, timeout=WAIT):
    """``result.get(blocking=True)``; with greenlet workers the blocking wait runs in a real
    thread so this (unpatched) process's hub keeps running the workers."""
    if worker_type == 'greenlet':
        pool = gevent.get_hub().threadpool
        return pool.spawn(result.get, blocking=True, timeout=timeout).get()
    return result.get(blocking=True, timeout=timeout)


def join(proc, worker_type, timeout=WAIT):
    proc.join(timeout)
    if worker_type == 'greenlet':
        assert proc.dead
    else:
        assert not proc.is_alive()


@pytest.fixture
def harness():
    h = Harness()
    yield h
    h.close()


@pytest.fixture
def huey():
    return MemoryHuey('consumer-tests')


IN_PROCESS = ['thread', 'greenlet']
ALL_TYPES = ['thread', 'greenlet', 'process']


# -- running tasks -----------------------------------------------------------------------------


@pytest.mark.parametrize('worker_type', IN_PROCESS)
def test_tasks_run_and_results_arrive(harness, huey, worker_type):
    @huey.task()
    def multiply(a, b):
        return a * b

    harness.start(huey, workers=2, worker_type=worker_type)
    results = [multiply(i, 3) for i in range(20)]
    assert [get_result(r, worker_type) for r in results] == [i * 3 for i in range(20)]
    assert len(huey) == 0


def test_process_workers_run_tasks_in_child_processes(harness, huey):
    rec = harness.recorder(huey, 'process')

    @huey.task()
    def where(n):
        rec.note('ran', f'{n}:{os.getpid()}')

    ids = [where(n).id for n in range(3)]  # queued before the fork, so the child has them
    consumer = harness.start(huey, workers=1, worker_type='process')
    rec.wait_count(S.SIGNAL_COMPLETE, 3)
    assert sorted(rec.values(S.SIGNAL_COMPLETE)) == sorted(ids)
    child_pid = consumer.worker_threads[0][1].pid
    assert rec.values('ran') == [f'{n}:{child_pid}' for n in range(3)]
    assert child_pid != os.getpid()


@pytest.mark.parametrize('storage', sorted(SHARED_STORAGES))
def test_process_workers_results_through_shared_storage(harness, tmp_path, storage):
    shared = SHARED_STORAGES[storage](tmp_path)

    @shared.task()
    def pid_of(n):
        return n, os.getpid()

    harness.start(shared, workers=2, worker_type='process')
    results = [pid_of(n) for n in range(6)]
    values = [r.get(blocking=True, timeout=WAIT) for r in results]
    assert [n for n, _ in values] == list(range(6))
    assert os.getpid() not in {pid for _, pid in values}


# -- scheduled and periodic tasks --------------------------------------------------------------


@pytest.mark.parametrize('worker_type', IN_PROCESS)
def test_scheduled_task_runs_at_its_eta_not_before(harness, huey, worker_type):
    rec = harness.recorder(huey, worker_type)

    @huey.task()
    def stamp():
        return time.time()

    harness.start(huey, workers=1, worker_type=worker_type)
    before = time.time()
    result = stamp.schedule(delay=1)
    eta = result.task.eta
    assert rec.count(S.SIGNAL_EXECUTING) == 0
    ran_at = get_result(result, worker_type)
    assert ran_at >= before + 1
    eta_ts = eta.replace(tzinfo=datetime.timezone.utc).timestamp()
    assert ran_at >= eta_ts
    assert ran_at < eta_ts + 3  # picked up by the next scheduler pass (every second)


def periodic_fixture(huey):
    @huey.periodic_task(crontab(minute='*'))
    def every_minute():
        pass

    @huey.periodic_task(crontab(minute='*/5'))
    def every_five():
        pass

    return every_minute, every_five


def idle_scheduler(huey):
    """A scheduler whose sleeps return at once, driven by calling ``loop(now=...)``."""
    consumer = huey.create_consumer(workers=1)
    consumer.stop_flag.set()
    return consumer._create_scheduler()


def pending_names(huey):
    return [task.name for task in huey.pending()]


def test_read_periodic_returns_tasks_whose_crontab_matches(huey):
    periodic_fixture(huey)
    at = datetime.datetime(2024, 3, 4, 10, 15)
    assert sorted(t.name for t in huey.read_periodic(at)) == ['every_five', 'every_minute']
    at = datetime.datetime(2024, 3, 4, 10, 16)
    assert [t.name for t in huey.read_periodic(at)] == ['every_minute']


def test_periodic_tasks_are_enqueued_once_per_minute(huey):
    periodic_fixture(huey)
    scheduler = idle_scheduler(huey)
    start = datetime.datetime(2024, 1, 1, 12, 0)
    enqueued_per_minute = []
    for minute in range(15):
        if minute:
            scheduler._next_periodic -= 60  # a minute of the scheduler's clock goes by
        before = len(huey)
        for second in range(0, 60, scheduler.interval):
            scheduler.loop(now=start + datetime.timedelta(minutes=minute, seconds=second))
        enqueued_per_minute.append(len(huey) - before)
    assert enqueued_per_minute == [2 if m % 5 == 0 else 1 for m in range(15)]
    names = pending_names(huey)
    assert names.count('every_minute') == 15
    assert names.count('every_five') == 3


def test_periodic_check_is_not_repeated_within_the_same_wall_clock_minute(huey):
    periodic_fixture(huey)
    scheduler = idle_scheduler(huey)
    scheduler._next_periodic = time.monotonic() - 0.001
    # The first check lands just after 12:01 began...
    scheduler.loop(now=datetime.datetime(2024, 1, 1, 12, 1, 0, 50_000))
    assert pending_names(huey) == ['every_minute']
    # ...and sixty seconds of the scheduler's clock later the wall clock (slewed, or a
    # loop that ran a little early) still reads 12:01: that minute has had its check.
    scheduler._next_periodic -= 60
    scheduler.loop(now=datetime.datetime(2024, 1, 1, 12, 1, 59, 990_000))
    assert pending_names(huey) == ['every_minute']
    # The check is retried on the next pass, so 12:02 is not missed either.
    scheduler.loop(now=datetime.datetime(2024, 1, 1, 12, 2, 0, 990_000))
    assert pending_names(huey) == ['every_minute', 'every_minute']
    assert scheduler._next_periodic > time.monotonic()
    scheduler.loop(now=datetime.datetime(2024, 1, 1, 12, 2, 1, 990_000))
    assert len(huey) == 2


def test_stalled_scheduler_fires_once_not_once_per_missed_minute(huey):
    periodic_fixture(huey)
    scheduler = idle_scheduler(huey)
    scheduler._next_periodic = time.monotonic() - 300  # e.g. the machine was suspended
    scheduler.loop(now=datetime.datetime(2024, 1, 1, 12, 7))
    assert pending_names(huey) == ['every_minute']
    assert scheduler._next_periodic > time.monotonic()
    scheduler.loop(now=datetime.datetime(2024, 1, 1, 12, 7, 1))
    assert len(huey) == 1


def test_scheduler_moves_due_tasks_to_the_queue(huey):
    @huey.task()
    def later():
        pass

    result = later.schedule(eta=datetime.datetime(2030, 1, 1, 0, 0, 30))
    later.schedule(eta=datetime.datetime(2030, 1, 1, 0, 5))
    consumer = huey.create_consumer(workers=1)
    consumer.stop_flag.set()
    worker, _ = consumer.worker_threads[0]
    worker.loop()
    worker.loop()  # a worker puts tasks that are not due yet on the schedule
    assert len(huey) == 0
    assert huey.scheduled_count() == 2
    scheduler = consumer._create_scheduler()
    scheduler.loop(now=datetime.datetime(2030, 1, 1, 0, 0, 29))
    assert len(huey) == 0
    scheduler.loop(now=datetime.datetime(2030, 1, 1, 0, 0, 30))
    assert [t.id for t in huey.pending()] == [result.id]
    assert huey.scheduled_count() == 1


def test_periodic_disabled_enqueues_nothing(huey):
    periodic_fixture(huey)
    consumer = huey.create_consumer(periodic=False)
    consumer.stop_flag.set()
    scheduler = consumer._create_scheduler()
    scheduler._next_periodic = time.monotonic() - 1
    scheduler.loop(now=datetime.datetime(2024, 1, 1, 12, 0))
    assert len(huey) == 0


class SchedulerKeepingConsumer(Consumer):
    """Keeps the Scheduler objects it creates, so a test can read their clocks."""

    def _create_scheduler(self):
        scheduler = super()._create_scheduler()
        self.scheduler_objects = [*getattr(self, 'scheduler_objects', []), scheduler]
        return scheduler


def test_running_consumer_checks_periodic_tasks_at_start_then_a_minute_later(harness, huey):
    rec = harness.recorder(huey, 'thread')

    @huey.periodic_task(crontab(minute='*'))
    def tick():
        rec.note('tick')

    consumer = SchedulerKeepingConsumer(huey, workers=1)
    harness.consumers.append(consumer)
    consumer.start()
    rec.wait_count('tick', 1)
    (scheduler,) = consumer.scheduler_objects
    # The next check is about a minute away, so this minute's task is not enqueued again.
    assert 55 < scheduler._next_periodic - time.monotonic() <= 60
    consumer.stop(graceful=True)
    assert rec.count('tick') == 1


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize('interval', [7, 8, 9, 11, 13, 25, 45, 59])
def test_scheduler_interval_must_divide_a_minute(huey, interval):
    with pytest.raises(ConfigurationError, match='factor of 60'):
        huey.create_consumer(scheduler_interval=interval)


@pytest.mark.parametrize('interval', [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60])
def test_scheduler_interval_factors_of_sixty_are_accepted(huey, interval):
    consumer = huey.create_consumer(scheduler_interval=interval)
    assert consumer.scheduler_interval == interval
    assert consumer._create_scheduler().interval == interval


def test_max_tasks_needs_health_checks(huey):
    with pytest.raises(ConfigurationError, match='max_tasks'):
        huey.create_consumer(max_tasks=10, check_worker_health=False)
    consumer = huey.create_consumer(max_tasks=10)
    assert consumer.max_tasks == 10


@pytest.mark.parametrize('workers', [0, -1, 1.5, '2'])
def test_worker_count_must_be_a_positive_integer(huey, workers):
    with pytest.raises(ConfigurationError, match='workers'):
        huey.create_consumer(workers=workers)


def test_unknown_worker_type_is_rejected(huey):
    with pytest.raises(ValueError, match='worker_type'):
        huey.create_consumer(worker_type='fiber')


def test_immediate_mode_cannot_be_consumed(huey):
    huey.immediate = True
    consumer = huey.create_consumer()
    with pytest.raises(ConfigurationError, match='immediate'):
        consumer.start()


# -- stopping ----------------------------------------------------------------------------------


@pytest.mark.parametrize('worker_type', ALL_TYPES)
def test_graceful_stop_lets_the_running_task_finish(harness, huey, worker_type):
    rec = harness.recorder(huey, worker_type)
    started, release = harness.gate(worker_type), harness.gate(worker_type)

    @huey.task()
    def busy():
        started.set()
        assert release.wait(WAIT)
        rec.note('finished')
        return 'done'

    result = busy()
    consumer = harness.start(huey, workers=1, worker_type=worker_type)
    assert started.wait(WAIT)
    stopper = Background(worker_type, consumer.stop, graceful=True)
    stopper.join(0.3)
    assert stopper.is_alive(), 'a graceful stop must wait for the running task'
    assert rec.count('finished') == 0
    release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert rec.count('finished') == 1
    assert rec.values(S.SIGNAL_COMPLETE) == [result.id]
    assert rec.count(S.SIGNAL_INTERRUPTED) == 0
    huey.notify_interrupted_tasks()
    assert rec.count(S.SIGNAL_INTERRUPTED) == 0
    if worker_type != 'process':
        assert result.get() == 'done'
        join(consumer.worker_threads[0][1], worker_type)


@pytest.mark.parametrize('worker_type', ALL_TYPES)
def test_interrupting_stop_reports_the_running_task_as_interrupted(harness, huey, worker_type):
    rec = harness.recorder(huey, worker_type)
    started, release = harness.gate(worker_type), harness.gate(worker_type)

    @huey.task()
    def busy():
        started.set()
        release.wait(WAIT)

    result = busy()
    consumer = harness.start(huey, workers=1, worker_type=worker_type)
    assert started.wait(WAIT)
    consumer.stop(graceful=False)
    # What Consumer.run() does once stopped: report tasks still in flight here.
    huey.notify_interrupted_tasks()
    rec.wait_count(S.SIGNAL_INTERRUPTED, 1)
    assert rec.values(S.SIGNAL_INTERRUPTED) == [result.id]
    huey.notify_interrupted_tasks()
    assert rec.count(S.SIGNAL_INTERRUPTED) == 1
    if worker_type != 'thread':
        # greenlets are killed and processes signalled: the task never completes
        assert rec.count(S.SIGNAL_COMPLETE) == 0
        assert not consumer.environment.is_alive(consumer.worker_threads[0][1])


def test_stop_with_shutdown_timeout_interrupts_after_waiting(harness, huey):
    rec = harness.recorder(huey, 'greenlet')
    started, release = harness.gate('greenlet'), harness.gate('greenlet')

    @huey.task()
    def stuck():
        started.set()
        release.wait()

    stuck()
    consumer = harness.start(huey, workers=1, worker_type='greenlet', shutdown_timeout=0.2)
    assert started.wait(WAIT)
    begin = time.monotonic()
    consumer.stop(graceful=True)
    assert 0.2 <= time.monotonic() - begin < WAIT
    assert rec.count(S.SIGNAL_INTERRUPTED) == 1
    assert rec.count(S.SIGNAL_COMPLETE) == 0


# -- hooks, health checks, recycling -----------------------------------------------------------


@pytest.mark.parametrize('worker_type', ALL_TYPES)
def test_startup_and_shutdown_hooks_run_once_per_worker(harness, huey, worker_type):
    rec = harness.recorder(huey, worker_type)

    def who():
        if worker_type == 'process':
            return str(os.getpid())
        if worker_type == 'greenlet':
            return str(id(gevent.getcurrent()))
        return threading.current_thread().name

    @huey.on_startup()
    def opened():
        rec.note('startup', who())

    @huey.on_shutdown()
    def closed():
        rec.note('shutdown', who())

    consumer = harness.start(huey, workers=3, worker_type=worker_type)
    rec.wait_count('startup', 3)
    consumer.stop(graceful=True)
    rec.wait_count('shutdown', 3)
    for _, proc in consumer.worker_threads:
        join(proc, worker_type)
    started, stopped = rec.values('startup'), rec.values('shutdown')
    assert len(set(started)) == 3  # one per worker, none from the scheduler
    assert sorted(started) == sorted(stopped)
    if worker_type == 'process':
        assert set(started) == {str(p.pid) for _, p in consumer.worker_threads}
    if worker_type == 'thread':
        assert set(started) == {p.name for _, p in consumer.worker_threads}


@pytest.mark.parametrize('worker_type', IN_PROCESS)
def test_health_check_restarts_a_dead_worker(harness, huey, worker_type):
    rec = harness.recorder(huey, worker_type)

    @huey.on_startup()
    def opened():
        rec.note('startup')

    @huey.task()
    def fatal():
        raise SystemExit  # not an Exception: it ends the worker

    @huey.task()
    def alive():
        return 'ok'

    consumer = harness.start(huey, workers=1, worker_type=worker_type)
    _, first = consumer.worker_threads[0]
    assert consumer.check_worker_health() is True
    fatal()
    join(first, worker_type)
    assert consumer.check_worker_health() is False
    _, second = consumer.worker_threads[0]
    assert second is not first
    assert consumer.environment.is_alive(second)
    assert get_result(alive(), worker_type) == 'ok'
    assert rec.count('startup') == 2
    assert consumer.check_worker_health() is True


def test_health_check_restarts_a_killed_process_worker(harness, huey):
    rec = harness.recorder(huey, 'process')

    @huey.on_startup()
    def opened():
        rec.note('startup', os.getpid())

    consumer = harness.start(huey, workers=2, worker_type='process')
    rec.wait_count('startup', 2)
    _, victim = consumer.worker_threads[0]
    _, survivor = consumer.worker_threads[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(WAIT)
    assert victim.exitcode == -signal.SIGKILL
    assert consumer.check_worker_health() is False
    _, replacement = consumer.worker_threads[0]
    assert replacement.is_alive() and replacement.pid != victim.pid
    assert consumer.worker_threads[1][1] is survivor
    rec.wait_count('startup', 3)
    assert rec.values('startup')[-1] == str(replacement.pid)
    assert consumer.check_worker_health() is True


def test_health_check_restarts_a_dead_scheduler(harness, huey):
    consumer = harness.start(huey, workers=1)
    old = consumer.scheduler
    consumer.scheduler = threading.Thread(target=lambda: None)  # stands in for a dead one
    consumer.scheduler.start()
    consumer.scheduler.join()
    consumer.check_worker_health()
    assert consumer.scheduler.is_alive()
    assert consumer.scheduler is not old


def test_max_tasks_recycles_the_worker(harness, huey):
    rec = harness.recorder(huey, 'thread')
    ran_on = {}

    @huey.task()
    def job(n):
        ran_on[n] = threading.current_thread()
        return n

    @huey.on_startup()
    def opened():
        rec.note('startup')

    consumer = harness.start(huey, workers=1, max_tasks=2)
    results = [job(n) for n in range(5)]
    restarts = 0
    for batch in ([0, 1], [2, 3]):
        _, proc = consumer.worker_threads[0]
        assert [results[n].get(blocking=True, timeout=WAIT) for n in batch] == batch
        proc.join(WAIT)  # the worker exits after its second task...
        assert not proc.is_alive()
        assert consumer.check_worker_health() is False  # ...and is replaced
        restarts += 1
    assert results[4].get(blocking=True, timeout=WAIT) == 4
    assert restarts == 2
    assert rec.count('startup') == 3
    threads = [ran_on[n] for n in range(5)]
    assert threads[0] is threads[1]
    assert threads[2] is threads[3]
    assert len({id(t) for t in threads}) == 3


# -- timeouts ----------------------------------------------------------------------------------


def test_thread_timeout_is_cooperative_via_check_timeout(harness, huey):
    rec = harness.recorder(huey, 'thread')
    never = harness.gate('thread')

    @huey.task(timeout=0.2, context=True)
    def polite(task):
        while True:
            task.check_timeout()
            never.wait(0.01)

    @huey.task(timeout=0.05, context=True)
    def oblivious(task):
        while not task.is_timed_out:  # runs past its timeout: nothing stops a thread
            never.wait(0.01)
        return 'overran'

    harness.start(huey, workers=2)
    polite_result, oblivious_result = polite(), oblivious()
    with pytest.raises(TaskException) as info:
        polite_result.get(blocking=True, timeout=WAIT)
    assert 'TaskTimeout' in info.value.metadata['error']
    assert oblivious_result.get(blocking=True, timeout=WAIT) == 'overran'
    assert rec.values(S.SIGNAL_TIMEOUT) == [polite_result.id]


def test_greenlet_timeout_is_enforced(harness, huey):
    rec = harness.recorder(huey, 'greenlet')
    never = harness.gate('greenlet')

    @huey.task(timeout=0.1)
    def stuck():
        never.wait()

    harness.start(huey, workers=1, worker_type='greenlet')
    result = stuck()
    with pytest.raises(TaskException) as info:
        get_result(result, 'greenlet')
    assert 'TaskTimeout' in info.value.metadata['error']
    assert rec.values(S.SIGNAL_TIMEOUT) == [result.id]


def test_process_timeout_is_enforced_with_sigalrm(harness, huey):
    rec = harness.recorder(huey, 'process')
    never = harness.gate('process')

    @huey.task(timeout=0.2)
    def stuck():
        never.wait()  # blocks in the child until SIGALRM raises TaskTimeout

    @huey.task()
    def after():
        rec.note('after')

    @huey.signal(S.SIGNAL_ERROR)
    def failed(signal_name, task, exc):
        rec.note('error-type', type(exc).__name__)

    stuck_id = stuck().id
    after()
    begin = time.monotonic()
    harness.start(huey, workers=1, worker_type='process')
    rec.wait_count(S.SIGNAL_TIMEOUT, 1)
    assert time.monotonic() - begin >= 0.2
    assert rec.values(S.SIGNAL_TIMEOUT) == [stuck_id]
    rec.wait_count('after', 1)  # the worker survived the alarm and went on
    assert rec.count(S.SIGNAL_COMPLETE, stuck_id) == 0
    assert rec.values('error-type') == []
