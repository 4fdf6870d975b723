"""Reliable delivery (``Huey(reliable=True)``) on Sqlite, File, Redis and Postgres: in-flight
moves, acks, lease renewal, recovery, the delivery cap, fencing, and the atomic schedule move."""

import datetime
import os
import random
import select
import signal
import threading
import time
import uuid

import pytest

from huey import FileHuey, Huey, PostgresHuey, RedisHuey, SqliteHuey
from huey.api import PriorityRedisHuey, RedisExpireHuey
from huey.constants import EmptyData
from huey.signals import SIGNAL_DEAD_LETTER
from sqlite_before_335 import SqliteBefore335  # tests/ is on sys.path


@pytest.fixture(
    params=[
        'sqlite',
        'sqlite-before-3.35',
        'file',
        'redis',
        'priority_redis',
        'redis_expire',
        'postgres',
    ]
)
def make_huey(request, tmp_path):
    def make(**kwargs):
        if request.param == 'sqlite':
            return SqliteHuey('rel', filename=str(tmp_path / 'q.db'), **kwargs)
        if request.param == 'sqlite-before-3.35':
            return Huey(
                'rel', storage_class=SqliteBefore335, filename=str(tmp_path / 'q.db'), **kwargs
            )
        if request.param == 'postgres':
            server = request.getfixturevalue('postgres_db')
            return PostgresHuey('rel', dsn=server.dsn, blocking=False, **kwargs)
        if request.param == 'file':
            return FileHuey('rel', path=str(tmp_path / 'files'), **kwargs)
        server = request.getfixturevalue('redis_db')
        cls = {'redis': RedisHuey, 'priority_redis': PriorityRedisHuey}.get(
            request.param, RedisExpireHuey
        )
        return cls('rel', blocking=False, **server.connection_params, **kwargs)

    return make


def test_default_mode_keeps_nothing_in_flight(make_huey):
    huey = make_huey()
    add = huey.task()(lambda a, b: a + b)
    add(1, 2)
    assert not huey.reliable
    task = huey.dequeue()
    assert huey.storage.inflight_items() == []
    assert huey.execute(task) == 3


def test_reliable_dequeue_holds_the_message_until_the_ack(make_huey):
    huey = make_huey(reliable=True, lease=30)
    add = huey.task()(lambda a, b: a + b)
    result = add(1, 2)
    task = huey.dequeue()
    assert huey.pending_count() == 0
    [(token, consumer, deliveries, _, data)] = huey.storage.inflight_items()
    # Delivery 1, charged only once the task starts.
    assert token == task.delivery.token and task.delivery.count == 1 and deliveries == 0
    assert huey.deserialize_task(data).id == task.id
    assert huey.execute(task) == 3
    assert result.get() == 3
    assert huey.storage.inflight_items() == []
    assert huey.storage.ack(token) is False


def test_expired_lease_is_redelivered_then_dead_lettered_at_the_cap(make_huey):
    huey = make_huey(reliable=True, lease=30, max_deliveries=2)
    huey.task()(lambda: 1)()
    first = huey.dequeue()
    assert huey.storage.mark_started(first.delivery.token)  # ... and its consumer dies
    assert huey.storage.recover_expired(2, now=time.time()) == (0, [])  # lease still valid
    assert huey.storage.recover_expired(2, now=time.time() + 31) == (1, [])
    second = huey.dequeue()
    assert second.id == first.id and second.delivery.count == 2
    assert huey.storage.mark_started(second.delivery.token)
    signalled = []
    huey.signal(SIGNAL_DEAD_LETTER)(lambda *args: signalled.append(args))
    assert huey.recover_expired(now=time.time() + 31) == (0, 1)
    assert huey.pending_count() == 0 and huey.storage.inflight_items() == []
    [letter] = huey.dead_letters()
    assert letter['deliveries'] == 2 and huey.deserialize_task(letter['data']).id == first.id
    assert letter['reason'] == 'delivered 2 times without completing (max_deliveries=2)'
    assert signalled == [(SIGNAL_DEAD_LETTER, None, letter['reason'], letter['id'])]


