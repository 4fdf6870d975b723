"""One contract every storage meets, run against each storage huey.storage exports, and the
checks of one backend shared by two processes (huey-rs with huey-rs, and huey-rs with huey
3.5.4 where the layout is huey's), run against every storage that can be shared.

A new storage joins by adding a ``BACKENDS`` entry: how to build it, and whether another
process (``PROCESSES``) or huey 3.5.4 (``HUEY_354``) can open the same backend.
"""

import datetime
import multiprocessing
import random
import threading

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import huey.storage
from huey.constants import EmptyData
from huey.storage import (
    FileStorage,
    MemoryStorage,
    PostgresStorage,
    PriorityRedisExpireStorage,
    PriorityRedisStorage,
    RedisExpireStorage,
    RedisStorage,
    SqliteStorage,
)
from sqlite_before_335 import SqliteBefore335  # tests/ is on sys.path


def _sqlite(request, tmp_path, name):
    return SqliteStorage, {'filename': str(tmp_path / 'huey.db'), 'timeout': 30}


def _sqlite_before_335(request, tmp_path, name):
    return SqliteBefore335, {'filename': str(tmp_path / 'huey.db'), 'timeout': 30}


def _redis(cls, **kwargs):
    def spec(request, tmp_path, name):
        server = request.getfixturevalue('redis_db')
        return cls, {'host': server.host, 'port': server.port, **kwargs}

    return spec


def _postgres(**kwargs):
    def spec(request, tmp_path, name):
        server = request.getfixturevalue('postgres_db')
        return PostgresStorage, {'dsn': server.dsn, 'read_timeout': 0.2, **kwargs}

    return spec


def _redis_pool(request, tmp_path, name):
    # A user's own pool: blocking, smaller than the threads a consumer may run.
    server = request.getfixturevalue('redis_db')
    pool = redis.BlockingConnectionPool(max_connections=2, timeout=10, **server.connection_params)
    return RedisStorage, {'connection_pool': pool}


def _redis_tls(request, tmp_path, name):
    return RedisStorage, {'url': request.getfixturevalue('redis_tls_db').url}


def _redis_acl(request, tmp_path, name):
    return RedisStorage, request.getfixturevalue('redis_acl_db').connection_params


def _redis_sentinel_pool(request, tmp_path, name):
    # The pool of a redis.sentinel.Sentinel's master, handed over as a custom pool.
    deployment = request.getfixturevalue('redis_sentinel_db')
    master = deployment.sentinel().master_for(deployment.service)
    return RedisStorage, {'connection_pool': master.connection_pool}


def _redis_sentinel(request, tmp_path, name):
    deployment = request.getfixturevalue('redis_sentinel_db')
    return RedisStorage, {'sentinel': deployment.addresses, 'service_name': deployment.service}


def _redis_cluster(cls, **kwargs):
    def spec(request, tmp_path, name):
        node = request.getfixturevalue('redis_cluster_db').servers[0]
        return cls, {'cluster': True, 'host': node.host, 'port': node.port, **kwargs}

    return spec


def _file(request, tmp_path, name):
    # As in huey, a FileStorage's data is its directory (the name does not partition it).
    return FileStorage, {'path': str(tmp_path / f'files-{name}')}


def _memory(request, tmp_path, name):
    return MemoryStorage, {}


def _cysqlite(request, tmp_path, name):
    return huey.storage.CySqliteStorage, {'filename': str(tmp_path / 'huey.db')}


def _sql(request, tmp_path, name):
    from huey.contrib.sql_huey import SqlStorage

    return SqlStorage, {'database': f'sqlite:///{tmp_path / "sql.db"}?timeout=30'}


def _valkey_glide(request, tmp_path, name):
    from huey.contrib.valkey_glide import ValkeyGlideStorage

    server = request.getfixturevalue('redis_db')
    return ValkeyGlideStorage, {'host': server.host, 'port': server.port}


