"""huey.contrib.helpers: RedisSemaphore and lock_task_semaphore on a real redis-server."""

import subprocess
import threading
import time

import pytest

from huey import MemoryHuey, RedisHuey
from huey.contrib.helpers import RedisSemaphore, lock_task_semaphore
from huey.exceptions import ConfigurationError, TaskLockedException

from conftest import reference_python


@pytest.fixture
def huey(redis_db):
    huey = RedisHuey('helpers', **redis_db.connection_params)
    yield huey
    huey.storage.close()


def server_time(conn):
    seconds, micros = conn.time()
    return seconds + micros / 1e6


def test_semaphore_counts_slots(huey):
    sem = RedisSemaphore(huey, 'slots', value=2)
    assert sem.key == 'helpers.lock.slots'
    first, second = sem.acquire(), sem.acquire()
    assert first and second and first != second
    assert sem.acquire() is None
    assert sem.acquire(first) == first  # A holder acquiring again keeps its one slot.
    assert huey.storage.conn.zcard(sem.key) == 2
    assert sem.release(second) == 1
    assert sem.release(second) == 0
    assert sem.acquire('mine') == 'mine'
    assert sem.acquire() is None


def test_semaphore_under_contention_grants_exactly_value_slots(huey):
    sem = RedisSemaphore(huey, 'contended', value=5)
    barrier = threading.Barrier(20)
    granted = []

    def contend():
        barrier.wait()
        holder = sem.acquire()
        if holder is not None:
            granted.append(holder)

    threads = [threading.Thread(target=contend) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 5
    assert set(huey.storage.conn.zrange(sem.key, 0, -1)) == {h.encode() for h in granted}


def test_expired_holder_loses_its_slot_and_cannot_renew(huey):
    sem = RedisSemaphore(huey, 'expiring', value=1, timeout=30)
    old = sem.acquire()
    assert sem.acquire() is None
    # Age the holder past the timeout (as if its worker died 31s ago).
    conn = huey.storage.conn
    conn.zadd(sem.key, {old: server_time(conn) - 31})
    new = sem.acquire()
    assert new is not None and new != old
    assert sem.renew(old) is False
    assert conn.zscore(sem.key, old) is None  # Renewing never re-adds a lost holder.
    assert sem.renew(new) is True
    assert conn.zcard(sem.key) == 1


def test_renew_moves_the_holder_forward(huey):
    sem = RedisSemaphore(huey, 'renewed', value=1, timeout=30)
    holder = sem.acquire()
    conn = huey.storage.conn
    conn.zadd(sem.key, {holder: server_time(conn) - 29})
    assert sem.renew(holder)
    conn_time = server_time(conn)
    assert conn_time - conn.zscore(sem.key, holder) < 5
    assert sem.acquire() is None  # Still held: the renewal saved it from expiring.


def test_default_timeout_and_lock_registration(huey):
    sem = RedisSemaphore(huey, 'registered')
    assert sem.timeout == 300 and sem.value == 1
    holder = sem.acquire()
    assert holder is not None
    # Registered like huey's own locks; flush_locks() deletes result-store keys only, so the
    # semaphore's sorted set survives it (as in huey 3.5.4).
    assert sem.key in huey._locks
    huey.flush_locks()
    assert huey.storage.conn.zcard(sem.key) == 1


def test_non_redis_storage_fails_on_first_use():
    sem = RedisSemaphore(MemoryHuey('helpers-memory'), 'nope')  # Construction is fine.
    with pytest.raises(ConfigurationError, match='Redis'):
        sem.acquire()


def test_lock_task_semaphore_limits_concurrent_calls(huey):
    release = threading.Event()
    running = threading.Semaphore(0)

    @lock_task_semaphore(huey, 'two-at-a-time', value=2)
    def work(n):
        running.release()
        assert release.wait(10)
        return n * 10

    results = {}
    threads = [threading.Thread(target=lambda n=n: results.update({n: work(n)})) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert running.acquire(timeout=10)
    with pytest.raises(TaskLockedException, match='two-at-a-time'):
        work(3)
    release.set()
    for thread in threads:
        thread.join()
    assert results == {1: 10, 2: 20}
    assert huey.storage.conn.zcard('helpers.lock.two-at-a-time') == 0  # Slots released.
    assert work(4) == 40
    assert work.__name__ == 'work'


def test_lock_task_semaphore_releases_on_error(huey):
    @lock_task_semaphore(huey, 'erroring')
    def explode():
        raise ValueError('boom')

    for _ in range(3):  # Each call gets the single slot again.
        with pytest.raises(ValueError):
            explode()
    assert huey.storage.conn.zcard('helpers.lock.erroring') == 0


def test_lock_task_semaphore_renews_while_running(huey):
    timeout = 0.3
    release = threading.Event()
    entered = threading.Event()

    @lock_task_semaphore(huey, 'long', value=1, timeout=timeout)
    def long_task():
        entered.set()
        assert release.wait(10)
        return 'done'

    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(long_task()))
    thread.start()
    assert entered.wait(10)
    other = RedisSemaphore(huey, 'long', value=1, timeout=timeout)
    # Waiting is the point here: the slot must survive several timeouts while running.
    deadline = time.monotonic() + 3 * timeout
    while time.monotonic() < deadline:
        assert other.acquire() is None
        time.sleep(timeout / 4)
    release.set()
    thread.join()
    assert outcome == ['done']
    assert other.acquire() is not None


def test_lock_task_semaphore_as_a_task_retries_when_locked(huey):
    """Through the task API: a locked call fails with TaskLockedException (retried by huey)."""
    huey.immediate = False
    sem = RedisSemaphore(huey, 'task-lock')
    blocker = sem.acquire()

    @huey.task(retries=1)
    @lock_task_semaphore(huey, 'task-lock')
    def guarded():
        return 'ran'

    result = guarded()
    task = huey.dequeue()
    huey.execute(task)
    assert result.get() is None  # Locked: not run, one retry enqueued.
    assert huey.pending_count() == 1
    sem.release(blocker)
    huey.execute(huey.dequeue())
    assert result.get() == 'ran'


def test_shares_slots_with_huey_354(huey, redis_db):
    """A huey 3.5.4 process holding the only slot blocks us, and sees our holder too."""
    script = (
        'import sys; from huey import RedisHuey; from huey.contrib.helpers import '
        'RedisSemaphore as S; h = RedisHuey("helpers", host=sys.argv[1], port=int(sys.argv[2]));'
        ' s = S(h, "shared", 1); print(s.acquire(sys.argv[3]) or "None")'
    )

    def reference_acquire(name):
        out = subprocess.run(
            [reference_python(), '-I', '-c', script, redis_db.host, str(redis_db.port), name],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return out.stdout.strip()

    sem = RedisSemaphore(huey, 'shared', value=1)
    assert reference_acquire('theirs') == 'theirs'
    assert sem.acquire() is None
    assert sem.release('theirs') == 1
    assert sem.acquire('ours') == 'ours'
    assert reference_acquire('theirs') == 'None'
