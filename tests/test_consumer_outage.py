"""Consumers and producers on Redis outlive a Redis outage: logged once, retried with
backoff, resumed, nothing acknowledged lost; a failover (READONLY) reconnects."""

import logging
import signal
import threading
import time

import pytest
import redis
from redis.exceptions import RedisError

from huey import RedisHuey


def wait_until(condition, timeout=10, what=None):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, (
            f'condition not reached in time{": " if what else ""}{what() if what else ""}'
        )
        time.sleep(0.01)


def test_worker_logs_an_outage_once_and_resumes(redis_db, caplog):
    huey = RedisHuey('outage', host=redis_db.host, port=redis_db.port, read_timeout=0.2)

    @huey.task()
    def double(x):
        return 2 * x

    assert double(1).get(blocking=False) is None  # enqueued while the server is up
    consumer = huey.create_consumer(
        workers=1, initial_delay=0.01, max_delay=0.05, periodic=False, check_worker_health=False
    )
    worker = consumer.worker_threads[0][0]
    caplog.set_level(logging.DEBUG, logger='huey.consumer')
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {signum: signal.getsignal(signum) for signum in handled}
    consumer.start()
    try:
        wait_until(lambda: huey.result_count() == 1)  # the first task ran
        redis_db.stop()
        wait_until(lambda: worker.read_failures >= 5)
        errors = [r for r in caplog.records if r.getMessage() == 'Error reading from queue']
        assert len(errors) == 1  # one outage, one error with its traceback
        redis_db.start()
        assert double(21).get(blocking=True, timeout=10) == 42
        assert worker.read_failures == 0
        assert any('reachable again' in r.getMessage() for r in caplog.records)
    finally:
        consumer.stop(graceful=True)
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize('reliable', [False, True], ids=['default', 'reliable'])
def test_restart_under_running_producers_and_consumers(redis_server_factory, reliable):
    # An append-only server (fsync always) keeps what it acknowledged across the restart;
    # every task whose enqueue returned must then run, in both modes.
    server = redis_server_factory('--appendonly', 'yes', '--appendfsync', 'always')
    huey = RedisHuey(
        'restart', host=server.host, port=server.port, read_timeout=0.2, reliable=reliable, lease=2
    )
    ran, ran_lock = set(), threading.Lock()

    @huey.task()
    def record(producer, i):
        with ran_lock:
            ran.add((producer, i))

    acked, failures = set(), [0]
    restarted = threading.Event()
    per_producer = 400

    def produce(producer):
        for i in range(per_producer):
            while True:
                try:
                    record(producer, i)
                    break
                except RedisError:  # the server is away: the call says so, try again
                    failures[0] += 1
                    restarted.wait(0.05)
            acked.add((producer, i))

    consumer = huey.create_consumer(
        workers=2, initial_delay=0.01, max_delay=0.05, check_worker_health=False
    )
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {signum: signal.getsignal(signum) for signum in handled}
    consumer.start()
    producers = [threading.Thread(target=produce, args=(p,)) for p in range(2)]
    try:
        for thread in producers:
            thread.start()
        wait_until(lambda: len(acked) >= per_producer // 2 and len(ran) > 0)
        server.stop()
        server.start()
        restarted.set()
        for thread in producers:
            thread.join(60)
        assert len(acked) == 2 * per_producer
        # Reliable mode loses nothing. By default a message the server popped for a
        # worker whose connection the shutdown cut is gone (huey's at-most-once window):
        # at most what the workers' fetches can take at once, one per worker plus the
        # rest of the prefetch buffer (huey.prefetch).
        allowed = 0 if reliable else consumer.workers + consumer.prefetch.per_fetch - 1
        wait_until(
            lambda: len(acked - ran) <= allowed and huey.pending_count() == 0,
            timeout=30,
            what=lambda: (sorted(acked - ran)[:10], huey.pending_count()),
        )
    finally:
        consumer.stop(graceful=True)  # waits for running tasks
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert len(acked - ran) <= allowed and huey.pending_count() == 0
    if reliable:
        # An ack the outage cut off leaves its entry in flight (to be run again once its
        # lease expires: at least once); it can only belong to a task that ran.
        for *_, data in huey.storage.inflight_items():
            assert tuple(huey.deserialize_task(data).args) in ran


def test_read_only_error_drops_the_connections(redis_server_factory):
    # A failover turns the server a consumer talks to into a replica: writes (BRPOP too)
    # fail with READONLY, and the client reconnects instead of reusing the old socket.
    primary = redis_server_factory()
    server = redis_server_factory()
    huey = RedisHuey('failover', host=server.host, port=server.port, blocking=False)
    before = huey.storage.conn.client_id()
    admin = redis.Redis(host=server.host, port=server.port)
    admin.replicaof(primary.host, primary.port)
    with pytest.raises(redis.exceptions.ReadOnlyError):
        huey.storage.dequeue()
    admin.replicaof('NO', 'ONE')
    assert huey.storage.dequeue() is None
    assert huey.storage.conn.client_id() != before