# kind -> spec(request, tmp_path, name) -> (storage class, keyword arguments)
BACKENDS = {
    'sqlite': _sqlite,
    'sqlite-before-3.35': _sqlite_before_335,
    'postgres': _postgres(),
    'postgres-nonblocking': _postgres(blocking=False),
    'redis': _redis(RedisStorage),
    'redis-nonblocking': _redis(RedisStorage, blocking=False),
    'redis-expire': _redis(RedisExpireStorage),
    'priority-redis': _redis(PriorityRedisStorage),
    'priority-redis-expire': _redis(PriorityRedisExpireStorage, blocking=False),
    'memory': _memory,
    'file': _file,
    'cysqlite': _cysqlite,
    'sql-peewee': _sql,
    'valkey-glide': _valkey_glide,
    # Redis past one plain server: a caller's pool, TLS, an ACL user, Sentinel, Cluster.
    'redis-pool': _redis_pool,
    'redis-tls': _redis_tls,
    'redis-acl': _redis_acl,
    'redis-sentinel-pool': _redis_sentinel_pool,
    'redis-sentinel': _redis_sentinel,
    'redis-cluster': _redis_cluster(RedisStorage),
    'priority-redis-expire-cluster': _redis_cluster(PriorityRedisExpireStorage, blocking=False),
}

# Backends another process can open too, and those huey 3.5.4 can share (its own layout;
# the optional-driver backends are shared with huey 3.5.4 in test_contrib_interop.py).
# (A connection pool does not cross to another process; the other Redis deployments are
# huey-rs's own settings, which huey 3.5.4 does not take.)
# SqlHuey here runs on a Sqlite file through peewee, which eight processes at once lock out
# ("database is locked" after peewee's timeout, consumers stalled): a known limitation, open;
# SqlHuey's many-process use is on a database server.
PROCESSES = sorted(
    set(BACKENDS)
    - {'memory', 'redis-pool', 'redis-sentinel-pool', 'sql-peewee', 'sqlite-before-3.35'}
)
HUEY_354 = sorted(
    set(PROCESSES)
    - {'file', 'cysqlite', 'sql-peewee', 'valkey-glide'}
    - {'redis-tls', 'redis-acl', 'redis-sentinel', 'redis-cluster'}
    - {'priority-redis-expire-cluster'}
)


def _maker(request, tmp_path):
    made = []

    def make(name='contract'):
        cls, kwargs = BACKENDS[request.param](request, tmp_path, name)
        storage = cls(name, **kwargs)
        made.append(storage)
        return storage

    make.spec = lambda name='contract': BACKENDS[request.param](request, tmp_path, name)
    make.kind = request.param
    return make, made


@pytest.fixture(params=sorted(BACKENDS))
def make_storage(request, tmp_path):
    make, made = _maker(request, tmp_path)
    yield make
    for storage in made:
        storage.close()


@pytest.fixture(params=PROCESSES)
def make_shared(request, tmp_path):
    """Like ``make_storage``, for backends that two processes (or handles) can share."""
    make, made = _maker(request, tmp_path)
    yield make
    for storage in made:
        storage.close()


@pytest.fixture
def storage(make_storage):
    return make_storage()


def destructive_reads(storage):
    # RedisExpireStorage keeps results until they expire; pop_data only reads them.
    return not isinstance(storage, RedisExpireStorage)


def test_queue_is_fifo(storage):
    assert storage.dequeue() is None
    for i in range(5):
        storage.enqueue(b'item-%d' % i)
    assert storage.queue_size() == 5
    assert storage.enqueued_items() == [b'item-%d' % i for i in range(5)]
    assert storage.enqueued_items(2) == [b'item-0', b'item-1']
    assert [storage.dequeue() for _ in range(3)] == [b'item-0', b'item-1', b'item-2']
    assert storage.queue_size() == 2
    storage.flush_queue()
    assert storage.queue_size() == 0
    assert storage.enqueued_items() == []
    assert storage.dequeue() is None


