"""PostgresStorage specifics: huey 3.5.4's schema and channel, connections per thread and
process, LISTEN/NOTIFY wake-ups, clear errors for bad settings, sharing a database with
huey 3.5.4, and a server restarted under running producers and consumers."""

import datetime
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from huey import PostgresHuey
from huey.constants import EmptyData
from huey.exceptions import ConfigurationError
from huey.storage import PostgresStorage
from huey.storage.sql import BaseSqlStorage


@pytest.fixture
def storage(postgres_db):
    storage = PostgresStorage('q', dsn=postgres_db.dsn, read_timeout=0.2)
    yield storage
    storage.close()


@pytest.fixture
def admin(postgres_db):
    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
        yield conn


def _tables(admin, pattern='%'):
    rows = admin.execute(
        'select table_name from information_schema.tables where table_schema = '
        'current_schema() and table_name like %s order by 1',
        (pattern,),
    ).fetchall()
    return [name for (name,) in rows]


def wait_until(condition, timeout=10, what=''):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, (
            f'not reached in {timeout}s: {what() if callable(what) else what}'
        )
        time.sleep(0.01)


# Schema ----------------------------------------------------------------------------------


def test_schema_matches_huey(storage, admin):
    assert isinstance(storage, BaseSqlStorage)
    assert _tables(admin) == ['huey_counter', 'huey_kv', 'huey_schedule', 'huey_task']
    columns = {}
    for table in _tables(admin):
        columns[table] = admin.execute(
            'select column_name, data_type from information_schema.columns '
            'where table_name = %s and table_schema = current_schema() '
            'order by ordinal_position',
            (table,),
        ).fetchall()
    assert columns == {
        'huey_kv': [('queue', 'text'), ('key', 'text'), ('value', 'bytea')],
        'huey_schedule': [
            ('id', 'bigint'),
            ('queue', 'text'),
            ('data', 'bytea'),
            ('timestamp', 'double precision'),
        ],
        'huey_task': [
            ('id', 'bigint'),
            ('queue', 'text'),
            ('data', 'bytea'),
            ('priority', 'double precision'),
        ],
        'huey_counter': [('queue', 'text'), ('key', 'text'), ('value', 'bigint')],
    }
    indexes = admin.execute(
        'select indexname, indexdef from pg_indexes where schemaname = current_schema() '
        "and indexname not like '%pkey' order by 1"
    ).fetchall()
    assert [name for name, _ in indexes] == [
        'huey_schedule_queue_timestamp',
        'huey_task_queue_priority_id',
    ]
    assert 'priority DESC, id' in indexes[1][1]


def test_own_tables_appear_on_first_use_only(storage, admin):
    assert storage.dead_letter_count() == 0
    assert _tables(admin, 'huey\\_%') == [
        'huey_counter',
        'huey_kv',
        'huey_rs_dead_letter',
        'huey_rs_heartbeat',
        'huey_rs_inflight',
        'huey_rs_redelivery',
        'huey_schedule',
        'huey_task',
    ]


def test_create_tables_false_issues_no_ddl(postgres_db, admin):
    storage = PostgresStorage('q', dsn=postgres_db.dsn, table_prefix='later', create_tables=False)
    assert _tables(admin) == []
    storage.initialize_schema()
    assert _tables(admin) == ['later_counter', 'later_kv', 'later_schedule', 'later_task']
    storage.enqueue(b'x')
    assert storage.dequeue() == b'x'
    storage.close()


def test_table_prefix_is_cleaned_as_huey_does(postgres_db, admin):
    storage = PostgresStorage('q', dsn=postgres_db.dsn, table_prefix='my-app.v2')
    assert storage.table_task == 'myappv2_task' and storage.channel == 'myappv2.q.q'
    assert 'myappv2_task' in _tables(admin)
    storage.close()


def test_channel_names_fit_postgres(postgres_db):
    short = PostgresStorage('queue', dsn=postgres_db.dsn)
    assert short.channel == 'huey.q.queue'
    name = 'q' * 80
    long = PostgresStorage(name, dsn=postgres_db.dsn, read_timeout=0.1)
    assert long.channel == 'huey.q.' + hashlib.md5(f'huey.q.{name}'.encode()).hexdigest()
    long.enqueue(b'data')  # pg_notify accepts the channel
    assert long.dequeue() == b'data'
    assert long.dequeue() is None  # and so does LISTEN
    short.close()
    long.close()


