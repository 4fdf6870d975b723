"""Redis storage specifics: keys, notify_result, outages, old servers, sharing with huey 3.5.4."""

import datetime
import logging
import struct
import threading
import time

import pytest
import redis

from huey.exceptions import ConfigurationError
from huey.storage import (
    PriorityRedisExpireStorage,
    PriorityRedisStorage,
    RedisExpireStorage,
    RedisStorage,
)

ALL = [RedisStorage, RedisExpireStorage, PriorityRedisStorage, PriorityRedisExpireStorage]


@pytest.fixture
def client(redis_db):
    conn = redis.Redis(host=redis_db.host, port=redis_db.port)
    yield conn
    conn.close()


def make(cls, server, name='app', **kwargs):
    return cls(name, host=server.host, port=server.port, **kwargs)


def test_key_layout(redis_db, client):
    storage = make(RedisStorage, redis_db, 'my-app')
    assert storage.name == 'myapp'
    storage.enqueue(b'm')
    storage.add_to_schedule(b's', datetime.datetime(2000, 1, 1, 0, 0, 0, 500000))
    storage.put_data('k', b'v')
    storage.incr('c', 3)
    assert client.lrange('huey.redis.myapp', 0, -1) == [b'm']
    assert client.zrange('huey.schedule.myapp', 0, -1, withscores=True) == [
        (b's', time.mktime((2000, 1, 1, 0, 0, 0, 5, 1, -1)) + 0.5)
    ]
    assert client.hgetall('huey.results.myapp') == {b'k': b'v'}
    assert client.hgetall('huey.counters.myapp') == {b'c': b'3'}
    assert (
        make(RedisStorage, redis_db, 'my-app', clean_name=False).queue_key == 'huey.redis.my-app'
    )


def test_expire_key_layout_and_ttls(redis_db, client):
    storage = make(RedisExpireStorage, redis_db, expire_time=600)
    storage.put_data('kept', b'1')
    storage.put_data('res', b'2', is_result=True)
    storage.incr('cnt')
    assert client.ttl(b'huey.r.app.kept') == -1
    assert 590 <= client.ttl(b'huey.r.app.res') <= 600
    assert 590 <= client.ttl(b'huey.c.app.cnt') <= 600
    assert storage.result_key('res') == b'huey.r.app.res'
    assert storage.put_if_empty('lock', b'x', ttl=30)
    assert 0 < client.ttl(b'huey.r.app.lock') <= 30


def test_priority_member_encoding(redis_db, client):
    storage = make(PriorityRedisStorage, redis_db)
    before = int(time.time() * 1e6)
    storage.enqueue(b'payload', priority=7)
    ((member, score),) = client.zrange('huey.redis.app', 0, -1, withscores=True)
    (stamp,) = struct.unpack('>Q', member[:8])
    assert member[8:] == b'payload' and score == -7.0
    assert before <= stamp <= int(time.time() * 1e6)