def test_priorities(storage):
    if not storage.priority:
        with pytest.raises(NotImplementedError):
            storage.enqueue(b'x', priority=1)
        return
    priorities = [1, None, 5, None, 3, 0, 9, None, 7, 5]
    for i, priority in enumerate(priorities):
        storage.enqueue(b'%d' % i, priority)
    # Highest priority first; equal priorities (None counts as 0) in enqueue order.
    expected = [b'6', b'8', b'2', b'9', b'4', b'0', b'1', b'3', b'5', b'7']
    assert storage.enqueued_items() == expected
    assert storage.enqueued_items(3) == expected[:3]
    assert [storage.dequeue() for _ in priorities] == expected
    assert storage.dequeue() is None


def test_identical_payloads_are_distinct_messages(storage):
    for _ in range(50):
        storage.enqueue(b'same')
    assert storage.queue_size() == 50
    assert [storage.dequeue() for _ in range(50)] == [b'same'] * 50


def test_dequeue_wait_returns_queued_message_and_times_out_when_empty(storage):
    assert storage.dequeue_wait(0.05) is None
    storage.enqueue(b'ready')
    assert storage.dequeue_wait(1) == b'ready'
    assert storage.dequeue_wait(0) is None


def test_dequeue_many_takes_up_to_n_in_dequeue_order(storage):
    assert storage.dequeue_many(3) == []
    assert storage.dequeue_many(3, 0.01) == []
    priorities = [2, None, 2, 7, None, 1, 7] if storage.priority else [None] * 7
    for i, priority in enumerate(priorities):
        storage.enqueue(b'%d' % i, priority)
    expected = storage.enqueued_items()
    taken = []
    while batch := storage.dequeue_many(3, 0.01):
        assert 1 <= len(batch) <= 3
        taken.extend(batch)
    assert taken == expected
    assert storage.queue_size() == 0


def test_schedule(storage):
    base = datetime.datetime(2000, 1, 2, 3, 4, 5, 250000)
    second = datetime.timedelta(seconds=1)
    for data, ts in (
        (b'p1', base + second),
        (b'p0', base),
        (b'n1', base - second),
        (b'p2', base + 2 * second),
        (b'p0b', base),
    ):
        storage.add_to_schedule(data, ts)
    assert storage.schedule_size() == 5
    assert storage.scheduled_items(1) == [b'n1']
    assert storage.scheduled_items()[0] == b'n1'
    assert storage.scheduled_items()[-1] == b'p2'
    assert storage.read_schedule(base - 2 * second) == []
    due = storage.read_schedule(base)
    assert due[0] == b'n1' and sorted(due[1:]) == [b'p0', b'p0b']
    assert storage.schedule_size() == 2
    assert storage.read_schedule(base) == []
    assert storage.read_schedule(datetime.datetime.now()) == [b'p1', b'p2']
    assert storage.schedule_size() == 0
    storage.add_to_schedule(b'later', base)
    storage.flush_schedule()
    assert storage.scheduled_items() == []


def test_read_schedule_returns_many_in_time_order(storage):
    base = datetime.datetime(2001, 1, 1)
    order = list(range(600))
    random.Random(7).shuffle(order)
    for i in order:
        storage.add_to_schedule(b'%d' % i, base + datetime.timedelta(seconds=i))
    due = storage.read_schedule(base + datetime.timedelta(seconds=599))
    assert due == [b'%d' % i for i in range(600)]


def test_results(storage):
    storage.put_data('k1', b'v1')
    storage.put_data('k2', b'v2')
    assert storage.peek_data('k1') == b'v1'
    assert storage.peek_data('missing') is EmptyData
    assert storage.has_data_for_key('k2')
    assert not storage.has_data_for_key('missing')
    assert storage.peek_many(['k1', 'missing', 'k2']) == {'k1': b'v1', 'k2': b'v2'}
    assert storage.result_store_size() == 2
    storage.put_data('k1', b'v1-new')
    assert storage.pop_data('k1') == b'v1-new'
    if destructive_reads(storage):
        assert storage.pop_data('k1') is EmptyData
        assert not storage.has_data_for_key('k1')
    else:
        assert storage.pop_data('k1') == b'v1-new'
        assert storage.delete_data('k1')
    assert storage.pop_data('missing') is EmptyData
    assert storage.delete_data('k2')
    assert not storage.delete_data('k2')
    assert storage.result_store_size() == 0
    storage.put_data('k3', b'')
    assert storage.peek_data('k3') == b''
    assert storage.result_items() == {'k3': b''}
    storage.flush_results()
    assert storage.result_items() == {}