def test_renewal_is_batched_and_reports_what_is_still_in_flight(make_huey):
    huey = make_huey(reliable=True, lease=30)
    fn = huey.task()(lambda: 1)
    for _ in range(3):
        fn()
    tokens = [huey.dequeue().delivery.token for _ in range(3)]
    assert huey.storage.renew_leases(tokens + ['not-a-token'], 30) == 3
    leases = [until for _, _, _, until, _ in huey.storage.inflight_items()]
    assert all(until > time.time() + 29 for until in leases)


def test_late_finisher_is_fenced(make_huey):
    huey = make_huey(reliable=True, lease=30)
    fresh = []

    @huey.task(name='first')
    def first():
        if not fresh:  # the first run's consumer is presumed dead while it runs
            huey.storage.recover_expired(3, now=time.time() + 31)
            fresh.append(huey.dequeue())
        return 'late'

    pipe = first.s().then(huey.task(name='then')(lambda value: value))
    huey.enqueue(pipe)
    stale = huey.dequeue()
    # The stale run finishes after its redelivery was taken: no result, no continuation.
    assert huey.execute(stale) == 'late'
    [again] = fresh
    assert again.id == stale.id and again.delivery.token != stale.delivery.token
    assert again.delivery.count == 2  # the stale run had started: charged
    assert huey.result(stale.id, preserve=True) is None and huey.pending_count() == 0
    assert huey.execute(again) == 'late'
    assert huey.result(stale.id) == 'late' and huey.pending_count() == 1


def test_a_start_reads_flags_and_a_result_write_is_fenced_in_the_same_step(make_huey):
    huey = make_huey(reliable=True, lease=30)
    storage = huey.storage
    fn = huey.task()(lambda: 1)
    fn()
    task = huey.dequeue()
    token = task.delivery.token
    storage.put_data('flag', b'set')
    started, flags = storage.start_and_peek(token, ['flag', 'unset'])
    assert started and flags == {'flag': b'set'}
    [(_, _, charged, _, _)] = storage.inflight_items()
    assert charged == 1
    assert storage.renew_delete_and_put(token, 30, 'flag', 'result', b'value')
    assert storage.peek_data('flag') is EmptyData and storage.peek_data('result') == b'value'
    [(_, _, _, until, _)] = storage.inflight_items()
    assert until > time.time() + 29  # renewed
    assert storage.renew_delete_and_put(token, 30, 'result', None, None)  # a delete only
    assert storage.peek_data('result') is EmptyData
    assert storage.renew_delete_and_put(token, 30, 'same', 'same', b'one')  # one key
    assert storage.peek_data('same') == b'one'
    storage.put_data('flag', b'set')
    assert storage.recover_expired(3, now=time.time() + 31) == (1, [])
    # The delivery was recovered: nothing is written, nothing is charged.
    assert storage.renew_delete_and_put(token, 30, 'flag', 'result', b'late') is False
    assert storage.peek_data('flag') == b'set' and storage.peek_data('result') is EmptyData
    assert storage.start_and_peek(token, ['flag']) == (False, {})


def test_a_reliable_redis_task_needs_no_separate_flag_read_or_fence(
    redis_db, run_consumer, redis_commands
):
    # Take, start with the revocation flags, fenced result write, ack: no separate flag
    # read (HMGET) and no separate fence (ZADD XX, a lease renewal; an idle worker's
    # blocking wait registers a lease with a plain ZADD).
    huey = RedisHuey('rel', reliable=True, lease=60, **redis_db.connection_params)
    add = huey.task()(lambda a, b: a + b)
    results = [add(i, i) for i in range(20)]
    sent = redis_commands
    run_consumer(huey, workers=1, prefetch=1)
    assert [r.get(blocking=True, timeout=30) for r in results] == [2 * i for i in range(20)]
    assert sum(args[0] == 'EVALSHA' for args in sent) >= 4 * 20  # the commands were seen
    renewals = [args for args in sent if args[0] == 'ZADD' and b'XX' in args]
    assert 'HMGET' not in [args[0] for args in sent] and not renewals


