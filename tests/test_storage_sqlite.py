"""SqliteStorage specifics: schema, connections, locking and wake-up."""

import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time

import pytest

from huey.constants import EmptyData
from huey.storage.sqlite import SqliteBusyError, SqliteStorage


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / 'huey.db')


@pytest.fixture
def storage(db_path):
    storage = SqliteStorage('q', filename=db_path, timeout=2)
    yield storage
    storage.close()


def test_schema_matches_huey(storage, db_path):
    conn = sqlite3.connect(db_path)
    tables = dict(conn.execute("select name, sql from sqlite_master where type = 'table'"))
    assert {'kv', 'schedule', 'task', 'counter'} <= set(tables)
    columns = {
        name: [row[1] for row in conn.execute(f'pragma table_info({name})')]
        for name in ('kv', 'schedule', 'task', 'counter')
    }
    assert columns == {
        'kv': ['queue', 'key', 'value'],
        'schedule': ['id', 'queue', 'data', 'timestamp'],
        'task': ['id', 'queue', 'data', 'priority'],
        'counter': ['queue', 'key', 'value'],
    }
    indexes = [
        row[0]
        for row in conn.execute(
            "select name from sqlite_master where type = 'index' and sql is not null order by 1"
        )
    ]
    assert indexes == ['schedule_queue_timestamp', 'task_queue_priority_id']
    assert 'autoincrement' not in tables['task'].lower()
    assert conn.execute('pragma journal_mode').fetchone() == ('wal',)
    conn.close()


def test_strict_fifo_never_reuses_ids(tmp_path):
    storage = SqliteStorage('q', filename=str(tmp_path / 'fifo.db'), strict_fifo=True)
    storage.enqueue(b'a')
    storage.enqueue(b'b')
    assert storage.dequeue() == b'a'
    assert storage.dequeue() == b'b'
    storage.enqueue(b'c')
    ((task_id,),) = storage.conn.execute('select id from task').fetchall()
    assert task_id == 3
    storage.close()


def test_settings_reach_the_connection(tmp_path):
    storage = SqliteStorage(
        'q', filename=str(tmp_path / 's.db'), timeout=3, cache_mb=4, fsync=True
    )
    conn = storage.conn
    assert conn.execute('pragma busy_timeout').fetchone() == (3000,)
    assert conn.execute('pragma cache_size').fetchone() == (-4000,)
    assert conn.execute('pragma synchronous').fetchone() == (2,)
    assert storage._timeout == 3
    storage.close()


def test_create_tables_false_then_initialize(tmp_path):
    storage = SqliteStorage('q', filename=str(tmp_path / 'ct.db'), create_tables=False)
    with pytest.raises(sqlite3.OperationalError):
        storage.queue_size()
    storage.initialize_schema()
    assert storage.queue_size() == 0
    storage.close()


def test_one_connection_per_thread_and_close(storage):
    main = storage.conn
    assert storage._conn is main
    seen = []
    thread = threading.Thread(target=lambda: seen.append(storage.conn))
    thread.start()
    thread.join()
    assert seen[0] is not main
    assert storage.close() is True
    assert storage._conn is None  # What huey's consumer checks before forking.
    with pytest.raises(sqlite3.ProgrammingError):
        main.execute('select 1')
    storage.enqueue(b'after-close')  # Reopens on use.
    assert storage._conn is not None
    assert storage.dequeue() == b'after-close'


def test_forked_child_opens_its_own_connection(storage):
    storage.enqueue(b'x')
    parent_conn = storage.conn
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # Child: must not reuse the parent's connection.
        ok = storage._conn is None and storage.conn is not parent_conn
        ok = ok and storage.dequeue() == b'x'
        os.write(write, b'1' if ok else b'0')
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b'1'
    os.waitpid(pid, 0)
    os.close(read)
    assert storage.dequeue() is None
    assert storage._conn is parent_conn


def test_locked_database_raises_clear_error_and_keeps_task(storage, db_path):
    storage.enqueue(b'precious')
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute('begin immediate')
    quick = SqliteStorage('q', filename=db_path, timeout=0.1)
    try:
        with pytest.raises(SqliteBusyError, match=r'huey.db.*timeout=0.1s.*dequeueing'):
            quick.dequeue()
        with pytest.raises(sqlite3.OperationalError):  # Still catchable as huey's error.
            quick.enqueue(b'other')
    finally:
        blocker.execute('rollback')
        blocker.close()
    assert quick.dequeue() == b'precious'
    assert quick.dequeue() is None
    quick.close()