def test_enqueue_many_keeps_order(storage):
    items = [(b'm%d' % i, None) for i in range(700)]
    storage.enqueue_many(items)
    assert storage.queue_size() == 700
    assert [storage.dequeue() for _ in range(700)] == [data for data, _ in items]


def test_delete_and_put(storage):
    storage.put_data('r:task', b'revoked')
    storage.delete_and_put('r:task', 'task', b'result', is_result=True)
    assert not storage.has_data_for_key('r:task')
    assert storage.peek_data('task') == b'result'
    storage.delete_and_put('never-set', 'task', b'again', is_result=True)
    assert storage.peek_data('task') == b'again'


def test_delete_put_and_peek_stores_a_result_then_reads_other_keys(storage):
    storage.put_data('r:task', b'revoked')
    storage.put_data('r:next', b'flag')
    found = storage.delete_put_and_peek('r:task', 'task', b'result', ['r:next', 'rt:none'])
    assert found == {'r:next': b'flag'}
    assert not storage.has_data_for_key('r:task')
    assert storage.peek_data('task') == b'result'
    # Without a key only the delete happens; the read sees the state after it.
    assert storage.delete_put_and_peek('r:next', None, None, ['r:next', 'task']) == {
        'task': b'result'
    }
    assert storage.delete_put_and_peek('r:gone', None, None, []) == {}


def test_put_if_empty(storage):
    assert storage.put_if_empty('lock', b'first')
    assert not storage.put_if_empty('lock', b'second')
    assert storage.peek_data('lock') == b'first'
    assert storage.delete_data('lock')
    assert storage.put_if_empty('lock', b'third')
    assert storage.peek_data('lock') == b'third'


def test_wait_result(storage):
    assert not storage.wait_result('r1', timeout=0.05)
    storage.put_data('r1', b'done', is_result=True)
    assert storage.wait_result('r1', timeout=1)


def test_counters(storage):
    assert storage.incr('c1') == 1
    assert storage.incr('c1') == 2
    assert storage.incr('c2', 10) == 10
    assert storage.incr('c2', -4) == 6
    assert storage.incr('c3', 0) == 0
    storage.delete_counter('c1')
    storage.delete_counter('never-set')
    assert storage.incr('c1') == 1
    # Counters and results live apart.
    assert not storage.has_data_for_key('c1')
    storage.put_data('c1', b'result')
    assert storage.incr('c1') == 2
    storage.flush_counters()
    assert storage.incr('c2') == 1
    assert storage.peek_data('c1') == b'result'


def test_flush_all_and_names_are_isolated(make_storage):
    first, second = make_storage('first'), make_storage('second')
    for storage in (first, second):
        storage.enqueue(b'q')
        storage.add_to_schedule(b's', datetime.datetime(2000, 1, 1))
        storage.put_data('k', b'v')
        storage.incr('c')
    first.flush_all()
    assert (first.queue_size(), first.schedule_size(), first.result_store_size()) == (0, 0, 0)
    assert first.incr('c') == 1
    assert (second.queue_size(), second.schedule_size(), second.result_store_size()) == (1, 1, 1)
    assert second.incr('c') == 2


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_arbitrary_bytes_round_trip(storage, payloads):
    storage.flush_all()
    for payload in payloads:
        storage.enqueue(payload)
    assert [storage.dequeue() for _ in payloads] == payloads
    # The Redis schedule is a sorted set keyed by the message itself (huey's layout), so
    # identical messages in it would merge; real messages carry a unique task id.
    when = datetime.datetime(2000, 1, 1)
    unique = sorted(set(payloads))
    for payload in unique:
        storage.add_to_schedule(payload, when)
    assert sorted(storage.read_schedule(when)) == unique
    for i, payload in enumerate(payloads):
        storage.put_data(f'key-{i}', payload)
    assert storage.result_items() == {f'key-{i}': p for i, p in enumerate(payloads)}