# Connections -------------------------------------------------------------------------------


def test_one_connection_per_thread_and_close(storage):
    main = storage.conn
    seen = []
    thread = threading.Thread(target=lambda: seen.append(storage.conn))
    thread.start()
    thread.join()
    assert seen[0] is not main
    # The ended thread's connection is closed with its thread.
    assert seen[0].closed
    assert storage.close() is True
    assert main.closed and storage._conn is None
    storage.enqueue(b'after-close')  # Reopens on use.
    assert storage.dequeue() == b'after-close'
    assert storage.conn is not main


def test_close_leaves_a_live_thread_statement_alone(postgres_db):
    """close() from another thread does not pull the connection from under a waiting
    dequeue: that thread retires its connection itself, and its wait still works."""
    storage = CountingStorage(postgres_db.schema, dsn=postgres_db.dsn)
    got = []
    thread = threading.Thread(target=lambda: got.append(storage.dequeue_wait(60)))
    thread.start()
    wait_until(lambda: storage.pops == 2, what='waiter listening')
    [(_, _, ref)] = storage._open
    assert storage.close() is True
    assert not ref().closed  # still the waiter's
    storage.enqueue(b'wakes the waiter')  # on a new connection of this thread
    thread.join(60)
    assert got == [b'wakes the waiter']
    assert storage.dequeue_wait(0) is None
    storage.close()


def test_forked_child_opens_its_own_connection(storage):
    storage.enqueue(b'x')
    parent_conn = storage.conn
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # Child: must not reuse (nor close) the parent's connection.
        try:
            ok = storage._conn is None and storage.conn is not parent_conn
            ok = ok and storage.dequeue() == b'x'
            os.write(write, b'1' if ok else b'0')
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b'1'
    os.waitpid(pid, 0)
    os.close(read)
    assert storage._conn is parent_conn and not parent_conn.closed
    assert storage.dequeue() is None


def test_connection_callable_is_called_for_each_connection(postgres_db):
    made = []

    def connect():
        conn = psycopg.connect(postgres_db.dsn)
        made.append(conn)
        return conn

    storage = PostgresStorage('q', connection=connect)
    assert len(made) == 1 and made[0].closed  # initialize_schema's, closed after use
    storage.enqueue(b'x')
    assert made[-1].autocommit and storage.conn is made[-1]
    threading.Thread(target=storage.queue_size).start()
    wait_until(lambda: len(made) == 3)
    assert storage.dequeue() == b'x'
    storage.close()


# Wake-ups ----------------------------------------------------------------------------------


class CountingStorage(PostgresStorage):
    """Counts how often the queue table is looked at. Notification channels are per
    database, not per schema: tests that count give their queue a name of their own."""

    pops = 0
    _counting = threading.Lock()  # Waiters in several threads count at once.

    def _pop(self, n):
        with self._counting:
            self.pops += 1
        return super()._pop(n)


def test_an_idle_wait_sleeps_on_listen_without_polling(postgres_db):
    storage = CountingStorage(postgres_db.schema, dsn=postgres_db.dsn)
    started = time.monotonic()
    assert storage.dequeue_wait(1.0) is None
    assert time.monotonic() - started >= 1.0
    # One look before LISTEN, one after it is in place; none while waiting.
    assert storage.pops == 2
    storage.pops = 0
    assert storage.dequeue_wait(0.5) is None
    assert storage.pops == 1  # already listening: one look, then sleep
    storage.close()


