"""Redis storage specifics: keys, notify_result, outages, old servers, sharing with huey 3.5.4."""

import datetime
import logging
import struct
import threading
import time

import pytest
import redis

from huey.constants import EmptyData
from huey.exceptions import ConfigurationError
from huey.storage.redis import DEQUEUE_PEEK_LUA
from huey.storage import (PriorityRedisExpireStorage, PriorityRedisStorage, RedisExpireStorage,
                          RedisStorage)

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
        (b's', time.mktime((2000, 1, 1, 0, 0, 0, 5, 1, -1)) + 0.5)]
    assert client.hgetall('huey.results.myapp') == {b'k': b'v'}
    assert client.hgetall('huey.counters.myapp') == {b'c': b'3'}
    assert make(RedisStorage, redis_db, 'my-app', clean_name=False).queue_key == \
        'huey.redis.my-app'


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
    (member, score), = client.zrange('huey.redis.app', 0, -1, withscores=True)
    stamp, = struct.unpack('>Q', member[:8])
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
    make(RedisStorage, redis_db, client_name='huey-rs-test')
    names = [c['name'] for c in client.client_list()]
    assert 'huey-rs-test' in names


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
    old = redis_server_factory('--rename-command', 'BZPOPMIN', '', '--rename-command',
                               'ZPOPMIN', '')
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


# Sharing one Redis with huey 3.5.4 ----------------------------------------------------------

@pytest.mark.parametrize('cls', ALL, ids=lambda cls: cls.__name__)
def test_shares_redis_with_huey_354(cls, redis_db, reference_peer):
    kwargs = {'host': redis_db.host, 'port': redis_db.port, 'blocking': False}
    ours = cls('shared', **kwargs)
    theirs = reference_peer(cls.__name__, 'shared', **kwargs)
    priority = cls.priority

    theirs.enqueue(b't1', 1 if priority else None)
    ours.enqueue(b'o1', 5 if priority else None)
    theirs.enqueue(b't2', None)
    ours.enqueue(b'o2', None)
    expected = [b'o1', b't1', b't2', b'o2'] if priority else [b't1', b'o1', b't2', b'o2']
    assert theirs.enqueued_items() == ours.enqueued_items() == expected
    assert theirs.queue_size() == ours.queue_size() == 4
    assert [ours.dequeue(), theirs.dequeue(), ours.dequeue_wait(0.1), theirs.dequeue()] == \
        expected
    assert ours.dequeue() is None and theirs.dequeue() is None

    base = datetime.datetime(2020, 5, 6, 7, 8, 9, 123456)
    ours.add_to_schedule(b'o-1', base + datetime.timedelta(seconds=1))
    theirs.add_to_schedule(b't-0', base)
    ours.add_to_schedule(b'o-2', base + datetime.timedelta(seconds=2))
    assert theirs.scheduled_items() == ours.scheduled_items() == [b't-0', b'o-1', b'o-2']
    assert theirs.read_schedule(base) == [b't-0']
    assert ours.read_schedule(base + datetime.timedelta(seconds=1)) == [b'o-1']
    assert theirs.read_schedule(base + datetime.timedelta(seconds=3)) == [b'o-2']

    ours.put_data('r1', b'ours', True)
    theirs.put_data('r2', b'theirs', True)
    assert theirs.peek_data('r1') == b'ours'
    assert ours.peek_many(['r1', 'r2', 'rx']) == theirs.peek_many(['r1', 'r2', 'rx'])
    assert ours.pop_data('r2') == b'theirs'
    if issubclass(cls, RedisExpireStorage):
        assert theirs.pop_data('r2') == b'theirs'  # Non-destructive reads in both.
        assert theirs.delete_data('r2')
    else:
        assert theirs.pop_data('r2') is EmptyData
    assert theirs.result_items() == ours.result_items() == {'r1': b'ours'}
    assert theirs.result_store_size() == ours.result_store_size() == 1
    assert theirs.put_if_empty('lock', b'them') is True
    assert ours.put_if_empty('lock', b'us') is False
    assert ours.delete_data('lock')
    assert ours.put_if_empty('lock', b'us') is True
    assert theirs.put_if_empty('lock', b'them') is False

    assert ours.incr('hits') == 1
    assert theirs.incr('hits', 5) == 6
    assert ours.incr('hits', 2) == 8
    theirs.delete_counter('hits')
    assert ours.incr('hits') == 1
    ours.flush_counters()
    assert theirs.incr('hits') == 1
    theirs.flush_all()
    assert ours.result_store_size() == 0 and ours.queue_size() == 0


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