def test_move_due_to_queue_announces_each_message_before_it_is_visible(storage):
    now = datetime.datetime(2030, 1, 1, 12)
    second = datetime.timedelta(seconds=1)
    for data, ts in ((b'b', now - second), (b'later', now + second), (b'a', now - 2 * second)):
        storage.add_to_schedule(data, ts)
    storage.add_to_schedule(b'c', now)
    announced = []

    def on_due(data):
        assert data not in storage.enqueued_items(), 'visible before its on_due returned'
        announced.append(data)
        return {b'a': 1, b'b': 3, b'c': None}[data] if storage.priority else None

    moved = storage.move_due_to_queue(now, on_due)
    assert moved == announced == [b'a', b'b', b'c']
    assert storage.scheduled_items() == [b'later']
    expected = [b'b', b'a', b'c'] if storage.priority else [b'a', b'b', b'c']
    assert [storage.dequeue() for _ in range(3)] == expected
    assert storage.move_due_to_queue(now, on_due) == [] and announced == [b'a', b'b', b'c']


# Two handles, processes or packages on one backend -------------------------------------------


def test_two_schedulers_never_announce_the_same_message(make_shared):
    first, second = make_shared(), make_shared()
    now = datetime.datetime(2030, 1, 1, 12)
    for i in range(5):
        first.add_to_schedule(b'due-%d' % i, now)
    announced = {'first': [], 'second': []}
    other = {}

    def second_scheduler():
        other['moved'] = second.move_due_to_queue(now, announced['second'].append)

    def on_due(data):
        announced['first'].append(data)
        if 'thread' not in other:
            # The second scheduler runs while the first is between its announcements and
            # its move: it must neither announce nor move these messages.
            other['thread'] = threading.Thread(target=second_scheduler)
            other['thread'].start()
            other['thread'].join(0.5)  # a chance to race; a storage may also make it wait

    moved = first.move_due_to_queue(now, on_due)
    other['thread'].join(30)
    assert sorted(moved) == sorted(announced['first']) == [b'due-%d' % i for i in range(5)]
    assert other['moved'] == [] and announced['second'] == []
    assert sorted(second.enqueued_items()) == sorted(moved)


TOTAL_TASKS = 8_000  # per backend: 4 producers x 2,000, 4 consumers
# The Redis deployments run the storage code 'redis' runs with 8,000: fewer, to keep the
# suite short.
FEWER_TASKS = {
    'redis-tls': 2_000,
    'redis-acl': 2_000,
    'redis-sentinel': 2_000,
    'redis-cluster': 2_000,
    'priority-redis-expire-cluster': 2_000,
}
PRODUCERS = CONSUMERS = 4


def _open(spec, name):
    cls, kwargs = spec
    return cls(name, **kwargs)


def _produce(spec, start, count, priorities):
    storage = _open(spec, 'mp')
    rng = random.Random(start)
    for i in range(start, start + count):
        storage.enqueue(b'%d' % i, rng.randint(0, 3) if priorities else None)
    storage.close()


def _consume(spec, out_path, delivered, total):
    storage = _open(spec, 'mp')
    got = []
    while delivered.value < total:
        # Up to three per call: one command each on the storages that take batches.
        batch = storage.dequeue_many(3, 0.05)
        if batch:
            got.extend(batch)
            with delivered.get_lock():
                delivered.value += len(batch)
    with open(out_path, 'wb') as fh:
        fh.write(b'\n'.join(got))
    storage.close()


