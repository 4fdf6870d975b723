"""CySqliteHuey, SqlHuey (peewee) and ValkeyGlideHuey with real consumers, real sqlite files
and the test redis-server; then what each of them does differently."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import cysqlite
import peewee
import pytest
from glide_sync import GlideClient, GlideClientConfiguration, NodeAddress

from huey import CySqliteHuey
from huey.signals import SIGNAL_COMPLETE
from huey.contrib.sql_huey import SqlHuey, SqlStorage
from huey.contrib.valkey_glide import ValkeyGlideHuey, ValkeyGlideStorage
from huey.exceptions import ConfigurationError
from huey.storage import RedisStorage
from huey.storage.sql import CySqliteBusyError
from huey.storage.sqlite import SqliteBusyError

WAIT = 30


@pytest.fixture(params=['cysqlite', 'sql', 'valkey'])
def make_huey(request, tmp_path):
    made = []

    def make(name='contrib', **kwargs):
        if request.param == 'cysqlite':
            huey = CySqliteHuey(name, filename=str(tmp_path / 'queue.db'), **kwargs)
        elif request.param == 'sql':
            huey = SqlHuey(name, database=f'sqlite:///{tmp_path / "queue.db"}', **kwargs)
        else:
            server = request.getfixturevalue('redis_db')
            huey = ValkeyGlideHuey(name, port=server.port, **kwargs)
        made.append(huey)
        return huey

    yield make
    for huey in made:
        huey.storage.close()


@pytest.fixture
def start_consumer():
    consumers = []

    def start(huey, **options):
        consumer = huey.create_consumer(**options)
        consumer.start()
        consumers.append(consumer)
        return consumer

    yield start
    for consumer in consumers:
        consumer.stop(graceful=True)
        for _, worker in consumer.worker_threads:
            worker.join(WAIT)
        consumer.scheduler.join(WAIT)


def test_consumer_runs_tasks_retries_and_scheduled_tasks(make_huey, start_consumer):
    huey = make_huey()
    attempts = []

    @huey.task()
    def add(a, b):
        return a + b

    @huey.task(retries=1)
    def flaky(key):
        attempts.append(key)
        if len(attempts) == 1:
            raise RuntimeError('first attempt fails')
        return len(attempts)

    start_consumer(huey, workers=2, periodic=False, initial_delay=0.01, max_delay=0.05)
    results = [add(i, i) for i in range(10)]
    assert [r.get(blocking=True, timeout=WAIT) for r in results] == [2 * i for i in range(10)]
    scheduled = add.schedule((20, 1), delay=0.2)
    assert scheduled.get(blocking=True, timeout=WAIT) == 21
    # The first attempt's error is stored too (store_intermediate_errors): read the result
    # only once the retry has completed and overwritten it.
    completed = threading.Event()

    @huey.signal(SIGNAL_COMPLETE)
    def on_complete(signal, task):
        if isinstance(task, flaky.task_class):
            completed.set()

    retried = flaky('k')
    assert completed.wait(WAIT)
    assert attempts == ['k', 'k']
    assert retried.get() == 2
    assert huey.pending_count() == 0


def test_process_workers_share_the_storage(make_huey, start_consumer):
    huey = make_huey()

    @huey.task()
    def whereabouts(n):
        return n, os.getpid()

    # The storage was used before the fork: each worker must open its own connections.
    assert huey.pending_count() == 0
    start_consumer(huey, workers=2, worker_type='process', initial_delay=0.01, max_delay=0.05)
    values = [whereabouts(n).get(blocking=True, timeout=WAIT) for n in range(6)]
    assert [n for n, _ in values] == list(range(6))
    assert os.getpid() not in {pid for _, pid in values}


def test_an_undecodable_message_is_set_aside_and_can_be_requeued(make_huey):
    huey = make_huey()
    huey.storage.enqueue(b'not a pickled task')
    assert huey.dequeue() is None
    [letter] = huey.dead_letters()
    assert letter['data'] == b'not a pickled task'
    assert 'Unpickling' in letter['reason'] or 'pickle' in letter['reason']
    assert huey.dead_letter_count() == 1
    assert huey.requeue_dead_letter(letter['id'])
    assert huey.dead_letter_count() == 0
    assert huey.storage.enqueued_items() == [b'not a pickled task']
    assert huey.dequeue() is None
    assert huey.dead_letters()[0]['deliveries'] == 2


# CySqlite ----------------------------------------------------------------------------------


def test_cysqlite_pragmas_and_the_sqlite_defaults(tmp_path):
    plain = CySqliteHuey('p', filename=str(tmp_path / 'a.db')).storage
    assert isinstance(plain.conn, cysqlite.Connection)
    assert plain.conn.pragma('journal_mode') == 'wal'
    assert plain.conn.pragma('synchronous') == 1  # SqliteStorage's fsync=False: NORMAL
    assert plain.conn.pragma('cache_size') == -8000
    tuned = CySqliteHuey(
        'p',
        filename=str(tmp_path / 'b.db'),
        pragmas={'synchronous': 0, 'cache_size': -2000, 'journal_mode': 'truncate'},
    ).storage
    assert (tuned.conn.pragma('synchronous'), tuned.conn.pragma('cache_size')) == (0, -2000)
    assert tuned.conn.pragma('journal_mode') == 'truncate'
    forced = CySqliteHuey(
        'p', filename=str(tmp_path / 'c.db'), pragmas={'synchronous': 0}, fsync=True, timeout=2
    ).storage
    assert forced.conn.pragma('synchronous') == 2  # An explicit keyword wins.
    assert forced.conn.pragma('busy_timeout') == 2000


def _sqlite3_process(path, code):
    """Run ``code`` with ``storage``, a SqliteStorage (the standard library's sqlite3) on
    ``path``, in another process: two copies of the SQLite library in one process do not
    see each other's file locks, so the drivers only ever meet across processes."""
    script = (
        'import sys\nfrom huey.storage import SqliteStorage\n'
        f'storage = SqliteStorage("shared", filename={path!r})\n{textwrap.dedent(code)}'
    )
    return subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, timeout=WAIT
    )