def test_schedule_pop_is_atomic_under_concurrency(redis_db):
    storages = [make(RedisStorage, redis_db) for _ in range(4)]
    when = datetime.datetime(2000, 1, 1)
    for i in range(2000):
        storages[0].add_to_schedule(b'%d' % i, when)
    got, lock = [], threading.Lock()

    def read(storage):
        for _ in range(20):
            items = storage.read_schedule(when)
            with lock:
                got.extend(items)

    threads = [threading.Thread(target=read, args=(s,)) for s in storages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == sorted(b'%d' % i for i in range(2000))


@pytest.mark.parametrize('cls', [RedisStorage, RedisExpireStorage])
def test_notify_result_wakes_waiter(cls, redis_db, client):
    storage = make(cls, redis_db, notify_result=True, notify_result_ttl=30)
    assert storage.notify_result_ttl == 30
    woke = []

    def waiter():
        started = time.monotonic()
        woke.append((storage.wait_result('task-1', timeout=5), time.monotonic() - started))

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 5
    # Wait until the waiter is blocked in BLPOP on the server.
    while client.info('clients')['blocked_clients'] < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    storage.put_data('task-1', b'done', is_result=True)
    thread.join()
    assert woke[0][0] is True
    assert woke[0][1] < 1.0  # Polling with backoff would not be this quick after a block.
    assert not client.exists('huey.notify.app.task-1')  # The waiter consumed it.
    storage.put_data('task-2', b'done', is_result=True)
    assert 0 < client.ttl('huey.notify.app.task-2') <= 30


def test_default_notify_ttl_matches_huey(redis_db):
    assert make(RedisStorage, redis_db).notify_result_ttl == 60


def test_conflicting_connection_arguments(redis_db):
    with pytest.raises(ConfigurationError):
        RedisStorage(url=redis_db.url, host='127.0.0.1')
    with pytest.raises(ConfigurationError):
        RedisStorage(connection_pool=redis.ConnectionPool(), url=redis_db.url)
    storage = RedisStorage(url=redis_db.url, host=None, port=None, db=None)
    storage.enqueue(b'x')
    assert storage.dequeue() == b'x'


def test_client_name(redis_db, client):
    storage = make(RedisStorage, redis_db, client_name='huey-rs-test')
    names = [c['name'] for c in client.client_list()]
    assert 'huey-rs-test' in names
    storage.close()  # (kept open until here: a dropped storage closes its connection)


@pytest.mark.parametrize('cls', ALL)
def test_dequeue_wait_blocks_until_enqueue(cls, redis_db):
    consumer = make(cls, redis_db)
    producer = make(cls, redis_db)
    timer = threading.Timer(0.05, producer.enqueue, (b'late',))
    started = time.monotonic()
    timer.start()
    assert consumer.dequeue_wait(5) == b'late'
    assert time.monotonic() - started < 1
    timer.join()
    started = time.monotonic()
    assert consumer.dequeue_wait(0.2) is None
    assert 0.15 < time.monotonic() - started < 1


def test_missing_server_error_names_host_and_port(redis_server):
    storage = RedisStorage(host='127.0.0.1', port=1)
    with pytest.raises(redis.ConnectionError, match='127.0.0.1:1'):
        storage.enqueue(b'x')
    with pytest.raises(redis.ConnectionError):  # As huey: the worker logs and backs off.
        storage.dequeue()
    assert storage.server_address == '127.0.0.1:1'


def test_dequeue_wait_survives_a_restart(redis_db, caplog):
    storage = make(RedisStorage, redis_db)
    storage.enqueue(b'before')
    assert storage.dequeue_wait(1) == b'before'
    redis_db.stop()
    with caplog.at_level(logging.WARNING, logger='huey.storage.redis'):
        assert storage.dequeue_wait(0.3) is None  # Logged and retried, not raised.
    assert f'{redis_db.host}:{redis_db.port}' in caplog.text
    redis_db.start()
    storage.enqueue(b'after')
    assert storage.dequeue_wait(1) == b'after'


def test_priority_storage_on_server_without_zpopmin(redis_server_factory):
    old = redis_server_factory(
        '--rename-command', 'BZPOPMIN', '', '--rename-command', 'ZPOPMIN', ''
    )
    for blocking in (True, False):
        storage = PriorityRedisStorage('p', host=old.host, port=old.port, blocking=blocking)
        storage.enqueue(b'x', priority=1)
        with pytest.raises(ConfigurationError, match=r'Redis >= 5.0.*127.0.0.1'):
            storage.dequeue()
        with pytest.raises(ConfigurationError, match='Redis >= 5.0'):
            storage.dequeue_wait(0.1)


def test_expire_storage_glob_characters_in_name(redis_db):
    odd = make(RedisExpireStorage, redis_db, 'a*', clean_name=False)
    other = make(RedisExpireStorage, redis_db, 'ab', clean_name=False)
    odd.put_data('k', b'1')
    other.put_data('k', b'2')
    assert odd.result_items() == {'k': b'1'}
    odd.flush_results()
    assert other.peek_data('k') == b'2'


# Sharing one Redis with huey 3.5.4: the queue, schedule, results and counters in
# tests/test_storage_contract.py; result notification here.


def test_notify_result_interop_with_huey_354(redis_db, reference_peer):
    kwargs = {'host': redis_db.host, 'port': redis_db.port, 'notify_result': True}
    ours = RedisStorage('n', **kwargs)
    theirs = reference_peer('RedisStorage', 'n', **kwargs)
    waited = []
    thread = threading.Thread(target=lambda: waited.append(ours.wait_result('t1', timeout=5)))
    thread.start()
    theirs.put_data('t1', b'v', True)
    thread.join()
    assert waited == [True]
    ours.put_data('t2', b'v', is_result=True)
    assert theirs.wait_result('t2', 2) is True


def _calls(client, *commands):
    stats = client.info('commandstats')
    return sum(stats.get(f'cmdstat_{name}', {}).get('calls', 0) for name in commands)


def test_custom_redis_client_sees_every_command(redis_db):
    # Every command goes through the storage's redis-py client class: a custom
    # ``redis_client`` (key prefixes, tracing, ...) sees the hot commands too.
    from huey import Huey

    seen = []

    class Tracing(redis.Redis):
        def execute_command(self, *args, **options):
            seen.append(args[0])
            return super().execute_command(*args, **options)

    class TracedStorage(RedisStorage):
        redis_client = Tracing

    huey = Huey(
        'traced',
        storage_class=TracedStorage,
        host=redis_db.host,
        port=redis_db.port,
        blocking=False,
    )
    task = huey.task()(lambda: 'done')
    result = task()
    huey.execute(huey.dequeue())
    assert result.get() == 'done'
    assert {'LPUSH', 'RPOP', 'HMGET', 'EVALSHA'} <= set(seen)


@pytest.mark.parametrize('cls', ALL, ids=lambda cls: cls.__name__)
def test_a_task_costs_a_pop_a_flag_read_and_a_result_write(cls, redis_db, client):
    # Messages are opaque to the storage: the revocation flags are read with HMGET/MGET after
    # the pop (no script reads inside a message), and the result replaces the task's
    # revocation flag in one script.
    from huey import Huey

    huey = Huey('cost', storage_class=cls, host=redis_db.host, port=redis_db.port, blocking=False)
    task = huey.task()(lambda n: n)
    task(-1)
    huey.execute(huey.dequeue())  # loads the result script
    results = [task(i) for i in range(5)]
    client.config_resetstat()
    for _ in range(5):
        huey.execute(huey.dequeue())
    assert _calls(client, 'rpop', 'zpopmin') == 5
    assert _calls(client, 'hmget', 'mget') == 5
    assert _calls(client, 'evalsha') == 5
    assert [r.get() for r in results] == list(range(5))


def test_each_thread_uses_its_own_connection(redis_db, client):
    storage = make(RedisStorage, redis_db, client_name='per-thread')
    ids = []
    # All three alive at once: a finished thread's connection goes back to the pool.
    together = threading.Barrier(3, timeout=10)

    def work():
        together.wait()
        storage.enqueue(b'x')
        ids.append(storage.conn.client_id())
        assert storage.dequeue() == b'x'
        ids.append(storage.conn.client_id())
        together.wait()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 3 and len(ids) == 6  # one connection per thread, kept
    names = [c['name'] for c in client.client_list()]
    assert names.count('per-thread') >= 1  # connections name themselves on connect


def test_a_callers_pool_keeps_its_limit_under_many_threads(redis_db, client):
    # Six threads share a caller's BlockingConnectionPool of 2: each command borrows a
    # connection and gives it back (none is kept by a thread), so every thread gets on.
    pool = redis.BlockingConnectionPool(
        max_connections=2, timeout=10, client_name='pooled', **redis_db.connection_params
    )
    storage = RedisStorage('pooled', connection_pool=pool, blocking=False)
    taken, errors = [], []

    def work(i):
        try:
            for j in range(20):
                storage.enqueue(b'%d-%d' % (i, j))
                taken.append(storage.dequeue())
                storage.delete_and_put('r:x', f'{i}-{j}', b'v', is_result=True)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(taken) == 120 and None not in taken
    assert [c['name'] for c in client.client_list()].count('pooled') <= 2


def test_a_command_on_a_connection_the_server_closed_is_sent_again(redis_db, client):
    storage = make(RedisStorage, redis_db)
    storage.enqueue(b'first')
    client.client_kill_filter(_id=storage.conn.client_id())  # as a restart or timeout does
    storage.enqueue(b'second')  # this thread's connection was dead: resent on a new one
    assert storage.enqueued_items() == [b'first', b'second']


def test_a_reliable_pop_resent_with_its_token_takes_no_second_message(redis_db):
    # A retried call (reply lost after the server ran it) must not move a second message
    # into flight under the same token.
    storage = make(PriorityRedisStorage, redis_db)
    storage.enqueue(b'a')
    storage.enqueue(b'b')
    first = storage.dequeue_reliable('c', 'token-1', 30)
    assert storage.dequeue_reliable('c', 'token-1', 30) == first == (b'a', 1)
    assert storage.enqueued_items() == [b'b']