@pytest.mark.parametrize('cls', ALL, ids=lambda cls: cls.__name__)
def test_dequeue_reads_the_revocation_flags_with_the_message(cls, redis_db, client):
    from huey import Huey

    huey = Huey('peek', storage_class=cls, host=redis_db.host, port=redis_db.port,
                blocking=False)
    ran = []
    task = huey.task()(lambda n: ran.append(n))
    other = huey.task(name='other')(lambda n: ran.append(n))
    kept, revoked = task(1), task(2)
    revoked.revoke()
    other(3)
    other.revoke()
    huey.storage.conn.script_load(DEQUEUE_PEEK_LUA)
    client.config_resetstat()
    for _ in range(3):
        huey.execute(huey.dequeue())
    assert ran == [1]
    # One script per message and no separate read of the flags (HMGET / MGET).
    assert _calls(client, 'evalsha') == 3 and _calls(client, 'hmget', 'mget') == 0
    assert kept.get() is None and huey.pending_count() == 0


@pytest.mark.parametrize('cls', [RedisStorage, PriorityRedisExpireStorage],
                         ids=lambda cls: cls.__name__)
def test_messages_the_script_cannot_read_are_checked_as_usual(cls, redis_db, client):
    from huey import Huey

    # Compressed messages are opaque to the script: the flags are read separately.
    huey = Huey('peek', storage_class=cls, host=redis_db.host, port=redis_db.port,
                blocking=False, compression=True)
    ran = []
    task = huey.task()(lambda n: ran.append(n))
    task(1)
    task(2).revoke()
    client.config_resetstat()
    for _ in range(2):
        message = huey.dequeue()
        assert message._peeked is None
        huey.execute(message)
    assert ran == [1] and _calls(client, 'hmget', 'mget') == 2


def test_wire_stays_in_step_after_an_error_reply(redis_db):
    from huey.storage.redis_wire import pack

    storage = make(RedisStorage, redis_db)
    with pytest.raises(redis.exceptions.ResponseError):
        storage._wire.call(pack(b'HSET', b'key'), pack(b'PING'))  # wrong arity, then PING
    assert storage._wire.one(b'ECHO', b'next') == b'next'
    storage.enqueue(b'message')
    assert storage.dequeue() == b'message'


def test_custom_redis_client_sees_every_command(redis_db):
    # The packed-command hot path is only for the stock client: a custom ``redis_client``
    # (key prefixes, tracing, ...) gets the hot commands through its execute_command too.
    from huey import Huey

    seen = []

    class Tracing(redis.Redis):
        def execute_command(self, *args, **options):
            seen.append(args[0])
            return super().execute_command(*args, **options)

    class TracedStorage(RedisStorage):
        redis_client = Tracing

    huey = Huey('traced', storage_class=TracedStorage, host=redis_db.host,
                port=redis_db.port, blocking=False)
    task = huey.task()(lambda: 'done')
    result = task()
    huey.execute(huey.dequeue())
    assert result.get() == 'done'
    assert {'LPUSH', 'RPOP', 'HMGET'} <= set(seen)  # (results go through its pipeline)


def test_messages_pickled_by_huey_354_are_peeked_too(redis_db, client):
    # huey 3.5.4 pickles Message through the reduce protocol (with MEMOIZE after the class);
    # huey-rs writes the shorter form: the script reads the id and name from both.
    import pickle

    from huey import RedisHuey

    huey = RedisHuey('peek', host=redis_db.host, port=redis_db.port, blocking=False)
    task = huey.task()(lambda: 1)
    message = huey._registry.create_message(task.s())
    client.lpush(huey.storage.queue_key, pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
    task()
    for _ in range(2):
        dequeued = huey.dequeue()
        assert dequeued._peeked is not None and dequeued._peeked[0][0] == dequeued.revoke_id