def test_enqueue_from_another_process_wakes_a_waiting_dequeue(postgres_db):
    storage = CountingStorage(postgres_db.schema, dsn=postgres_db.dsn, read_timeout=120)
    got = []
    waiter = threading.Thread(target=lambda: got.append(storage.dequeue()))
    waiter.start()
    wait_until(lambda: storage.pops == 2, what='waiter listening')
    code = (
        'import sys; from huey.storage import PostgresStorage; '
        "PostgresStorage(sys.argv[2], dsn=sys.argv[1]).enqueue(b'wake up')"
    )
    subprocess.run([sys.executable, '-c', code, postgres_db.dsn, postgres_db.schema], check=True)
    enqueued = time.monotonic()  # committed, so notified, before that process ended
    waiter.join(120)
    assert got == [b'wake up']
    assert time.monotonic() - enqueued < 30  # woken by the notification, not read_timeout
    assert storage.pops == 3
    storage.close()


def test_many_waiters_take_each_message_once(postgres_db):
    storage = PostgresStorage('q', dsn=postgres_db.dsn)
    got, lock = [], threading.Lock()

    def work():
        while True:
            data = storage.dequeue_wait(2)
            if data is None or data == b'stop':
                return
            with lock:
                got.append(data)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for i in range(200):
        storage.enqueue(b'%d' % i)
    storage.enqueue_many([(b'stop', -1)] * 4)
    for thread in threads:
        thread.join(30)
    assert sorted(int(x) for x in got) == list(range(200))
    storage.close()


def test_a_notification_wakes_one_waiting_thread_and_a_burst_reaches_all(postgres_db):
    storage = CountingStorage(postgres_db.schema, dsn=postgres_db.dsn)
    got, lock = [], threading.Lock()

    def wait():
        data = storage.dequeue_wait(60)
        with lock:
            got.append(data)

    threads = [threading.Thread(target=wait) for _ in range(4)]
    for thread in threads:
        thread.start()
    # The first looks, LISTENs and looks again; the other three look once and queue behind.
    wait_until(lambda: storage.pops == 5, what='every waiter waiting')
    storage.enqueue(b'one')
    wait_until(lambda: got == [b'one'], what='one waiter woken')
    storage.enqueue_many([(b'two', None), (b'three', None), (b'four', None)])  # One notify.
    for thread in threads:
        thread.join(60)
    assert sorted(got) == sorted([b'one', b'two', b'three', b'four'])
    # Each waiter's first look, the LISTEN look, then per message at most its taker's pop
    # and one look by the next in line: no waiter polls, and no notification wakes them all.
    assert storage.pops <= 5 + 2 * 4
    storage.close()


class LateStorage(PostgresStorage):
    """Holds the thread named 'late' just after its first look, until ``go`` is set."""

    go = None

    def _pop(self, n):
        found = super()._pop(n)
        if threading.current_thread().name == 'late' and not self.go.is_set():
            self.looked.set()
            self.go.wait(30)
        return found


def test_a_waiter_that_looked_before_a_burst_others_were_woken_by_still_gets_its_share(
    postgres_db,
):
    storage = LateStorage(postgres_db.schema, dsn=postgres_db.dsn)
    storage.go, storage.looked = threading.Event(), threading.Event()
    got = {}

    def wait(name):
        got[name] = storage.dequeue_wait(10)

    first = threading.Thread(target=wait, args=('first',), name='first')
    first.start()
    wait_until(lambda: storage._listener is not None and storage._listener.turn.locked())
    late = threading.Thread(target=wait, args=('late',), name='late')
    late.start()
    assert storage.looked.wait(10)  # The late waiter found the queue empty...
    storage.enqueue_many([(b'a', None), (b'b', None)])  # ...then two messages, one notify,
    first.join(10)
    assert got['first'] == b'a'  # taken by the waiter that held the turn, which took one.
    storage.go.set()  # The late waiter now gets the turn without waiting for it.
    late.join(15)
    assert got['late'] == b'b'
    storage.close()