def test_a_delivery_recovered_before_it_started_is_not_run_or_charged(make_huey):
    huey = make_huey(reliable=True, lease=30, max_deliveries=1)
    runs = []
    huey.task()(lambda: runs.append(1))()
    for _ in range(3):  # fetched by a consumer that died before starting it, three times
        huey.dequeue()
        assert huey.storage.recover_expired(1, now=time.time() + 31) == (1, [])
    stale = huey.dequeue()
    huey.storage.recover_expired(1, now=time.time() + 31)
    assert huey.execute(stale) is None and runs == []
    fresh = huey.dequeue()
    assert fresh.delivery.count == 1
    huey.execute(fresh)
    assert runs == [1] and huey.dead_letters() == [] and huey.storage.inflight_items() == []


def test_move_due_to_queue_keeps_order_and_priority(make_huey):
    huey = make_huey()
    fn = huey.task()(lambda n: n)
    now = huey._get_timestamp()
    for n, offset in [(0, -3), (99, 3600), (1, -2), (2, -1)]:
        task = fn.s(n)
        task.eta = now + datetime.timedelta(seconds=offset)
        huey.add_schedule(task)
    moved = huey.move_due_to_queue(now)
    assert [t.args for t in moved] == [(0,), (1,), (2,)]
    assert huey.scheduled_count() == 1 and huey.pending_count() == 3
    assert [huey.dequeue().args for _ in range(3)] == [(0,), (1,), (2,)]


@pytest.mark.parametrize('kind', ['sqlite', 'file', 'redis', 'priority_redis', 'postgres'])
def test_recovery_sets_over_cap_messages_aside_in_the_same_step(kind, tmp_path, request):
    # The storage writes the dead letter inside the recovery (Sqlite transaction, Redis
    # script, File: before the in-flight file goes), so the storage call alone, with no
    # Huey bookkeeping after it, leaves the message in the dead-letter queue.
    if kind == 'sqlite':
        huey = SqliteHuey('rel', filename=str(tmp_path / 'q.db'), reliable=True)
    elif kind == 'file':
        huey = FileHuey('rel', path=str(tmp_path / 'files'), reliable=True)
    elif kind == 'postgres':
        server = request.getfixturevalue('postgres_db')
        huey = PostgresHuey('rel', dsn=server.dsn, blocking=False, reliable=True)
    else:
        server = request.getfixturevalue('redis_db')
        cls = RedisHuey if kind == 'redis' else PriorityRedisHuey
        huey = cls('rel', blocking=False, reliable=True, **server.connection_params)
    huey.task()(lambda: 1)()
    task = huey.dequeue()
    huey.storage.mark_started(task.delivery.token)
    [(_, deliveries, letter_id)] = huey.storage.recover_expired(1, now=time.time() + 31)[1]
    assert deliveries == 1
    [letter] = huey.storage.dead_letters()
    assert letter['id'] == letter_id and huey.deserialize_task(letter['data']).id == task.id
    assert letter['reason'] == 'delivered 1 times without completing (max_deliveries=1)'
    assert huey.storage.inflight_items() == [] and huey.pending_count() == 0


def _run_a_then_the_suspect(huey, a, a_reached, suspect, order):
    """Execute task ``a`` in a thread until it sets ``a_reached``, then the ``suspect``
    (charged by an earlier crash) in another; return the two threads once the suspect waits
    for its turn to run alone (or has started, recorded in ``order``, where it should not)."""
    turns = huey._reliable.leases().turns
    threads = [threading.Thread(target=huey.execute, args=(a,))]
    threads[0].start()
    assert a_reached.wait(10)
    threads.append(threading.Thread(target=huey.execute, args=(suspect,)))
    threads[1].start()
    deadline = time.monotonic() + 10
    while not turns._waiting_alone and 'suspect' not in order:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return threads


