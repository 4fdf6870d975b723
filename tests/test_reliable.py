"""Reliable delivery (``Huey(reliable=True)``) on Sqlite, File and Redis: in-flight moves, acks,
lease renewal, recovery, the delivery cap, fencing, and the atomic schedule move."""

import datetime
import os
import random
import select
import signal
import time
import uuid

import pytest

from huey import FileHuey, RedisHuey, SqliteHuey
from huey.api import PriorityRedisHuey
from huey.signals import SIGNAL_DEAD_LETTER


@pytest.fixture(params=['sqlite', 'file', 'redis', 'priority_redis'])
def make_huey(request, tmp_path):
    def make(**kwargs):
        if request.param == 'sqlite':
            return SqliteHuey('rel', filename=str(tmp_path / 'q.db'), **kwargs)
        if request.param == 'file':
            return FileHuey('rel', path=str(tmp_path / 'files'), **kwargs)
        server = request.getfixturevalue('redis_db')
        cls = RedisHuey if request.param == 'redis' else PriorityRedisHuey
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
    assert token == task._delivery and deliveries == 1
    assert huey.deserialize_task(data).id == task.id
    assert huey.execute(task) == 3
    assert result.get() == 3
    assert huey.storage.inflight_items() == []
    assert huey.storage.ack(token) is False


def test_expired_lease_is_redelivered_then_dead_lettered_at_the_cap(make_huey):
    huey = make_huey(reliable=True, lease=30, max_deliveries=2)
    huey.task()(lambda: 1)()
    first = huey.dequeue()
    assert huey.storage.recover_expired(2, now=time.time()) == (0, [])  # lease still valid
    assert huey.storage.recover_expired(2, now=time.time() + 31) == (1, [])
    second = huey.dequeue()
    assert second.id == first.id and second._deliveries == 2
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
    tokens = [huey.dequeue()._delivery for _ in range(3)]
    assert huey.storage.renew_leases(tokens + ['not-a-token'], 30) == 3
    leases = [until for _, _, _, until, _ in huey.storage.inflight_items()]
    assert all(until > time.time() + 29 for until in leases)


def test_late_finisher_is_fenced(make_huey):
    huey = make_huey(reliable=True, lease=30)
    fn = huey.task(name='first')(lambda: 'late')
    pipe = fn.s().then(huey.task(name='then')(lambda value: value))
    huey.enqueue(pipe)
    stale = huey.dequeue()
    huey.storage.recover_expired(3, now=time.time() + 31)  # consumer presumed dead
    fresh = huey.dequeue()
    assert fresh.id == stale.id and fresh._delivery != stale._delivery
    # The stale run finishes first: no result, no continuation.
    assert huey.execute(stale) == 'late'
    assert huey.result(stale.id, preserve=True) is None and huey.pending_count() == 0
    assert huey.execute(fresh) == 'late'
    assert huey.result(stale.id) == 'late' and huey.pending_count() == 1


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


@pytest.mark.parametrize('kind', ['sqlite', 'file', 'redis', 'priority_redis'])
def test_recovery_sets_over_cap_messages_aside_in_the_same_step(kind, tmp_path, request):
    # The storage writes the dead letter inside the recovery (Sqlite transaction, Redis
    # script, File: before the in-flight file goes), so the storage call alone, with no
    # Huey bookkeeping after it, leaves the message in the dead-letter queue.
    if kind == 'sqlite':
        huey = SqliteHuey('rel', filename=str(tmp_path / 'q.db'), reliable=True)
    elif kind == 'file':
        huey = FileHuey('rel', path=str(tmp_path / 'files'), reliable=True)
    else:
        server = request.getfixturevalue('redis_db')
        cls = RedisHuey if kind == 'redis' else PriorityRedisHuey
        huey = cls('rel', blocking=False, reliable=True, **server.connection_params)
    huey.task()(lambda: 1)()
    task = huey.dequeue()
    [(_, deliveries, letter_id)] = huey.storage.recover_expired(1, now=time.time() + 31)[1]
    assert deliveries == 1
    [letter] = huey.storage.dead_letters()
    assert letter['id'] == letter_id and huey.deserialize_task(letter['data']).id == task.id
    assert letter['reason'] == 'delivered 1 times without completing (max_deliveries=1)'
    assert huey.storage.inflight_items() == [] and huey.pending_count() == 0


def _command_calls(client, command):
    stats = client.info('commandstats').get(f'cmdstat_{command}')
    return stats['calls'] if stats else 0


def test_redis_reliable_dequeue_blocks_on_the_server(redis_db):
    import threading

    import redis

    huey = RedisHuey('rel', reliable=True, lease=30, read_timeout=5, **redis_db.connection_params)
    fn = huey.task()(lambda: 'ok')
    client = redis.Redis(**redis_db.connection_params)
    client.config_resetstat()
    got = []
    waiter = threading.Thread(target=lambda: got.append(huey.dequeue()))
    waiter.start()
    deadline = time.monotonic() + 5
    while _command_calls(client, 'brpoplpush') == 0:  # the waiter is blocked on the server
        assert time.monotonic() < deadline
        time.sleep(0.005)
    fn()
    waiter.join(10)
    [task] = got
    assert huey.execute(task) == 'ok'
    # One pop attempt before blocking, one adoption after: no polling loop.
    assert _command_calls(client, 'evalsha') + _command_calls(client, 'eval') <= 4
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
    assert task._deliveries == 1 and huey.execute(task) == 'ok'


def _churn(path, ready):
    """Child: move every message queue -> in flight -> queue, forever (lease 0, no ack)."""
    from huey.storage import FileStorage
    try:
        storage = FileStorage('rel', path=path)
        first = True
        while True:
            storage.dequeue_reliable('churn', uuid.uuid4().hex, 0)
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
