"""The consumer's prefetch (huey.prefetch): several messages per storage call, shared by the
workers of one process through a bounded buffer, with revocations checked when a task starts
and the buffer put back on the queue when the consumer stops. Against a real redis-server,
the storage that takes a batch with one command.
"""

import threading
import time

import pytest

from huey import FileHuey, MemoryHuey, PostgresHuey, RedisHuey, SqliteHuey
from huey import signals as S
from huey.exceptions import ConfigurationError
from huey.prefetch import Prefetch
from huey.storage import FileStorage, MemoryStorage, PostgresStorage, RedisStorage, SqliteStorage

WAIT = 10  # seconds a test waits for something that should take milliseconds


class CountingDequeues:
    """Mixin for a real storage: records each ``dequeue_many`` (or, reliable,
    ``dequeue_reliable_many``) call's ``n`` and batch size."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def dequeue_many(self, n, timeout=None):
        batch = super().dequeue_many(n, timeout)
        self.calls.append((n, len(batch)))
        return batch

    def dequeue_reliable_many(self, consumer, tokens, lease, timeout=None):
        batch = super().dequeue_reliable_many(consumer, tokens, lease, timeout)
        self.calls.append((len(tokens), len(batch)))
        return batch


class CountingRedisStorage(CountingDequeues, RedisStorage):
    pass


class CountingSqliteStorage(CountingDequeues, SqliteStorage):
    pass


class OneByOneSqliteStorage(CountingSqliteStorage):
    """A storage that does not declare ``batch_dequeue`` (as a third-party one may not)."""

    batch_dequeue = False


@pytest.fixture(autouse=True)
def eager_prefetch(monkeypatch):
    """Batches from the first fetch, and nothing put back for waiting: these tests hold the
    buffer on purpose. (The tests of those two rules set their own values.)"""
    monkeypatch.setattr(Prefetch, 'assumed_task_seconds', 0.0)
    monkeypatch.setattr(Prefetch, 'stale_after', 3600.0)
    monkeypatch.delenv('HUEY_PREFETCH', raising=False)  # make test-prefetch1 sets it


def make_huey(redis_db, name='prefetch'):
    return RedisHuey(name, url=redis_db.url, storage_class=CountingRedisStorage)


@pytest.fixture(params=['redis', 'sqlite', 'file', 'postgres'])
def batching_huey(request, tmp_path):
    """A Huey on each storage that takes batches, its storage counting dequeue_many calls."""
    kind = request.param
    if kind == 'redis':
        return make_huey(request.getfixturevalue('redis_db'))
    if kind == 'postgres':
        dsn = request.getfixturevalue('postgres_db').dsn
        return PostgresHuey('prefetch', dsn=dsn, storage_class=counting(PostgresStorage))
    if kind == 'sqlite':
        return SqliteHuey(
            'prefetch', filename=str(tmp_path / 'q.db'), storage_class=CountingSqliteStorage
        )
    return FileHuey('prefetch', path=str(tmp_path), storage_class=counting(FileStorage))


def counting(storage_class):
    return type(f'Counting{storage_class.__name__}', (CountingDequeues, storage_class), {})


def recording_task(huey):
    """A task that appends its argument to the list it returns alongside, and returns it."""
    ran = []

    @huey.task()
    def record(i):
        ran.append(i)
        return i

    return record, ran


def holding_task(huey):
    """A task that runs until the test opens its gate: (task, gate, started event)."""
    gate, started = threading.Event(), threading.Event()

    @huey.task()
    def hold():
        started.set()
        gate.wait(WAIT)

    return hold, gate, started


def stop_then_open(consumer, gate):
    """Stop ``consumer`` gracefully while its worker is held at ``gate``: the stop flag is
    set first, then the gate opens, and the stop returns."""
    stopper = threading.Thread(target=consumer.stop, kwargs={'graceful': True})
    stopper.start()
    wait_until(consumer.stop_flag.is_set, 'the stop flag')
    gate.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()


def wait_until(condition, what):
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f'timed out waiting for {what}')
        time.sleep(0.001)


def test_a_fetch_takes_several_messages_and_every_task_runs_once(batching_huey, run_consumer):
    huey = batching_huey
    assert huey.storage.batch_dequeue
    record, ran = recording_task(huey)
    results = [record(i) for i in range(300)]
    run_consumer(huey, workers=3, prefetch=4)
    assert [r.get(blocking=True, timeout=WAIT) for r in results] == list(range(300))
    assert sorted(ran) == list(range(300))
    calls = huey.storage.calls
    assert all(1 <= n <= 4 and taken <= n for n, taken in calls)
    assert max(taken for _, taken in calls) > 1  # batches were taken
    assert len(calls) < 300  # fewer storage calls than tasks


def test_memory_storage_is_not_prefetched_from(run_consumer):
    # In-process: a batch saves no round trip there, and the buffer only costs time.
    huey = MemoryHuey('prefetch', storage_class=counting(MemoryStorage))
    record, ran = recording_task(huey)
    results = [record(i) for i in range(50)]
    consumer = run_consumer(huey, workers=2, prefetch=4)
    assert consumer.prefetch.per_fetch == 1
    assert [r.get(blocking=True, timeout=WAIT) for r in results] == list(range(50))
    assert huey.storage.calls and {n for n, _ in huey.storage.calls} == {1}  # one at a time
    assert len(consumer.prefetch) == 0


def test_prefetch_one_takes_one_message_per_storage_call(redis_db, run_consumer):
    huey = make_huey(redis_db)

    @huey.task()
    def double(i):
        return i * 2

    results = [double(i) for i in range(50)]
    consumer = run_consumer(huey, workers=2, prefetch=1)
    assert [r.get(blocking=True, timeout=WAIT) for r in results] == [i * 2 for i in range(50)]
    assert {n for n, _ in huey.storage.calls} == {1}
    assert len(consumer.prefetch) == 0


def test_default_prefetch_is_one_more_than_thread_workers_and_one_for_processes():
    huey = MemoryHuey('defaults')
    assert huey.create_consumer(workers=3).prefetch.size == 4
    assert huey.create_consumer(workers=3, worker_type='greenlet').prefetch.size == 4
    assert huey.create_consumer(workers=3, worker_type='process').prefetch.size == 1


def test_huey_prefetch_in_the_environment_sets_the_default(monkeypatch):
    huey = MemoryHuey('env')
    monkeypatch.setenv('HUEY_PREFETCH', '1')
    assert huey.create_consumer(workers=4).prefetch.size == 1
    assert huey.create_consumer(workers=4, prefetch=3).prefetch.size == 3  # given wins
    monkeypatch.setenv('HUEY_PREFETCH', '7')
    assert huey.create_consumer(workers=2, worker_type='process').prefetch.size == 7
    for bad in ('0', '-2', 'lots', '1.5'):
        monkeypatch.setenv('HUEY_PREFETCH', bad)
        with pytest.raises(ConfigurationError, match=f'HUEY_PREFETCH .*{bad!r}'):
            huey.create_consumer()


def test_a_storage_without_batches_is_read_one_message_at_a_time(tmp_path, run_consumer):
    huey = SqliteHuey(
        'one-by-one', filename=str(tmp_path / 'q.db'), storage_class=OneByOneSqliteStorage
    )

    @huey.task()
    def square(i):
        return i * i

    results = [square(i) for i in range(30)]
    consumer = run_consumer(huey, workers=3, prefetch=8)
    assert [r.get(blocking=True, timeout=WAIT) for r in results] == [i * i for i in range(30)]
    assert {n for n, _ in huey.storage.calls} == {1}
    assert len(consumer.prefetch) == 0


@pytest.mark.parametrize('change, expected', [('revoke', [0, 1, 3]), ('restore', [0, 1, 2, 3])])
def test_a_change_made_by_the_receiver_of_the_task_before_applies(
    change, expected, redis_db, run_consumer
):
    # Fetched in one batch, and task 2's flags read with task 1's result write; the receiver
    # of task 1's SIGNAL_COMPLETE then revokes (or restores) task 2, and its start sees
    # that, as in huey 3.5.4.
    huey = make_huey(redis_db)
    record, ran = recording_task(huey)
    results = [record(i) for i in range(4)]
    if change == 'restore':
        results[2].revoke(revoke_once=False)

    @huey.signal(S.SIGNAL_COMPLETE)
    def change_the_next(signal, task):
        if task.id == results[1].id:
            getattr(results[2], change)()

    run_consumer(huey, workers=1, prefetch=4)
    assert results[3].get(blocking=True, timeout=WAIT) == 3
    assert ran == expected
    assert (4, 4) in huey.storage.calls  # the four came in one batch


@pytest.mark.parametrize('value', [0, -1, 2.5, '4'])
def test_a_bad_prefetch_is_refused_naming_it(value):
    with pytest.raises(ConfigurationError, match='prefetch'):
        MemoryHuey('bad').create_consumer(prefetch=value)


def test_the_buffer_never_holds_more_than_prefetch_minus_one(redis_db):
    # Eight threads fetch at once from a deep queue: whatever the interleaving, what waits in
    # the buffer stays within its bound, and every message is handed out exactly once.
    huey = make_huey(redis_db)

    @huey.task()
    def item(i):
        return i

    for i in range(400):
        item(i)
    prefetch = Prefetch(huey, 3)
    taken, peak, lock = [], [0], threading.Lock()

    def take():
        while True:
            task = prefetch.next()
            if task is None:
                return
            with lock:
                taken.append(task.args[0])
                peak[0] = max(peak[0], len(prefetch))

    huey.storage.read_timeout = 0.05  # an empty queue ends each thread quickly
    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(taken) == list(range(400))
    assert 0 < peak[0] <= 2


def test_a_task_revoked_while_it_waits_in_the_buffer_is_not_run(redis_db, run_consumer):
    huey = make_huey(redis_db)
    hold, gate, started = holding_task(huey)
    revoked, ran = threading.Event(), []

    @huey.task()
    def victim():
        ran.append('victim')

    @huey.signal(S.SIGNAL_REVOKED)
    def on_revoked(signal, task):
        revoked.set()

    hold()
    result = victim()
    consumer = run_consumer(huey, workers=1, prefetch=2)
    assert started.wait(WAIT)
    wait_until(lambda: len(consumer.prefetch) == 1, 'victim to wait in the buffer')
    assert huey.pending_count() == 0  # off the queue: only the buffer holds it
    result.revoke()
    gate.set()
    assert revoked.wait(WAIT)
    assert ran == []


def test_stopping_the_consumer_puts_the_buffer_back_on_the_queue(redis_db):
    huey = make_huey(redis_db)
    hold, gate, started = holding_task(huey)
    ran = []

    @huey.task()
    def later(i):
        ran.append(i)

    hold()
    for i in range(3):
        later(i)
    consumer = huey.create_consumer(workers=1, prefetch=4, initial_delay=0.001, max_delay=0.01)
    consumer.start()
    try:
        assert started.wait(WAIT)
        wait_until(lambda: len(consumer.prefetch) == 3, 'three tasks to wait in the buffer')
        assert huey.pending_count() == 0
        stop_then_open(consumer, gate)
    finally:
        gate.set()
        consumer.stop(graceful=True)
    assert ran == []
    assert len(consumer.prefetch) == 0
    assert sorted(t.args[0] for t in huey.pending()) == [0, 1, 2]


def reliable_huey(redis_db, name='prefetch-reliable'):
    return RedisHuey(
        name, url=redis_db.url, reliable=True, lease=60, storage_class=CountingRedisStorage
    )


def test_reliable_mode_takes_leased_batches_and_releases_them_to_the_queue_front(redis_db):
    huey = reliable_huey(redis_db)
    record, _ = recording_task(huey)
    for i in range(8):
        record(i)
    batch = huey.dequeue_many(5)
    assert [t.args[0] for t in batch] == [0, 1, 2, 3, 4]
    tokens = {t.delivery.token for t in batch}
    inflight = huey.storage.inflight_items()
    assert {token for token, *_ in inflight} == tokens and len(tokens) == 5
    assert {charged for _, _, charged, _, _ in inflight} == {0}  # none started: uncharged
    assert huey._reliable.leases().tokens >= tokens  # renewed while they wait
    assert huey._reliable.release(batch[2:]) == 3
    assert huey.storage.inflight_items() and len(huey.storage.inflight_items()) == 2
    assert [t.args[0] for t in huey.pending()] == [2, 3, 4, 5, 6, 7]  # in order, in front
    again = huey.dequeue_many(3)
    assert [(t.args[0], t.delivery.count) for t in again] == [(2, 1), (3, 1), (4, 1)]
    huey._reliable.leases().stop()  # five stay in flight: no renewing once Redis is gone


def test_reliable_mode_runs_every_task_once_with_fewer_commands(
    redis_db, run_consumer, redis_commands
):
    huey = reliable_huey(redis_db)
    record, ran = recording_task(huey)
    results = [record(i) for i in range(60)]
    consumer = run_consumer(huey, workers=1, prefetch=4)
    got = [r.get(blocking=True, timeout=WAIT, preserve=True) for r in results]  # no scripts
    assert got == list(range(60)) and sorted(ran) == list(range(60))
    assert max(taken for _, taken in huey.storage.calls) == 4  # leased batches
    # One at a time, a task costs four scripts (take, start, fenced result, ack): 240 here.
    # A batch of four costs ten: its take, the first start, four results, three acks each
    # starting the next task, and the last ack; 150, plus the idle worker's polls at the end.
    scripts = [args[0] for args in redis_commands].count('EVALSHA')
    assert scripts < 3 * 60, scripts
    wait_until(lambda: not huey.storage.inflight_items(), 'the last ack')
    assert len(consumer.prefetch) == 0


def test_a_stopping_reliable_consumer_releases_its_buffer_uncharged(redis_db, run_consumer):
    huey = reliable_huey(redis_db)
    hold, gate, started = holding_task(huey)
    record, ran = recording_task(huey)
    hold()
    for i in range(3):
        record(i)
    consumer = run_consumer(huey, workers=1, prefetch=4)
    assert started.wait(WAIT)
    assert len(consumer.prefetch) == 3 and len(huey.storage.inflight_items()) == 4
    stop_then_open(consumer, gate)
    assert ran == [] and huey.storage.inflight_items() == []
    assert [t.args[0] for t in huey.pending()] == [0, 1, 2]
    assert [t.delivery.count for t in huey.dequeue_many(3)] == [1, 1, 1]  # not charged


def test_huey_dequeue_many_sets_undecodable_messages_aside_and_keeps_the_rest(redis_db):
    huey = make_huey(redis_db)

    @huey.task()
    def ok(i):
        return i

    ok(1)
    huey.storage.enqueue(b'not a message')
    ok(2)
    tasks = huey.dequeue_many(5)
    assert [t.args[0] for t in tasks] == [1, 2]
    assert huey.dead_letter_count() == 1
    assert huey.dequeue_many(5) == []


@pytest.mark.parametrize('cls', ['RedisStorage', 'PriorityRedisStorage', 'RedisExpireStorage'])
def test_the_redis_storages_take_a_batch_with_one_command(redis_db, cls):
    import huey.storage

    storage = getattr(huey.storage, cls)('batch', url=redis_db.url)
    for i in range(5):
        storage.enqueue(b'%d' % i)
    assert storage.dequeue_many(1) == [b'0']  # (loads the scripts it may need)
    client, sent = storage.conn, []
    execute = client.execute_command
    client.execute_command = lambda *args, **kwargs: (
        sent.append(args[0]) or execute(*args, **kwargs)
    )
    assert storage.dequeue_many(3) == [b'1', b'2', b'3']
    assert len(sent) == 1, sent
    assert storage.dequeue_many(3) == [b'4']


def test_sqlite_takes_a_batch_with_one_statement_in_dequeue_order(tmp_path):
    storage = SqliteStorage('batch', filename=str(tmp_path / 'q.db'))
    for i, priority in enumerate([0, 5, 0, 5, 1]):
        storage.enqueue(b'%d' % i, priority)
    statements = []
    storage.conn.set_trace_callback(statements.append)
    assert storage.dequeue_many(4) == [b'1', b'3', b'4', b'0']
    assert [sql for sql in statements if not sql.startswith('pragma')] == [statements[-1]], (
        statements
    )
    assert statements[-1].lower().startswith('delete')
    assert storage.dequeue_many(4) == [b'2']
    assert storage.dequeue_many(4) == []


def test_postgres_takes_a_batch_with_one_statement_in_dequeue_order(postgres_db):
    storage = PostgresStorage('batch', dsn=postgres_db.dsn)
    for i, priority in enumerate([0, 5, 0, 5, 1]):
        storage.enqueue(b'%d' % i, priority)
    assert storage.dequeue_many(4) == [b'1', b'3', b'4', b'0']
    assert storage.dequeue_many(4) == [b'2']
    assert storage.dequeue_many(4) == []


@pytest.mark.parametrize('make', [MemoryStorage, FileStorage], ids=['memory', 'file'])
def test_the_native_storages_take_a_batch_in_dequeue_order_and_wait_for_one(make, tmp_path):
    storage = make('batch', path=str(tmp_path)) if make is FileStorage else make('batch')
    for i, priority in enumerate([0, 5, 0, 5, 1]):
        storage.enqueue(b'%d' % i, priority)
    assert storage.dequeue_many(4) == [b'1', b'3', b'4', b'0']
    assert storage.dequeue_many(4) == [b'2']
    assert storage.dequeue_many(4) == []
    threading.Timer(0.05, storage.enqueue, (b'late',)).start()
    assert storage.dequeue_many(4, timeout=WAIT) == [b'late']  # woken by the enqueue


@pytest.mark.parametrize('n', [0, -1, 1.5, None])
def test_dequeue_many_refuses_a_batch_size_that_is_not_a_positive_int(n, tmp_path):
    for storage in (MemoryStorage('n'), SqliteStorage('n', filename=str(tmp_path / 'q.db'))):
        with pytest.raises((ValueError, TypeError), match=r'\bn\b'):
            storage.dequeue_many(n)


def queued_huey(tmp_path, name, n):
    """A SqliteHuey with ``n`` tasks queued, ``record(0)`` to ``record(n - 1)``."""
    huey = SqliteHuey(name, filename=str(tmp_path / f'{name}.db'))
    record, _ = recording_task(huey)
    for i in range(n):
        record(i)
    return huey


def test_extras_are_fetched_only_while_tasks_are_short(monkeypatch, tmp_path):
    monkeypatch.setattr(Prefetch, 'assumed_task_seconds', None)  # the default
    prefetch = Prefetch(queued_huey(tmp_path, 'short', 20), 4)
    assert prefetch.next().args == (0,)
    assert len(prefetch) == 0  # before any task ran: one message per fetch
    prefetch.ran(0.001)
    assert prefetch.next().args == (1,)
    assert len(prefetch) == 3  # short tasks: a batch
    assert [prefetch.next().args[0] for _ in range(3)] == [2, 3, 4]
    for _ in range(10):
        prefetch.ran(2.0)  # long tasks: one at a time again, the rest left to others
    assert prefetch.next().args == (5,)
    assert len(prefetch) == 0


def test_a_message_left_waiting_in_the_buffer_goes_back_on_the_queue(tmp_path):
    huey = queued_huey(tmp_path, 'stale', 4)
    prefetch = Prefetch(huey, 4)
    assert prefetch.next().args == (0,)
    assert len(prefetch) == 3 and huey.pending_count() == 0
    assert prefetch.return_stale() == 0  # not waited long enough
    assert prefetch.return_stale(now=time.monotonic() + prefetch.stale_after + 1) == 3
    assert len(prefetch) == 0
    assert [t.args[0] for t in huey.pending()] == [1, 2, 3]


def test_a_message_held_behind_a_blocked_worker_goes_to_another_consumer(
    redis_db, run_consumer, monkeypatch
):
    # One worker fetches two tasks that each wait for the other to start: the second waits
    # in the buffer until the scheduler's next pass puts it back, and another consumer's
    # worker runs it (huey 3.5.4 leaves it on the queue for that consumer to begin with).
    monkeypatch.setattr(Prefetch, 'stale_after', 0.2)
    started = {'a': threading.Event(), 'b': threading.Event()}
    hueys = [make_huey(redis_db, 'pair'), make_huey(redis_db, 'pair')]
    for huey in hueys:

        @huey.task(name='meet')
        def meet(me, other):
            started[me].set()
            return started[other].wait(WAIT)

    first, second = meet('a', 'b'), meet('b', 'a')
    holder = run_consumer(hueys[0], workers=1, prefetch=2)
    wait_until(lambda: started['a'].is_set() and len(holder.prefetch) == 1, 'a buffered task')
    run_consumer(hueys[1], workers=1, prefetch=1)
    assert second.get(blocking=True, timeout=WAIT) is True
    assert first.get(blocking=True, timeout=WAIT) is True
    assert len(holder.prefetch) == 0


def test_a_result_write_reads_the_next_tasks_revocation_flags_in_the_same_command(
    redis_db, run_consumer, redis_commands
):
    huey = make_huey(redis_db)
    record, ran = recording_task(huey)
    results = [record(i) for i in range(40)]
    run_consumer(huey, workers=1, prefetch=4)
    assert [r.get(blocking=True, timeout=WAIT) for r in results] == list(range(40))
    assert sorted(ran) == list(range(40))
    reads = [args[0] for args in redis_commands].count('HMGET')
    # Each batch's first task reads its flags alone; the others come with a result write.
    assert 0 < reads <= 40 // 4 + 2, reads


def test_a_revocation_made_by_the_task_before_applies_to_a_task_taken_ahead(
    redis_db, run_consumer
):
    huey = make_huey(redis_db)
    ran, results = [], []

    @huey.task()
    def step(i):
        ran.append(i)
        if i == 1:
            results[2].revoke(revoke_once=False)  # before the write that reads its flags
        if i == 3:
            results[4].revoke(revoke_once=True)
        return i

    results.extend(step(i) for i in range(6))
    run_consumer(huey, workers=1, prefetch=6)
    assert results[5].get(blocking=True, timeout=WAIT) == 5
    assert ran == [0, 1, 3, 5]
    assert huey.is_revoked(results[2])  # a plain revocation stays
    assert not huey.is_revoked(results[4])  # a one-time revocation was used up


class GreedyMemoryStorage(MemoryStorage):
    """Returns more messages than asked for (a storage with that bug)."""

    def dequeue_many(self, n, timeout=None):
        return super().dequeue_many(n + 2, timeout)


def test_messages_a_storage_returns_beyond_n_go_back_on_the_queue():
    huey = MemoryHuey('greedy', storage_class=GreedyMemoryStorage)
    record, _ = recording_task(huey)
    for i in range(5):
        record(i)
    assert huey.dequeue().args == (0,)
    assert sorted(t.args[0] for t in huey.pending()) == [1, 2, 3, 4]
    assert [t.args[0] for t in huey.dequeue_many(2)] == [3, 4]  # behind the rest now