def test_a_task_charged_by_an_earlier_crash_runs_alone(tmp_path):
    huey = SqliteHuey('rel', filename=str(tmp_path / 'q.db'), reliable=True, lease=30)
    order = []
    a_running, release_a = threading.Event(), threading.Event()

    @huey.task()
    def step(name):
        order.append(name)
        if name == 'a':
            a_running.set()
            assert release_a.wait(10)
            order.append('a done')

    step('suspect')
    crashed = huey.dequeue()
    huey.storage.mark_started(crashed.delivery.token)  # ... and its process was killed
    huey.storage.recover_expired(3, now=time.time() + 31)
    step('a')
    step('c')
    suspect, a, c = huey.dequeue(), huey.dequeue(), huey.dequeue()
    assert (suspect.delivery.count, a.delivery.count, c.delivery.count) == (2, 1, 1)
    threads = _run_a_then_the_suspect(huey, a, a_running, suspect, order)
    threads.append(threading.Thread(target=huey.execute, args=(c,)))
    threads[2].start()  # arrives after the suspect: waits for it
    release_a.set()
    for thread in threads:
        thread.join(10)
    assert order == ['a', 'a done', 'suspect', 'c']


def test_a_task_run_alone_starts_only_after_the_task_before_it_is_acked(tmp_path):
    # A task that returned but is not acked yet is still in flight: were the charged task
    # (perhaps the one killing its consumer) to start now, the crash would charge it again.
    huey = SqliteHuey('rel', filename=str(tmp_path / 'q.db'), reliable=True, lease=30)
    order = []

    @huey.task()
    def step(name):
        order.append(name)

    step('suspect')
    crashed = huey.dequeue()
    huey.storage.mark_started(crashed.delivery.token)  # ... and its process was killed
    huey.storage.recover_expired(3, now=time.time() + 31)
    step('a')
    suspect, a = huey.dequeue(), huey.dequeue()
    assert (suspect.delivery.count, a.delivery.count) == (2, 1)
    names = {suspect.delivery.token: 'suspect', a.delivery.token: 'a'}
    acking, finish_ack = threading.Event(), threading.Event()
    storage_ack = huey.storage.ack

    def ack(token):  # holds 'a' between its result and its ack
        if names[token] == 'a':
            acking.set()
            assert finish_ack.wait(10)
        order.append(f'acked {names[token]}')
        return storage_ack(token)

    huey.storage.ack = ack
    threads = _run_a_then_the_suspect(huey, a, acking, suspect, order)
    assert order == ['a']  # the suspect waits for the ack
    finish_ack.set()
    for thread in threads:
        thread.join(10)
    assert order == ['a', 'acked a', 'suspect', 'acked suspect']


def _take_all(storage, count):
    tokens = [uuid.uuid4().hex for _ in range(count)]
    for token in tokens:
        assert storage.dequeue_reliable('c', token, 30)
    return tokens


def _drain(storage):
    out = []
    while (data := storage.dequeue()) is not None:
        out.append(bytes(data))
    return out


def test_sqlite_unusable_inflight_rows_are_set_aside_and_the_rest_recovered(tmp_path):
    import sqlite3

    huey = SqliteHuey('rel', filename=str(tmp_path / 'q.db'), reliable=True)
    storage = huey.storage
    for data in (b'good', b'count', b'lease', b'priority', b'data', b'other'):
        storage.enqueue(data)
    tokens = _take_all(storage, 6)
    conn = sqlite3.connect(str(tmp_path / 'q.db'))
    for token, column, value in [
        (tokens[1], 'deliveries', 'two'),
        (tokens[2], 'lease_until', 'soon'),
        (tokens[3], 'priority', 'high'),
        (tokens[4], 'data', 12),
    ]:
        conn.execute(f'update huey_rs_inflight set {column} = ? where token = ?', (value, token))
    conn.commit()
    conn.close()
    signalled = []
    huey.signal(SIGNAL_DEAD_LETTER)(lambda *args: signalled.append(args))
    assert huey.recover_expired(now=time.time() + 31) == (2, 0)
    assert sorted(_drain(storage)) == [b'good', b'other']
    letters = {letter['data']: letter for letter in huey.dead_letters()}
    assert sorted(letters) == [b'12', b'count', b'lease', b'priority']
    assert "delivery count 'two' is not a count" in letters[b'count']['reason']
    assert "lease end 'soon' is not a time" in letters[b'lease']['reason']
    assert "priority 'high' is not a number" in letters[b'priority']['reason']
    assert 'its data is int' in letters[b'12']['reason']
    assert all(repr(tokens[i]) in letters[d]['reason'] for i, d in [(1, b'count'), (2, b'lease')])
    assert storage.inflight_items() == [] and storage.recover_expired(3) == (0, [])


