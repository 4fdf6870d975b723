"""RedisHuey past one server: Sentinel (with a failover under load), Redis Cluster (hash-tagged
keys, a master failover under load), TLS and an ACL user with only the commands it needs.

Each deployment runs on free loopback ports (see ``redis_servers.py``); the contract suite
runs on each too (``test_storage_contract.py``). The failover tests print their lost and
duplicated counts (``pytest -s``)."""

import collections
import datetime
import re
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.exceptions import RedisError

from huey import RedisHuey
from huey.api import PriorityRedisExpireHuey
from huey.constants import EmptyData
from huey.exceptions import ConfigurationError
from huey.storage import PriorityRedisExpireStorage, RedisExpireStorage, RedisStorage
from huey.storage import redis_scripts

README = Path(__file__).resolve().parent.parent / 'README.md'


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f'{what()} after {timeout}s'
        time.sleep(0.02)


def consume(run_consumer, huey):
    return run_consumer(huey, initial_delay=0.01, max_delay=0.05, check_worker_health=False)


def run_failover(run_consumer, huey, fail_over, reliable, label, per_producer=250):
    """Two producer threads and a two-worker consumer on ``huey``; ``fail_over()`` runs once
    a quarter of the tasks are enqueued. Returns (acked, runs): the tasks whose enqueue
    returned, and a Counter of the tasks that ran."""
    runs, runs_lock = collections.Counter(), threading.Lock()

    @huey.task()
    def record(producer, i):
        with runs_lock:
            runs[(producer, i)] += 1

    acked, acked_lock = set(), threading.Lock()
    errors, stop = [0], threading.Event()

    def produce(producer):
        for i in range(per_producer):
            while not stop.is_set():
                try:
                    record(producer, i)
                except RedisError:  # the master is away: the call says so; try again
                    errors[0] += 1
                    stop.wait(0.05)
                    continue
                with acked_lock:
                    acked.add((producer, i))
                stop.wait(0.005)  # a steady stream, so the failover lands in the middle of it
                break

    producers = [threading.Thread(target=produce, args=(p,), daemon=True) for p in range(2)]
    consumer = consume(run_consumer, huey)
    try:
        for thread in producers:
            thread.start()
        wait_until(lambda: len(acked) >= per_producer // 2, 60, lambda: f'{len(acked)} acked')
        fail_over()
        for thread in producers:
            thread.join(120)
    finally:
        stop.set()
    assert len(acked) == 2 * per_producer, f'{errors[0]} enqueue errors'
    # By default a message popped for a worker whose connection the failover cut is
    # gone (huey's at-most-once window): at most what the workers' fetches take at once,
    # one per worker plus the rest of the prefetch buffer (huey.prefetch).
    allowed = 0 if reliable else consumer.workers + consumer.prefetch.per_fetch - 1
    wait_until(
        lambda: len(acked - set(runs)) <= allowed and huey.pending_count() == 0,
        90,
        lambda: f'missing {sorted(acked - set(runs))[:10]}, {huey.pending_count()} queued',
    )
    consumer.stop(graceful=True)  # tasks still running finish before the count
    lost = len(acked - set(runs))
    duplicated = sum(count - 1 for count in runs.values())
    print(
        f'\n{label}: {len(acked)} enqueued, {lost} lost, {duplicated} run twice, '
        f'{errors[0]} enqueue errors retried'
    )
    assert lost <= allowed
    return acked, runs


# Sentinel ------------------------------------------------------------------------------------


def test_sentinel_arguments_are_checked(redis_sentinel_db):
    with pytest.raises(ConfigurationError, match='service_name'):
        RedisStorage(sentinel=redis_sentinel_db.addresses)
    with pytest.raises(ConfigurationError, match='over-determined'):
        RedisStorage(
            sentinel=redis_sentinel_db.addresses, service_name='x', url='redis://localhost'
        )


def test_sentinel_storage_finds_the_master(redis_sentinel_db):
    storage = RedisStorage(
        'st', sentinel=redis_sentinel_db.addresses, service_name=redis_sentinel_db.service
    )
    storage.enqueue(b'm')
    with redis_sentinel_db.current_master().client() as master:
        assert master.lrange('huey.redis.st', 0, -1) == [b'm']
    assert redis_sentinel_db.service in storage.server_address


# Cluster -------------------------------------------------------------------------------------


def cluster_storage(cls, deployment, name='app', **kwargs):
    return cls(name, cluster=True, startup_nodes=deployment.startup_nodes, **kwargs)


@pytest.mark.parametrize('cls', [RedisStorage, RedisExpireStorage, PriorityRedisExpireStorage])
def test_cluster_keys_share_one_slot(cls, redis_cluster_db):
    storage = cluster_storage(cls, redis_cluster_db, 'my-app', notify_result=True)
    assert storage.queue_key == 'huey.redis.{myapp}'
    storage.enqueue(b'm')
    storage.add_to_schedule(b's', datetime.datetime(2000, 1, 1))
    storage.put_data('k', b'v', is_result=True)
    storage.incr('c')
    storage.put_dead_letter(b'bad', 'reason')
    assert storage.dequeue_reliable('c', 'tok', 30) == (b'm', 1)
    client = redis_cluster_db.client()
    keys = [k for node in redis_cluster_db.running() for k in node.client().keys('huey.*')]
    assert len(keys) >= 8
    assert all(b'{myapp}' in key for key in keys)
    assert {client.keyslot(key) for key in keys} == {client.keyslot('myapp')}


def test_cluster_names_must_make_a_hash_tag(redis_cluster_db):
    for name in ('a{b', 'a}b', ''):
        with pytest.raises(ConfigurationError, match='hash tag'):
            cluster_storage(RedisStorage, redis_cluster_db, name, clean_name=False)


def test_cluster_huey_runs_tasks_of_every_kind(redis_cluster_db, run_consumer):
    huey = RedisHuey(
        'app', cluster=True, startup_nodes=redis_cluster_db.startup_nodes, read_timeout=0.2
    )
    add = huey.task()(lambda a, b: a + b)
    later = add.schedule((1, 2), delay=0.2)
    now = add(2, 3)
    revoked = add(5, 5)
    revoked.revoke()
    consume(run_consumer, huey)
    assert now.get(blocking=True, timeout=10) == 5
    assert later.get(blocking=True, timeout=10) == 3
    assert huey.get(revoked.id) is None


# Failover ------------------------------------------------------------------------------------


def sentinel_failover(deployment):
    """(connection arguments, fail_over()) for a Sentinel set: the master is killed and a
    replica promoted."""
    old = deployment.current_master()

    def fail_over():
        new = deployment.kill_master()
        assert new is not old and deployment.current_master() is new

    return {'sentinel': deployment.addresses, 'service_name': deployment.service}, fail_over


def cluster_failover(deployment):
    """(connection arguments, fail_over()) for a cluster: the master of the queue's slot is
    killed and its replica takes the slot over."""
    queue_key = 'huey.redis.{failover}'

    def fail_over():
        old = deployment.master_of(queue_key)
        assert deployment.kill_master_of(queue_key) is not old

    return {'cluster': True, 'startup_nodes': deployment.startup_nodes}, fail_over


@pytest.mark.timeout(300)
@pytest.mark.parametrize('reliable', [False, True], ids=['default', 'reliable'])
@pytest.mark.parametrize('kind', ['sentinel', 'cluster'])
def test_failover_under_running_producers_and_consumers(
    redis_deployment_factory, run_consumer, kind, reliable
):
    deployment = redis_deployment_factory(kind)
    failover = sentinel_failover if kind == 'sentinel' else cluster_failover
    connection, fail_over = failover(deployment)
    huey = RedisHuey('failover', read_timeout=0.2, reliable=reliable, lease=3, **connection)
    if kind == 'cluster':
        assert huey.storage.queue_key == 'huey.redis.{failover}'
    label = f'{kind} failover ({"reliable" if reliable else "default"})'
    run_failover(run_consumer, huey, fail_over, reliable, label)


# Scripts, TLS and ACL ------------------------------------------------------------------------


def test_every_script_names_its_keys_in_KEYS():
    # On Redis Cluster a script may only touch the keys it declares: no key names built from
    # ARGV. Every redis.call's key argument must be a KEYS[...] entry.
    calls = 0
    for name in dir(redis_scripts):
        source = getattr(redis_scripts, name)
        if not (name.isupper() and isinstance(source, str)):
            continue
        for command, key in re.findall(r"redis\.call\('(\w+)', ([^,)]+)", source):
            calls += 1
            assert key.startswith('KEYS['), f'{name}: {command} on {key}'
    assert calls > 20


def test_tls_huey_runs_a_task(redis_tls_db):
    huey = RedisHuey('tls', url=redis_tls_db.url, read_timeout=0.2)
    assert huey.storage.conn.connection_pool.connection_kwargs.get('ssl_ca_certs')
    task = huey.task()(lambda: 'over tls')
    result = task()
    huey.execute(huey.dequeue())
    assert result.get() == 'over tls'


def test_the_readme_documents_the_acl_rules_of_the_tests():
    from conftest import REDIS_ACL_RULES

    assert REDIS_ACL_RULES in ' '.join(README.read_text().split())


@pytest.mark.parametrize('cls', [RedisHuey, PriorityRedisExpireHuey])
def test_acl_user_can_run_every_feature_and_nothing_else(cls, redis_acl_db):
    huey = cls('acl', blocking=False, reliable=True, lease=30, **redis_acl_db.connection_params)
    storage = huey.storage
    add = huey.task(name='add')(lambda a, b: a + b)
    fail = huey.task(name='fail')(lambda: 1 / 0)
    done = add(1, 2)
    add.schedule((3, 4), eta=datetime.datetime(2000, 1, 1))
    fail()
    add(5, 6).revoke()
    assert huey.move_due_to_queue() is not None
    for _ in range(4):
        huey.execute(huey.dequeue())
    assert done.get() == 3
    with huey.lock_task('acl-lock'):
        pass
    storage.put_dead_letter(b'bad', 'reason')
    [letter] = storage.dead_letters()
    assert storage.pop_dead_letter(letter['id'])['data'] == b'bad'
    add(7, 8)
    assert storage.dequeue_reliable('c', 'token', 0) is not None
    assert storage.recover_expired(5, now=time.time() + 1)[0] == 1
    assert storage.inflight_items() == []
    huey.flush()
    assert storage.peek_data('nothing') is EmptyData
    with redis.Redis(**redis_acl_db.connection_params) as client:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set('not-huey', 1)