def test_first_open_waits_for_another_writer(tmp_path):
    path = str(tmp_path / 'first.db')
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute('begin immediate')
    released = threading.Timer(0.1, blocker.execute, ('commit',))
    released.start()
    try:
        storage = SqliteStorage('q', filename=path)
        assert storage.queue_size() == 0
        storage.close()
    finally:
        released.join()
        blocker.close()


def test_dequeue_sees_own_enqueue_after_empty_poll(storage):
    assert storage.dequeue() is None
    assert storage.dequeue() is None  # Cached "empty".
    storage.enqueue(b'mine')
    assert storage.dequeue() == b'mine'


_PRODUCER = """
import sys, time
from huey.storage.sqlite import SqliteStorage
storage = SqliteStorage('q', filename=sys.argv[1])
for line in sys.stdin:
    time.sleep(0.01)  # Let the consumer settle into its wait.
    storage.enqueue(line.strip().encode())
    print(time.monotonic(), flush=True)  # CLOCK_MONOTONIC is shared by all processes.
"""


def _scheduling_noise():
    """Median oversleep of a 1 ms sleep: how late this (possibly busy) machine wakes us."""
    late = []
    for _ in range(20):
        started = time.perf_counter()
        time.sleep(0.001)
        late.append(time.perf_counter() - started - 0.001)
    return statistics.median(late)


@pytest.mark.parametrize('inotify', [True, False], ids=['inotify', 'polling'])
def test_dequeue_wait_wakes_promptly_when_another_process_enqueues(inotify, db_path):
    storage = SqliteStorage('q', filename=db_path)
    storage.wake_on_wal_writes = inotify
    producer = subprocess.Popen(
        [sys.executable, '-c', _PRODUCER, db_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    delays = []
    try:
        for i in range(40):
            producer.stdin.write(f'{i}\n')
            data = storage.dequeue_wait(5)
            received = time.monotonic()
            committed = float(producer.stdout.readline())
            assert data == str(i).encode()
            delays.append(received - committed)
    finally:
        producer.stdin.close()
        producer.wait(10)
        storage.close()
    print(f'wake-up median {statistics.median(delays) * 1e3:.2f} ms')
    assert statistics.median(delays) < 0.005 + 2 * _scheduling_noise(), delays


def test_dequeue_wait_times_out_without_busy_looping(storage):
    storage.dequeue_wait(0.01)  # Opens the connection and the WAL watcher.
    assert storage._local.watcher is not None
    # Counted, not timed (this thread's CPU time swings tenfold on a busy host): every look
    # at the database reads data_version first. Sleeping on inotify, a 0.5 s wait looks a
    # handful of times (at the start, then every watch_recheck_interval); polling every
    # 0.5-2 ms, as without inotify, would look hundreds of times.
    looks = []
    data_version = storage._data_version
    storage._data_version = lambda conn: looks.append(1) or data_version(conn)
    wall_before = time.perf_counter()
    assert storage.dequeue_wait(0.5) is None
    wall = time.perf_counter() - wall_before
    assert 0.5 <= wall < 1.5
    assert 1 <= len(looks) <= 25, f'{len(looks)} looks at the database while idle for {wall:.3f}s'


def test_dequeue_wait_survives_close_from_another_thread(storage, db_path):
    results = []
    waiter = threading.Thread(target=lambda: results.append(storage.dequeue_wait(3)))
    waiter.start()
    deadline = time.monotonic() + 3
    while storage._open == [] and time.monotonic() < deadline:
        time.sleep(0.001)
    storage.close()
    other = SqliteStorage('q', filename=db_path)
    other.enqueue(b'after-close')
    waiter.join()
    other.close()
    assert results == [b'after-close']


def test_dequeue_multithreaded_exactly_once(storage):
    for i in range(800):
        storage.enqueue(b'%d' % i, priority=i % 3)
    seen, lock = [], threading.Lock()

    def drain():
        while (data := storage.dequeue()) is not None:
            with lock:
                seen.append(int(data))

    threads = [threading.Thread(target=drain) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == list(range(800))


def test_bytes_and_str_keys_are_kept_as_huey_does(storage):
    storage.put_data(b'k', b'bytes-key')
    storage.put_data('k', b'str-key')
    assert storage.peek_data(b'k') == b'bytes-key'
    assert storage.pop_data('k') == b'str-key'
    assert storage.peek_data('k') is EmptyData


# Sharing one file with huey 3.5.4, and the split of one queue between the two packages:
# tests/test_storage_contract.py.