def test_sqlite_unreadable_redelivery_count_sets_that_message_aside(tmp_path):
    import sqlite3

    storage = SqliteHuey('rel', filename=str(tmp_path / 'q.db'), reliable=True).storage
    storage.enqueue(b'crashed')
    [token] = _take_all(storage, 1)
    storage.mark_started(token)
    assert storage.recover_expired(3, now=time.time() + 31) == (1, [])
    storage.enqueue(b'next')
    conn = sqlite3.connect(str(tmp_path / 'q.db'))
    conn.execute("update huey_rs_redelivery set deliveries = 'x'")
    conn.commit()
    conn.close()
    # The damaged one is set aside in the same dequeue, which delivers the next message.
    assert storage.dequeue_reliable('c', 'fresh', 30) == (b'next', 1)
    [letter] = storage.dead_letters()
    assert letter['data'] == b'crashed' and "redelivery count 'x'" in letter['reason']
    assert storage.queue_size() == 0


@pytest.mark.parametrize('cls', [RedisHuey, PriorityRedisHuey])
def test_redis_unusable_inflight_meta_is_set_aside_and_the_rest_recovered(cls, redis_db):
    huey = cls('rel', blocking=False, reliable=True, **redis_db.connection_params)
    storage = huey.storage
    for data in (b'good', b'garbage', b'priority', b'other'):
        storage.enqueue(data)
    # Both queues deliver equal priorities oldest first.
    tokens = dict(zip((b'good', b'garbage', b'priority', b'other'), _take_all(storage, 4)))
    conn = storage.conn
    conn.hset(storage.inflight_meta_key, tokens[b'garbage'], 'garbage')
    conn.hset(storage.inflight_meta_key, tokens[b'priority'], '1 nan c')
    assert len(storage.inflight_items()) == 4  # listed all the same
    requeued, dead = storage.recover_expired(3, now=time.time() + 31)
    letters = {letter['data']: letter['reason'] for letter in storage.dead_letters()}
    assert dead == []
    assert b'garbage' in letters and tokens[b'garbage'] in letters[b'garbage']
    if cls is RedisHuey:  # a list queue has no use for the priority field
        assert requeued == 3 and sorted(_drain(storage)) == [b'good', b'other', b'priority']
    else:
        assert requeued == 2 and sorted(_drain(storage)) == [b'good', b'other']
        assert '"1 nan c"' in letters[b'priority']
    assert storage.inflight_items() == [] and storage.recover_expired(3) == (0, [])


@pytest.mark.parametrize('cls', [RedisHuey, PriorityRedisHuey])
def test_redis_unreadable_redelivery_count_sets_that_message_aside(cls, redis_db):
    storage = cls('rel', blocking=False, reliable=True, **redis_db.connection_params).storage
    storage.enqueue(b'crashed')
    [token] = _take_all(storage, 1)
    storage.mark_started(token)
    assert storage.recover_expired(3, now=time.time() + 31) == (1, [])
    [member] = storage.conn.hkeys(storage.redelivery_key)
    storage.conn.hset(storage.redelivery_key, member, 'x')
    storage.enqueue(b'next')
    assert storage.dequeue_reliable('c', 'fresh', 30) == (b'next', 1)
    [letter] = storage.dead_letters()
    assert letter['data'] == b'crashed' and "redelivery count b'x'" in letter['reason']
    assert [item[0] for item in storage.inflight_items()] == ['fresh']