def test_schedule_move_and_recovery_wake_waiters(postgres_db):
    name = postgres_db.schema
    huey = PostgresHuey(name, dsn=postgres_db.dsn, reliable=True, lease=30)
    waiter = CountingStorage(name, dsn=postgres_db.dsn)
    fn = huey.task()(lambda: 1)
    got = []
    thread = threading.Thread(target=lambda: got.append(waiter.dequeue_wait(30)))
    thread.start()
    wait_until(lambda: waiter.pops == 2, what='waiter listening')
    task = fn.s()
    task.eta = huey._get_timestamp() - datetime.timedelta(seconds=1)
    huey.add_schedule(task)
    [moved] = huey.move_due_to_queue()
    thread.join(30)
    assert moved.id == task.id and huey.deserialize_task(got[0]).id == task.id

    fn()
    taken = huey.dequeue()
    got.clear()
    waiter.pops = 0
    thread = threading.Thread(target=lambda: got.append(waiter.dequeue_wait(30)))
    thread.start()
    wait_until(lambda: waiter.pops == 2, what='waiter (a new thread) listening')
    assert huey.storage.recover_expired(3, now=time.time() + 60) == (1, [])
    thread.join(30)
    assert huey.deserialize_task(got[0]).id == taken.id
    waiter.close()
    huey.storage.close()


GREENLET_APP = """\
import os

from huey import PostgresHuey

huey = PostgresHuey(os.environ['APP_NAME'], dsn=os.environ['APP_DSN'])


@huey.task()
def add(a, b):
    return a + b
"""

# What the consumer loads: gevent's patches first, as gevent asks (huey_consumer has
# imported huey by then), then the app.
GREENLET_ENTRY = """\
from gevent import monkey

monkey.patch_all()

from glapp import huey  # noqa: E402
"""


def test_greenlet_workers_each_have_a_connection(postgres_db, tmp_path, monkeypatch):
    """A ``-k greenlet`` consumer: greenlets wait on LISTEN cooperatively, each on a
    connection of its own (sharing one would interleave their statements)."""
    (tmp_path / 'glapp.py').write_text(GREENLET_APP)
    (tmp_path / 'glentry.py').write_text(GREENLET_ENTRY)
    monkeypatch.setenv('APP_NAME', postgres_db.schema)
    monkeypatch.setenv('APP_DSN', postgres_db.dsn)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, 'glapp', raising=False)
    log_path = tmp_path / 'consumer.log'
    with open(log_path, 'w') as log:
        consumer = subprocess.Popen(
            [sys.executable, '-m', 'huey.bin.huey_consumer', 'glentry.huey', '-w', '4',
             '-k', 'greenlet', '-d', '0.01', '-m', '0.1'],
            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)), stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        import glapp  # here without gevent: a plain producer

        results = [glapp.add(i, i) for i in range(60)]
        assert [r.get(blocking=True, timeout=60) for r in results] == [2 * i for i in range(60)]
        assert glapp.add(1, 2).get(blocking=True, timeout=60) == 3
        glapp.huey.storage.close()
    finally:
        consumer.send_signal(signal.SIGINT)
        consumer.wait(60)
    output = log_path.read_text()
    assert consumer.returncode == 0, output
    assert 'Traceback' not in output and 'ERROR' not in output, output
    assert 'with 4 greenlet' in output and output.count('executed in') == 61, output


# Bad settings ----------------------------------------------------------------------------


def test_malformed_dsn_names_the_setting():
    with pytest.raises(ConfigurationError) as info:
        PostgresStorage('q', dsn='host=127.0.0.1 nonsense')
    message = str(info.value)
    assert 'dsn=<unparseable>' in message and 'nonsense' in message


def test_unknown_connection_parameter_names_it(postgres_db):
    with pytest.raises(ConfigurationError, match='bogus'):
        PostgresStorage('q', dsn=postgres_db.dsn, bogus=1)


def test_unreachable_server_names_where_and_hides_the_password():
    from postgres_server import free_port

    port = free_port()  # nothing listens there
    with pytest.raises(psycopg.OperationalError) as info:
        PostgresHuey('q', dsn=f'postgresql://huey:s3cret@127.0.0.1:{port}/huey')
    message = str(info.value)
    assert message.startswith("PostgresStorage 'q' could not connect to PostgreSQL")
    assert f'port={port}' in message and 'host=127.0.0.1' in message
    assert 's3cret' not in message and 'password=***' in message
    assert 'Connection refused' in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_missing_database_names_it(postgres_server):
    dsn = postgres_server.dsn.rsplit('/', 1)[0] + '/no_such_db'
    with pytest.raises(psycopg.OperationalError, match='dbname=no_such_db'):
        PostgresStorage('q', dsn=dsn)