@pytest.mark.timeout(300)
def test_many_processes_deliver_every_message_exactly_once(make_shared, tmp_path):
    """Four producer and four consumer processes (spawned: nothing inherited) on one
    backend: every message is delivered once, none lost, none twice."""
    spec = make_shared.spec('mp')
    priorities = spec[0].priority
    total = FEWER_TASKS.get(make_shared.kind, TOTAL_TASKS)
    ctx = multiprocessing.get_context('spawn')
    delivered = ctx.Value('q', 0)
    per_producer = total // PRODUCERS
    outs = [str(tmp_path / f'consumer-{i}.out') for i in range(CONSUMERS)]
    procs = [ctx.Process(target=_consume, args=(spec, out, delivered, total)) for out in outs]
    procs += [
        ctx.Process(target=_produce, args=(spec, i * per_producer, per_producer, priorities))
        for i in range(PRODUCERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(240)
    assert [proc.exitcode for proc in procs] == [0] * len(procs)
    seen = []
    for out in outs:
        with open(out, 'rb') as fh:
            data = fh.read()
        seen.extend(int(x) for x in data.split(b'\n') if x)
    assert len(seen) == total, 'duplicates or losses'
    assert sorted(seen) == list(range(total))
    assert make_shared('mp').queue_size() == 0


@pytest.fixture(params=HUEY_354)
def shared_with_huey_354(request, tmp_path, reference_peer):
    """(huey-rs storage, huey 3.5.4 storage of the same class in another process)."""
    cls, kwargs = BACKENDS[request.param](request, tmp_path, 'shared')
    ours = cls('shared', **kwargs)
    yield ours, reference_peer(cls.__name__, 'shared', **kwargs)
    ours.close()


def test_a_backend_is_shared_with_huey_354(shared_with_huey_354):
    ours, theirs = shared_with_huey_354
    # Queue, both directions, priorities interleaved where the storage has them.
    priority = ours.priority
    theirs.enqueue(b't1', 1 if priority else None)
    ours.enqueue(b'o1', 5 if priority else None)
    theirs.enqueue(b't2', None)
    ours.enqueue(b'o2', None)
    expected = [b'o1', b't1', b't2', b'o2'] if priority else [b't1', b'o1', b't2', b'o2']
    assert theirs.enqueued_items() == ours.enqueued_items() == expected
    assert theirs.queue_size() == ours.queue_size() == 4
    assert [ours.dequeue(), theirs.dequeue(), ours.dequeue_wait(0.1), theirs.dequeue()] == expected
    assert ours.dequeue_wait(0) is None and theirs.queue_size() == 0

    # Schedule, including huey-rs's scheduler move next to huey 3.5.4's read.
    base = datetime.datetime(2020, 5, 6, 7, 8, 9, 123456)
    second = datetime.timedelta(seconds=1)
    ours.add_to_schedule(b'o-1', base + second)
    theirs.add_to_schedule(b't-0', base)
    ours.add_to_schedule(b'o-2', base + 2 * second)
    theirs.add_to_schedule(b't-3', base + 3 * second)
    assert theirs.scheduled_items() == ours.scheduled_items() == [b't-0', b'o-1', b'o-2', b't-3']
    assert theirs.read_schedule(base) == [b't-0']
    assert ours.read_schedule(base + second) == [b'o-1']
    assert ours.move_due_to_queue(base + 2 * second, lambda data: None) == [b'o-2']
    assert theirs.dequeue() == b'o-2'
    assert theirs.read_schedule(base + 5 * second) == [b't-3']
    assert ours.schedule_size() == 0

    # Results, put_if_empty, counters.
    ours.put_data('r1', b'ours', True)
    theirs.put_data('r2', b'theirs', True)
    assert theirs.peek_data('r1') == b'ours'
    assert ours.peek_many(['r1', 'r2', 'rx']) == theirs.peek_many(['r1', 'r2', 'rx'])
    assert ours.pop_data('r2') == b'theirs'
    if destructive_reads(ours):
        assert theirs.pop_data('r2') is EmptyData
    else:
        assert theirs.pop_data('r2') == b'theirs'  # non-destructive reads in both
        assert theirs.delete_data('r2')
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


def test_huey_354_and_huey_rs_consumers_split_one_queue(shared_with_huey_354):
    ours, theirs = shared_with_huey_354
    ours.enqueue_many([(b'%d' % i, None) for i in range(200)])
    got_ours, got_theirs = [], []
    while True:
        mine = ours.dequeue_wait(0)
        other = theirs.dequeue() if theirs.queue_size() else None
        if mine is not None:
            got_ours.append(int(mine))
        if other is not None:
            got_theirs.append(int(other))
        if mine is None and other is None:
            break
    assert sorted(got_ours + got_theirs) == list(range(200))
    assert got_ours and got_theirs