def _command_calls(client, command):
    stats = client.info('commandstats').get(f'cmdstat_{command}')
    return stats['calls'] if stats else 0


def test_redis_reliable_dequeue_blocks_on_the_server(redis_db):
    import redis

    huey = RedisHuey('rel', reliable=True, lease=30, read_timeout=5, **redis_db.connection_params)
    fn = huey.task()(lambda: 'ok')
    client = redis.Redis(**redis_db.connection_params)
    client.config_resetstat()
    got = []
    waiter = threading.Thread(target=lambda: got.append(huey.dequeue()))
    waiter.start()
    deadline = time.monotonic() + 5
    # The waiter is blocked on the server (a client in BRPOPLPUSH with the 'b' flag; INFO
    # commandstats counts a blocked command only once it returns on some Redis versions).
    while not any(c['cmd'] == 'brpoplpush' and 'b' in c['flags'] for c in client.client_list()):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    fn()
    waiter.join(10)
    [task] = got
    # One pop attempt before blocking, one adoption after: no polling loop.
    assert _command_calls(client, 'evalsha') + _command_calls(client, 'eval') <= 4
    assert huey.execute(task) == 'ok'
    assert client.keys('huey.staging.*') == []


def test_redis_message_left_in_staging_by_a_dead_consumer_is_requeued(redis_db):
    # The consumer registered its lease, BRPOPLPUSH moved a message into its staging list,
    # then it died before adopting it: recovery puts the message back, uncounted.
    huey = RedisHuey('rel', reliable=True, lease=30, **redis_db.connection_params)
    fn = huey.task()(lambda: 'ok')
    fn()
    storage = huey.storage
    storage.conn.zadd(storage.lease_key, {'dead-token': time.time() - 1})
    assert storage.conn.brpoplpush(storage.queue_key, storage._staging_key('dead-token'), 1)
    assert huey.pending_count() == 0
    assert huey.recover_expired() == (1, 0)
    assert huey.pending_count() == 1 and storage.conn.keys('huey.staging.*') == []
    task = huey.dequeue()
    assert task.delivery.count == 1 and huey.execute(task) == 'ok'


def _churn(path, ready):
    """Child: move every message queue -> in flight -> queue, forever (lease 0, no ack)."""
    from huey.storage import FileStorage

    try:
        storage = FileStorage('rel', path=path)
        first = True
        while True:
            token = uuid.uuid4().hex
            if storage.dequeue_reliable('churn', token, 0):
                storage.mark_started(token)  # rewrites the entry in place
            storage.recover_expired(10**9, now=time.time() + 1)
            if first:
                os.write(ready, b'x')
                first = False
    finally:
        os._exit(1)


def test_file_processes_killed_mid_delivery_or_recovery_lose_nothing(tmp_path):
    """SIGKILL two processes moving messages between the queue and the in-flight area at
    random moments (inside a take, a recovery's claim, enqueue or unlink); after each
    round, recovery puts everything back and every message is still there."""
    from huey.storage import FileStorage

    path = str(tmp_path / 'files')
    storage = FileStorage('rel', path=path)
    messages = {b'm%d' % i for i in range(40)}
    for data in sorted(messages):
        storage.enqueue(data, priority=len(data))
    rng = random.Random(1)
    for _ in range(25):
        children = []
        for _ in range(2):
            ready, ready_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(ready)
                _churn(path, ready_w)
            os.close(ready_w)
            children.append((pid, ready))
        for _, ready in children:
            assert select.select([ready], [], [], 10)[0], 'churning child never started'
            os.close(ready)
        time.sleep(rng.uniform(0, 0.01))  # when to kill, not a wait for anything
        for pid, _ in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        storage.recover_expired(10**9, now=time.time() + 1)
        assert storage.inflight_items() == []
        assert set(storage.enqueued_items()) == messages
    assert sorted(os.listdir(os.path.join(path, 'inflight'))) == ['.lock']