def test_missing_psycopg_names_the_package():
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        'import huey, huey.storage\n'
        'assert huey.storage.psycopg is None\n'
        'try:\n'
        "    huey.PostgresHuey('q')\n"
        'except huey.api.ConfigurationError as exc:\n'
        '    print(exc)\n'
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert '"psycopg" (version 3.2 or newer) not found' in out.stdout
    assert 'pip install psycopg' in out.stdout


def test_psycopg_is_imported_on_first_use():
    # huey_consumer imports huey before the app; an app that monkey-patches for gevent at
    # its top must still come before psycopg picks how it waits on sockets.
    code = (
        'import sys, huey, huey.storage, huey.contrib.mini\n'
        "assert 'psycopg' not in sys.modules\n"
        'assert huey.storage.psycopg is sys.modules["psycopg"]\n'
        'from huey.storage import psycopg\n'
        'print(psycopg.__name__)\n'
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'psycopg'


def test_tables_created_with_another_prefix_are_named(postgres_db):
    theirs = PostgresStorage('q', dsn=postgres_db.dsn, table_prefix='app')
    ours = PostgresStorage('q', dsn=postgres_db.dsn, table_prefix='other', create_tables=False)
    with pytest.raises(ConfigurationError) as info:
        ours.enqueue(b'x')
    message = str(info.value)
    assert 'other_task' in message and "table_prefix='other'" in message
    assert "table_prefix 'app'" in message
    with pytest.raises(ConfigurationError, match="table_prefix='other'"):
        ours.dequeue()
    with pytest.raises(ConfigurationError, match="table_prefix='other'"):
        ours.move_due_to_queue(datetime.datetime.now())
    assert theirs.queue_size() == 0
    theirs.close()
    ours.close()


def test_new_tables_beside_another_prefix_are_logged(postgres_db, admin, caplog):
    admin.execute('create table celery_task (id int)')  # not huey's: no _kv, _schedule
    PostgresStorage('q', dsn=postgres_db.dsn, table_prefix='App').close()
    assert 'created new tables' not in caplog.text  # the first huey prefix here
    PostgresStorage('q', dsn=postgres_db.dsn, table_prefix='typo').close()
    [record] = [r for r in caplog.records if 'created new tables' in r.getMessage()]
    assert "table_prefix='typo'" in record.getMessage()
    assert "huey tables with table_prefix 'app':" in record.getMessage()
    caplog.clear()
    PostgresStorage('q', dsn=postgres_db.dsn, table_prefix='typo').close()  # exists now
    assert 'created new tables' not in caplog.text


@pytest.mark.parametrize('prefix', ['', '---', '1abc', None])
def test_table_prefix_that_makes_no_table_name(postgres_db, prefix):
    with pytest.raises(ConfigurationError, match='table_prefix'):
        PostgresStorage('q', dsn=postgres_db.dsn, table_prefix=prefix)


@pytest.mark.parametrize('value', [float('nan'), float('inf'), -1, 'soon'])
def test_read_timeout_must_be_seconds(postgres_db, value):
    with pytest.raises((ValueError, TypeError), match='read_timeout'):
        PostgresStorage('q', dsn=postgres_db.dsn, read_timeout=value)


@pytest.mark.parametrize('value', [float('nan'), float('inf'), -1, 'soon'])
def test_wait_timeouts_and_leases_must_be_seconds(storage, value):
    storage.enqueue(b'stays queued')
    with pytest.raises((ValueError, TypeError), match='timeout'):
        storage.dequeue_wait(value)
    with pytest.raises((ValueError, TypeError), match='lease'):
        storage.dequeue_reliable('consumer', 'token', value)
    with pytest.raises((ValueError, TypeError), match='lease'):
        storage.renew_leases(['token'], value)
    assert storage.enqueued_items() == [b'stays queued']
    assert storage.dequeue_wait(0) == b'stays queued'


def test_connection_wins_over_dsn_and_says_so(postgres_db, caplog):
    storage = PostgresStorage(
        'q', dsn='host=nowhere.invalid', connection=lambda: psycopg.connect(postgres_db.dsn)
    )
    assert 'dsn and the connection parameters (dsn) are not used' in caplog.text
    storage.enqueue(b'x')
    assert storage.dequeue() == b'x'
    storage.close()


def test_bytes_and_str_keys_are_the_same_key(storage):
    storage.put_data(b'k', b'bytes-key')
    assert storage.peek_data('k') == b'bytes-key'
    assert storage.pop_data(b'k') == b'bytes-key'
    assert storage.peek_data('k') is EmptyData


def test_dead_letter_ids_that_are_not_ids(storage):
    letter = storage.put_dead_letter(b'x', 'why')
    for bad in ('nope', None, 2**70, '-1'):
        assert storage.pop_dead_letter(bad) is None
    assert storage.pop_dead_letter(letter)['data'] == b'x'


# Sharing one database with huey 3.5.4 ------------------------------------------------------


def test_shares_a_database_with_huey_354(reference_peer, postgres_db):
    ours = PostgresStorage('shared', dsn=postgres_db.dsn, read_timeout=0.1)
    theirs = reference_peer(
        'PostgresStorage', 'shared', dsn=postgres_db.dsn, blocking=False, read_timeout=0.1
    )

    theirs.enqueue(b't-low', 1)
    ours.enqueue(b'o-high', 5)
    theirs.enqueue(b't-none', None)
    ours.enqueue_many([(b'o-low', 1)])
    assert theirs.queue_size() == ours.queue_size() == 4
    assert (
        theirs.enqueued_items()
        == ours.enqueued_items()
        == [b'o-high', b't-low', b'o-low', b't-none']
    )
    assert theirs.dequeue() == b'o-high'
    assert ours.dequeue() == b't-low'
    assert theirs.dequeue() == b'o-low'
    assert ours.dequeue_wait(0.1) == b't-none'
    assert theirs.dequeue() is None

    base = datetime.datetime(2020, 5, 6, 7, 8, 9, 123456)
    ours.add_to_schedule(b'o-1', base + datetime.timedelta(seconds=1))
    theirs.add_to_schedule(b't-0', base)
    ours.add_to_schedule(b'o-2', base + datetime.timedelta(seconds=2))
    assert theirs.scheduled_items() == ours.scheduled_items() == [b't-0', b'o-1', b'o-2']
    assert theirs.read_schedule(base) == [b't-0']
    assert ours.move_due_to_queue(base + datetime.timedelta(seconds=1)) == [b'o-1']
    assert theirs.dequeue() == b'o-1'
    assert theirs.read_schedule(base + datetime.timedelta(seconds=5)) == [b'o-2']
    assert ours.schedule_size() == 0

    ours.put_data('r1', b'from-us')
    theirs.put_data('r2', b'from-them')
    assert theirs.peek_data('r1') == b'from-us'
    assert ours.peek_many(['r1', 'r2']) == theirs.peek_many(['r1', 'r2'])
    assert ours.pop_data('r2') == b'from-them'
    assert theirs.pop_data('r2') is EmptyData
    assert theirs.result_items() == ours.result_items() == {'r1': b'from-us'}
    ours.delete_and_put('r1', 'r3', b'both')
    assert theirs.result_items() == {'r3': b'both'}
    assert theirs.put_if_empty('lock', b'them') is True
    assert ours.put_if_empty('lock', b'us') is False
    assert ours.delete_data('lock')
    assert theirs.put_if_empty('lock', b'them') is True
    assert ours.incr('hits') == 1
    assert theirs.incr('hits', 5) == 6
    theirs.delete_counter('hits')
    assert ours.incr('hits') == 1
    ours.flush_all()
    assert theirs.result_store_size() == 0
    ours.close()


def test_each_side_wakes_the_other(reference_peer, postgres_db):
    name = postgres_db.schema + '-' + 'w' * 60  # hashed channel: both sides hash it alike
    ours = CountingStorage(name, dsn=postgres_db.dsn, read_timeout=120)
    theirs = reference_peer('PostgresStorage', name, dsn=postgres_db.dsn, read_timeout=120)

    def listening():  # huey 3.5.4's LISTEN connection has run its LISTEN on our channel
        with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
            rows = conn.execute(
                'select 1 from pg_stat_activity where query = %s and pid <> %s',
                (f'listen "{ours.channel}"', ours.conn.info.backend_pid),
            ).fetchall()
        return bool(rows)

    got = []
    waiter = threading.Thread(target=lambda: got.append(theirs.dequeue()))
    waiter.start()
    wait_until(listening, what='huey 3.5.4 waiting')
    ours.enqueue(b'from huey-rs')
    enqueued = time.monotonic()
    waiter.join(120)
    # Woken by the notification: a missed one would wait out read_timeout (120 s).
    assert got == [b'from huey-rs'] and time.monotonic() - enqueued < 30

    got.clear()
    waiter = threading.Thread(target=lambda: got.append(ours.dequeue()))
    waiter.start()
    wait_until(lambda: ours.pops == 2, what='huey-rs waiting')
    theirs.enqueue(b'from huey 3.5.4')
    enqueued = time.monotonic()
    waiter.join(120)
    assert got == [b'from huey 3.5.4'] and time.monotonic() - enqueued < 30
    ours.close()


def test_huey_354_and_huey_rs_consumers_split_one_queue(reference_peer, postgres_db):
    ours = PostgresStorage('split', dsn=postgres_db.dsn, blocking=False)
    theirs = reference_peer('PostgresStorage', 'split', dsn=postgres_db.dsn, blocking=False)
    ours.enqueue_many([(b'%d' % i, None) for i in range(200)])
    got_ours, got_theirs = [], []
    while True:
        mine, other = ours.dequeue(), theirs.dequeue()
        if mine is not None:
            got_ours.append(int(mine))
        if other is not None:
            got_theirs.append(int(other))
        if mine is None and other is None:
            break
    assert sorted(got_ours + got_theirs) == list(range(200))
    assert got_ours and got_theirs
    ours.close()


# A server restarted under running producers and consumers ----------------------------------


@pytest.mark.parametrize(
    'reliable, mode',
    [(False, 'fast'), (True, 'fast'), (True, 'immediate')],
    ids=['default-fast', 'reliable-fast', 'reliable-immediate'],
)
def test_restart_under_running_producers_and_consumers(postgres_server_factory, reliable, mode):
    """Every task whose enqueue returned runs, across a restart (``fast``: sessions cut,
    ``immediate``: the server crashes and replays its WAL)."""
    server = postgres_server_factory()
    huey = PostgresHuey('restart', dsn=server.dsn, read_timeout=0.2, reliable=reliable, lease=2)
    ran, ran_lock = set(), threading.Lock()

    @huey.task()
    def record(producer, i):
        with ran_lock:
            ran.add((producer, i))

    acked, failures = set(), [0]
    restarted = threading.Event()
    per_producer = 300

    def produce(producer):
        for i in range(per_producer):
            while True:
                try:
                    record(producer, i)
                    break
                except psycopg.OperationalError:  # the server is away: try again
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
        server.stop(mode)
        server.start()
        restarted.set()
        for thread in producers:
            thread.join(60)
        assert len(acked) == 2 * per_producer
        # Reliable mode loses nothing; by default the messages deleted for a worker whose
        # session the shutdown cut before the reply are gone (at most once): what the
        # workers' fetches take at once, one per worker plus the rest of the prefetch.
        allowed = 0 if reliable else consumer.workers + consumer.prefetch.per_fetch - 1
        wait_until(
            lambda: len(acked - ran) <= allowed and huey.pending_count() == 0,
            timeout=60,
            what=lambda: (
                sorted(acked - ran)[:10],
                huey.pending_count(),
                [(d['reason'], d['deliveries']) for d in huey.storage.dead_letters(5)],
                [item[:4] for item in huey.storage.inflight_items()],
            ),
        )
    finally:
        consumer.stop(graceful=True)
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert len(acked - ran) <= allowed and huey.pending_count() == 0
    if reliable:
        for *_, data in huey.storage.inflight_items():
            assert tuple(huey.deserialize_task(data).args) in ran
    huey.storage.close()