def test_cysqlite_and_sqlite3_share_a_file_and_wake_each_other(tmp_path):
    path = str(tmp_path / 'shared.db')
    cy = CySqliteHuey('shared', filename=path).storage
    cy.enqueue(b'low', priority=1)
    cy.enqueue(b'high', priority=2)
    taken = _sqlite3_process(path, 'print(storage.dequeue().decode())')
    assert taken.returncode == 0, taken.stderr
    assert taken.stdout.strip() == 'high'
    assert cy.dequeue() == b'low'

    got = {}

    def wait():
        started = time.monotonic()
        got['data'] = cy.dequeue_wait(WAIT)
        got['waited'] = time.monotonic() - started

    waiter = threading.Thread(target=wait)
    waiter.start()
    enqueued = _sqlite3_process(path, 'storage.enqueue(b"from sqlite3", priority=5)')
    assert enqueued.returncode == 0, enqueued.stderr
    waiter.join(WAIT)
    assert got['data'] == b'from sqlite3'  # Woken by the other driver's commit ...
    assert got['waited'] < WAIT / 2  # ... not by the end of the wait.


def test_cysqlite_busy_database_raises_an_error_of_both_drivers(tmp_path):
    path = str(tmp_path / 'busy.db')
    storage = CySqliteHuey('busy', filename=path, timeout=0.1).storage
    blocker = cysqlite.connect(path)
    blocker.execute('begin immediate')
    try:
        with pytest.raises(CySqliteBusyError, match=r'busy.db.*timeout=0.1s.*enqueueing') as info:
            storage.enqueue(b'x')
        assert isinstance(info.value, cysqlite.OperationalError)
        assert isinstance(info.value, SqliteBusyError)
    finally:
        blocker.execute('rollback')
        blocker.close()
    storage.enqueue(b'x')
    assert storage.queue_size() == 1


def test_cysqlite_reliable_mode_redelivers_what_a_dead_consumer_held(tmp_path):
    huey = CySqliteHuey('rel', filename=str(tmp_path / 'rel.db'), reliable=True, lease=5)
    assert huey.reliable

    @huey.task()
    def add(a, b):
        return a + b

    add(1, 2)
    taken = huey.dequeue()  # ... and the consumer holding it dies.
    assert taken is not None and huey.pending_count() == 0
    assert huey.recover_expired(now=time.time() + 60) == (1, 0)
    again = huey.dequeue()
    assert again.id == taken.id
    huey.execute(again)
    assert huey.result(taken.id) == 3


# SqlHuey (peewee) --------------------------------------------------------------------------


def test_sql_storage_takes_a_database_or_url_and_says_what_is_wrong(tmp_path):
    database = peewee.SqliteDatabase(str(tmp_path / 'given.db'))
    storage = SqlStorage('given', database=database)
    assert storage.database is database
    storage.enqueue(b'x')
    assert SqlStorage('given', database=database).dequeue() == b'x'

    with pytest.raises(ConfigurationError, match='needs a database= argument'):
        SqlHuey('none')
    with pytest.raises(ConfigurationError, match='must be a peewee Database or a URL'):
        SqlHuey('wrong', database=42)
    with pytest.raises(ConfigurationError, match='nosuchdb://x'):
        SqlHuey('bad', database='nosuchdb://x')


def test_sql_storage_without_tables_fails_until_they_are_created(tmp_path):
    storage = SqlHuey(
        'ct', database=f'sqlite:///{tmp_path / "ct.db"}', create_tables=False
    ).storage
    with pytest.raises(peewee.OperationalError, match='no such table'):
        storage.queue_size()
    storage.initialize_schema()
    assert storage.queue_size() == 0
    storage.drop_tables()
    with pytest.raises(peewee.OperationalError):
        storage.queue_size()


def test_sql_storage_hands_each_message_to_exactly_one_thread(tmp_path):
    # Six threads fighting for sqlite's write lock on a busy machine: allow long waits.
    database = peewee.SqliteDatabase(
        str(tmp_path / 'mt.db'), timeout=WAIT, pragmas={'journal_mode': 'wal'}
    )
    storage = SqlHuey('mt', database=database).storage
    storage.enqueue_many([(b'%d' % i, None) for i in range(400)])
    taken, lock = [], threading.Lock()

    def drain():
        while (data := storage.dequeue()) is not None:
            with lock:
                taken.append(int(data))

    threads = [threading.Thread(target=drain) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(taken) == list(range(400))
    assert storage.queue_size() == 0


# Valkey GLIDE ------------------------------------------------------------------------------


def test_valkey_glide_and_redis_storage_use_the_same_keys(redis_db):
    glide = ValkeyGlideStorage('same-keys', port=redis_db.port)
    redis = RedisStorage('same-keys', port=redis_db.port, blocking=False)
    glide.enqueue(b'one')
    redis.enqueue(b'two')
    assert glide.dequeue() == b'one' and glide.dequeue() == b'two'
    glide.put_data('k', b'v')
    assert redis.peek_data('k') == b'v'
    assert redis.incr('c', 5) == 5 and glide.incr('c') == 6
    letter = redis.put_dead_letter(b'bad', 'broken', 2)
    assert glide.pop_dead_letter(letter)['reason'] == 'broken'
    assert glide.name == 'samekeys'  # Cleaned as RedisStorage cleans it.


def test_valkey_glide_refuses_what_it_cannot_do(redis_db):
    with pytest.raises(ConfigurationError, match='cannot block'):
        ValkeyGlideHuey('v', port=redis_db.port, blocking=True)
    config = GlideClientConfiguration([NodeAddress('127.0.0.1', redis_db.port)])
    with pytest.raises(ConfigurationError, match='got client_config, host'):
        ValkeyGlideHuey('v', client_config=config, host='127.0.0.1')
    with pytest.raises(ConfigurationError, match='database_id'):
        ValkeyGlideHuey('v', client_config=config, database_id=1)
    huey = ValkeyGlideHuey('v', client_config=config)
    with pytest.raises(NotImplementedError):
        huey.storage.enqueue(b'x', priority=3)
    with pytest.raises(NotImplementedError):
        huey.storage.put_if_empty('k', b'v', ttl=5)
    huey.storage.close()


def test_valkey_glide_closes_only_the_client_it_made(redis_db):
    config = GlideClientConfiguration([NodeAddress('127.0.0.1', redis_db.port)])
    client = GlideClient.create(config)
    given = ValkeyGlideStorage('given', client=client)
    given.enqueue(b'x')
    assert given.close() is False
    assert client.llen('huey.redis.given') == 1  # Still open: the caller's to close.
    client.close()

    own = ValkeyGlideStorage('own', port=redis_db.port, database_id=2, client_name='huey-own')
    own.enqueue(b'y')
    assert own.conn.custom_command(['CLIENT', 'GETNAME']) == b'huey-own'
    assert own.close() is True
    assert own.dequeue() == b'y'  # Reopened, with the same configuration.
    assert RedisStorage('own', port=redis_db.port, db=2).queue_size() == 0
    own.close()
