"""A mixed fleet: huey 3.5.4 (from PyPI) and huey-rs share one Redis, one Sqlite file and one
PostgreSQL database.

One small app module is written into a temp dir; the same source is imported by both
packages. For each storage (Redis, Sqlite, Postgres) and each direction (huey-rs producer with a
huey 3.5.4 ``huey_consumer``, and the reverse) a real consumer subprocess runs while
producer subprocesses of the other interpreter enqueue tasks and block on their results,
printing what they saw as JSON. Everything crossing between the two is the wire format:
pickled messages, results, errors, revocation flags, lock keys, the schedule, priorities.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

import huey as huey_package

from conftest import assert_is_huey_354, reference_python

WAIT = 20  # seconds a producer blocks on one result; each is expected well under one

APP = '''\
"""The fleet's tasks; imported unchanged by huey 3.5.4 and by huey-rs."""
import os
import time

import huey as huey_package

NAME = os.environ['FLEET_NAME']
if os.environ['FLEET_STORAGE'] == 'sqlite':
    huey = huey_package.SqliteHuey(NAME, filename=os.environ['FLEET_DB'])
elif os.environ['FLEET_STORAGE'] == 'postgres':
    huey = huey_package.PostgresHuey(NAME, dsn=os.environ['FLEET_PG_DSN'])
else:
    huey = getattr(huey_package, os.environ['FLEET_REDIS_CLASS'])(
        NAME, host=os.environ['FLEET_REDIS_HOST'], port=int(os.environ['FLEET_REDIS_PORT']),
        db=int(os.environ['FLEET_REDIS_DB']))


def note(*fields):
    """One line in the fleet's log, readable by the producer (O_APPEND: whole lines)."""
    with open(os.environ['FLEET_LOG'], 'a') as log:
        log.write(' '.join(map(str, fields)) + '\\n')


@huey.task()
def where():
    return huey_package.__file__


@huey.task()
def add(a, b):
    return a + b


@huey.task()
def echo(value):
    return value


@huey.task()
def when():
    return time.time()


@huey.task()
def fail(message):
    raise ValueError(message)


@huey.task()
def describe(*args):
    return [repr(arg) for arg in args]


@huey.task(retries=1, retry_delay=1, context=True)
def flaky(value, task=None):
    note('flaky', task.id, task.retries, time.time())
    if task.retries:
        raise RuntimeError('the first attempt fails')
    return value


@huey.task(retries=2, context=True)
def doomed(task=None):
    note('doomed', task.id, task.retries)
    raise KeyError('never works')


@huey.task()
@huey.lock_task('shared')
def locked():
    return 'ran with the lock'


@huey.task()
def grab_lock(name):
    return huey.lock_task(name).acquire()


@huey.task()
def meet(mine, theirs):
    """Returns only once the partner task has started, so it cannot run in this worker."""
    huey.put_result(mine, huey_package.__file__)
    return [huey_package.__file__, huey.result(theirs, blocking=True, timeout=20)]


@huey.task()
def total(values):
    return sum(values)


@huey.task()
def record(label):
    note('order', label)
    return label


@huey.task()
def also_record(label):
    note('order', label)
    return label
'''

PRODUCER = '''\
"""Runs one scenario against app.huey and prints its outcome as one JSON line."""
import datetime
import json
import os
import sys
import time

import huey as huey_package
from huey import group
from huey.exceptions import TaskException, TaskLockedException
from huey.utils import SKIPPED

import app

WAIT = float(os.environ['FLEET_WAIT'])


def outcome(result):
    try:
        return {'value': result.get(blocking=True, timeout=WAIT)}
    except TaskException as exc:
        return {'error': exc.metadata['error'], 'retries': exc.metadata['retries'],
                'task_id': exc.metadata['task_id'], 'traceback': exc.metadata['traceback']}


def log_lines(kind):
    with open(os.environ['FLEET_LOG']) as log:
        return [line.split()[1:] for line in log if line.split()[0] == kind]


def results():
    first = app.add(1, 2)
    many = [app.add(i, 10 * i) for i in range(8)]
    payload = {'tuple': (1, 'two'), 'bytes': b'\\x00\\xff', 'set': frozenset({3, 4}),
               'when': datetime.datetime(2024, 2, 29, 12, 30, 1, 5), 'none': None,
               'nested': [{'a': 1.5}, (), b'']}
    echoed = app.echo(payload).get(blocking=True, timeout=WAIT)
    return {
        'producer': huey_package.__file__,
        'consumer': app.where().get(blocking=True, timeout=WAIT),
        'first': first.get(blocking=True, timeout=WAIT),
        'first_again': first.get(),  # read once and cached, as huey does
        'many': [r.get(blocking=True, timeout=WAIT) for r in many],
        'kwargs': app.add(a='x', b='y').get(blocking=True, timeout=WAIT),
        'echo_equal': echoed == payload,
        'echo_types': sorted(type(v).__name__ for v in echoed.values()),
        'mapped': app.add.map([(1, 1), (2, 2), (3, 3)]).get(blocking=True, timeout=WAIT),
    }


def scheduled():
    # Enqueued first, so a worker moves it into the schedule before the others even run.
    later = app.when.schedule(delay=3600)
    eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
    by_eta = app.when.schedule(eta=eta)
    delay_from = time.time()
    by_delay = app.when.schedule(delay=1)
    ran_at = by_eta.get(blocking=True, timeout=WAIT)
    delay_ran_at = by_delay.get(blocking=True, timeout=WAIT)
    # The far task, written to the schedule by the consumer, read back from this side.
    listed = [t for t in app.huey.scheduled() if t.id == later.id]
    later.revoke(revoke_once=False)
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    return {
        'eta': eta.timestamp(), 'ran_at': ran_at,
        'delay_from': delay_from, 'delay_ran_at': delay_ran_at,
        'listed': [(t.name, (t.eta - now).total_seconds()) for t in listed],
        'later_revoked': later.is_revoked(),
    }


def until_final(result):
    """Outcomes read until one is final: huey stores an error after every failed attempt
    (store_intermediate_errors), and each read consumes it."""
    seen = [outcome(result)]
    while 'error' in seen[-1] and seen[-1]['retries']:
        result.reset()
        seen.append(outcome(result))
    return seen


def retries():
    recovered = app.flaky('recovered')
    seen = until_final(recovered)
    attempts = [(int(n), float(t)) for tid, n, t in log_lines('flaky') if tid == recovered.id]
    lost = app.doomed()
    lost_seen = until_final(lost)
    lost_attempts = [int(n) for tid, n in log_lines('doomed') if tid == lost.id]
    return {'seen': [s.get('value', s.get('error')) for s in seen], 'attempts': attempts,
            'lost_retries_seen': [s['retries'] for s in lost_seen], 'lost': lost_seen[-1],
            'lost_attempts': lost_attempts, 'lost_id': lost.id}


def errors():
    failed = app.fail('boom')
    head = app.fail.s('first link')
    head.then(app.add, 1)
    chain = app.huey.enqueue(head)
    handled = app.fail.s('handled')
    handled.error(app.describe)
    app.huey.enqueue(handled)
    handler = app.huey.result(handled.on_error.id, blocking=True, timeout=WAIT)
    return {'failed': outcome(failed), 'failed_id': failed.id,
            'chain': [outcome(r) for r in chain], 'chain_head_id': head.id,
            'handler': handler}


def locks():
    with app.huey.lock_task('shared'):
        held = outcome(app.locked())
    free = outcome(app.locked())
    grabbed = outcome(app.grab_lock('other'))
    lock = app.huey.lock_task('other')
    try:
        with lock:
            here = 'acquired'
    except TaskLockedException as exc:
        here = repr(exc)
    return {'held': held, 'free': free, 'grabbed': grabbed, 'here': here,
            'is_locked': lock.is_locked(), 'cleared': bool(lock.clear()),
            'is_locked_after': lock.is_locked()}


def workflows():
    pipe = app.add.s(1, 2).then(app.add, 3).then(app.add, 4)
    pipeline = app.huey.enqueue(pipe).get(blocking=True, timeout=WAIT)
    chord = app.huey.enqueue(group([app.add.s(i, i) for i in range(5)]).then(app.total))
    chained = app.huey.enqueue(
        group([app.add.s(i, 1) for i in range(3)]).then(app.total).then(app.add, 100))
    return {
        'pipeline': pipeline,
        'chord': chord.get(blocking=True, timeout=WAIT),
        'chord_members': chord.results.get(blocking=True, timeout=WAIT),
        'chord_pipeline': chained.pipeline_results.get(blocking=True, timeout=WAIT),
    }


def pair():
    """Two consumers, one of each package, with one worker each, on one queue."""
    first = app.meet(f'{os.getpid()}-a', f'{os.getpid()}-b')
    second = app.meet(f'{os.getpid()}-b', f'{os.getpid()}-a')
    more = [app.add(i, i) for i in range(10)]
    return {'met': [first.get(blocking=True, timeout=WAIT),
                    second.get(blocking=True, timeout=WAIT)],
            'more': [r.get(blocking=True, timeout=WAIT) for r in more]}


def ordered():
    """Enqueued while no consumer runs; the test starts one worker after 'enqueued'."""
    revoked_once = app.record('revoked once', priority=20)
    revoked_once.revoke()
    revoked_always = app.record('revoked always', priority=20)
    revoked_always.revoke(revoke_once=False)
    by_id = app.record('revoked by id', priority=20)
    app.huey.revoke_by_id(by_id.id)
    now = datetime.datetime.now(datetime.timezone.utc)
    until_later = app.record('revoked for an hour', priority=20)
    app.huey.revoke(until_later.task, revoke_until=now + datetime.timedelta(hours=1))
    lapsed = app.record('revocation lapsed', priority=7)
    app.huey.revoke(lapsed.task, revoke_until=now - datetime.timedelta(minutes=1))
    expired = app.record('expired', priority=20, expires=now - datetime.timedelta(seconds=1))
    fresh = app.record('not expired', priority=8, expires=3600)
    members = [app.add.s(i, i) for i in range(3)]
    app.huey.revoke_by_id(members[1].id)
    chord = app.huey.enqueue(group(members).then(app.echo))
    app.huey.revoke_all(app.also_record)
    by_class = app.also_record('revoked by class', priority=20)
    low = [app.record('low', priority=-5), app.record('plain')]
    fifo = [app.record(f'fifo {i}', priority=1) for i in range(3)]
    high = [app.record('mid', priority=5), app.record('high', priority=10), lapsed, fresh]
    print(json.dumps({'enqueued': True}), flush=True)
    assert sys.stdin.readline() == 'consumer started\\n'

    values = [r.get(blocking=True, timeout=WAIT) for r in low + fifo + high]
    chord_value = chord.get(blocking=True, timeout=WAIT)
    flags_after = {'once': revoked_once.is_revoked(), 'always': revoked_always.is_revoked(),
                   'by_id': by_id.is_revoked(), 'until_later': until_later.is_revoked(),
                   'lapsed': lapsed.is_revoked(), 'by_class': app.also_record.is_revoked()}
    app.huey.restore_all(app.also_record)
    restored = app.also_record('restored').get(blocking=True, timeout=WAIT)
    return {
        'order': [' '.join(fields) for fields in log_lines('order')],
        'values': values,
        'skipped_results': [r.get() for r in (revoked_once, revoked_always, by_id, until_later,
                                              by_class, expired)],
        'chord': [v if v is not SKIPPED else 'the SKIPPED singleton'
                  for v in chord_value],
        'flags_after': flags_after,
        'restored': restored,
    }


print(json.dumps(globals()[sys.argv[1]]()), flush=True)
'''

OURS = sys.executable
DIRECTIONS = ['huey-rs->huey3.5.4', 'huey3.5.4->huey-rs']  # producer->consumer
CONSUMER_ARGS = ['-m', 'huey.bin.huey_consumer', 'app.huey', '-d', '0.05', '-m', '0.25']


def _flushdb(host, port, db):
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f'SELECT {db}\r\nFLUSHDB\r\n'.encode())
        reply = b''
        while reply.count(b'\r\n') < 2:
            reply += sock.recv(64)
    assert reply == b'+OK\r\n+OK\r\n', reply


class Consumer:
    """A ``huey_consumer`` subprocess; its output goes to a file shown when a test fails."""

    def __init__(self, python, workdir, env, workers, log_name):
        self.log_path = workdir / log_name
        with open(self.log_path, 'w') as log:
            self.proc = subprocess.Popen(
                [python, *CONSUMER_ARGS, '-w', str(workers)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self):
        return self.log_path.read_text()[-6000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # graceful: workers finish, then exit
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f'consumer ignored SIGINT for {WAIT}s:\n{self.output()}')


class Fleet:
    """One storage shared by a producer interpreter and a consumer interpreter."""

    def __init__(self, workdir, storage, direction, redis_server, redis_db_number, pg_dsn=None):
        self.workdir = workdir
        self.storage = storage
        theirs = reference_python()
        self.producer_python, self.consumer_python = (
            (OURS, theirs) if direction == DIRECTIONS[0] else (theirs, OURS)
        )
        (workdir / 'app.py').write_text(APP)
        (workdir / 'producer.py').write_text(PRODUCER)
        self.base_env = {
            k: v
            for k, v in os.environ.items()
            if k not in ('PYTHONPATH', 'PYTHONHOME', 'PYTHONSTARTUP')
        }
        self.base_env.update(
            FLEET_STORAGE=storage, FLEET_WAIT=str(WAIT), PYTHONDONTWRITEBYTECODE='1'
        )
        if storage == 'sqlite':
            self.base_env['FLEET_DB'] = str(workdir / 'fleet.db')
        elif storage == 'postgres':
            self.base_env['FLEET_PG_DSN'] = pg_dsn
        else:
            self.base_env.update(
                FLEET_REDIS_HOST=redis_server.host,
                FLEET_REDIS_PORT=str(redis_server.port),
                FLEET_REDIS_DB=str(redis_db_number),
            )
            _flushdb(redis_server.host, redis_server.port, redis_db_number)
        self.consumers = []

    def env(self, name, redis_class='RedisHuey'):
        """Environment naming one huey instance (queue) in the shared storage."""
        return {
            **self.base_env,
            'FLEET_NAME': name,
            'FLEET_REDIS_CLASS': redis_class,
            'FLEET_LOG': str(self.workdir / f'{name}.log'),
        }

    def create_tables(self, env):
        """Open the app once, so its storage creates the tables before the fleet starts, as
        a deployment's first process does. huey 3.5.4 creates its Postgres tables without a
        lock: two processes that both find a new database empty can both try, and PostgreSQL
        then refuses one of them (a duplicate pg_type row), huey 3.5.4's own fleets too."""
        subprocess.run(
            [self.consumer_python, '-c', 'import app'],
            cwd=self.workdir,
            env=env,
            check=True,
            timeout=WAIT,
        )

    def start_consumer(self, env, workers, python=None):
        consumer = Consumer(
            python or self.consumer_python,
            self.workdir,
            env,
            workers,
            f'consumer-{env["FLEET_NAME"]}-{len(self.consumers)}.out',
        )
        self.consumers.append(consumer)
        return consumer

    def stop_consumers(self):
        for consumer in self.consumers:
            consumer.stop()

    def diagnostics(self, stderr=''):
        parts = [f'producer stderr:\n{stderr}'] if stderr else []
        parts += [f'{c.log_path.name}:\n{c.output()}' for c in self.consumers]
        return '\n'.join(parts)

    def produce(self, scenario, env):
        """Run one producer scenario to completion; its JSON outcome."""
        try:
            proc = subprocess.run(
                [self.producer_python, 'producer.py', scenario],
                cwd=self.workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=WAIT * 4,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f'producer {scenario} hung:\n{self.diagnostics(exc.stderr or "")}')
        if proc.returncode:
            pytest.fail(
                f'producer {scenario} exited {proc.returncode}:\n{self.diagnostics(proc.stderr)}'
            )
        return json.loads(proc.stdout.splitlines()[-1])


def _create_database(server, name):
    import psycopg

    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists {name} with (force)')
        conn.execute(f'create database {name}')
    return server.dsn.rsplit('/', 1)[0] + '/' + name


@pytest.fixture(scope='module')
def reference_huey_file():
    return subprocess.run(
        [reference_python(), '-c', 'import huey; print(huey.__file__)'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


_db_numbers = iter(range(1, 16))


@pytest.fixture(scope='module', params=['redis', 'sqlite', 'postgres'])
def storage(request):
    return request.param


@pytest.fixture(scope='module', params=DIRECTIONS)
def fleet(request, storage, redis_server, tmp_path_factory):
    """A fleet whose consumer (-w 2) runs for every scenario of this storage and direction."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()  # an earlier test module stopped it
    number = next(_db_numbers)
    pg_dsn = None
    if storage == 'postgres':  # a database of its own, with huey's default table names
        pg_dsn = _create_database(request.getfixturevalue('postgres_server'), f'fleet{number}')
    fleet = Fleet(
        tmp_path_factory.mktemp(f'fleet-{storage}'),
        storage,
        request.param,
        redis_server,
        number,
        pg_dsn,
    )
    fleet.live_env = fleet.env('fleet')
    if storage == 'postgres':
        fleet.create_tables(fleet.live_env)
    fleet.start_consumer(fleet.live_env, workers=2)
    yield fleet
    fleet.stop_consumers()


def test_the_reference_is_huey_3_5_4_in_its_own_venv():
    # Otherwise every "huey 3.5.4" side of this module could be huey-rs talking to itself.
    assert_is_huey_354(reference_python())


def test_both_sides_run_the_intended_package(fleet, reference_huey_file):
    out = fleet.produce('results', fleet.live_env)
    expected = {OURS: huey_package.__file__, reference_python(): reference_huey_file}
    assert out['producer'] == expected[fleet.producer_python]
    assert out['consumer'] == expected[fleet.consumer_python]
    assert out['producer'] != out['consumer']


def test_results(fleet):
    out = fleet.produce('results', fleet.live_env)
    assert out['first'] == out['first_again'] == 3
    assert out['many'] == [11 * i for i in range(8)]
    assert out['kwargs'] == 'xy'
    assert out['echo_equal'] is True, out['echo_types']
    assert out['mapped'] == [2, 4, 6]


def test_scheduled_tasks_wait_for_their_eta(fleet):
    out = fleet.produce('scheduled', fleet.live_env)
    assert out['eta'] <= out['ran_at'] < out['eta'] + 5
    assert out['delay_from'] + 1 <= out['delay_ran_at'] < out['delay_from'] + 6
    # The far task: moved into the schedule by the consumer, listed by the producer.
    [(name, eta_ahead)] = out['listed']
    assert name == 'when' and 3500 < eta_ahead <= 3600
    assert out['later_revoked'] is True


def test_retries(fleet):
    out = fleet.produce('retries', fleet.live_env)
    # The error of the first attempt may be overwritten before the producer reads it.
    assert out['seen'] in (['recovered'], ["RuntimeError('the first attempt fails')", 'recovered'])
    (first_retries, first_at), (second_retries, second_at) = out['attempts']
    assert (first_retries, second_retries) == (1, 0)
    assert second_at - first_at >= 0.95  # retry_delay=1, through the consumer's schedule
    assert out['lost_attempts'] == [2, 1, 0]
    seen = out['lost_retries_seen']
    assert seen[-1] == 0 and seen == sorted(set(seen), reverse=True), seen
    assert out['lost']['error'] == "KeyError('never works')"
    assert out['lost']['retries'] == 0
    assert out['lost']['task_id'] == out['lost_id']


def test_errors_read_as_task_exception(fleet):
    out = fleet.produce('errors', fleet.live_env)
    failed = out['failed']
    assert failed['error'] == "ValueError('boom')"
    assert failed['retries'] == 0 and failed['task_id'] == out['failed_id']
    assert 'ValueError: boom' in failed['traceback']
    # A failed pipeline head stores its error for every later link too.
    head, tail = out['chain']
    assert head['error'] == tail['error'] == "ValueError('first link')"
    assert head['task_id'] == tail['task_id'] == out['chain_head_id']
    # The on_error handler received the exception, pickled by the consumer.
    assert out['handler'] == ["ValueError('handled')"]


def test_locks_are_shared(fleet):
    out = fleet.produce('locks', fleet.live_env)
    assert out['held'] == {
        'error': "TaskLockedException('unable to acquire lock shared')",
        'retries': 0,
        'task_id': out['held']['task_id'],
        'traceback': out['held']['traceback'],
    }
    assert 'TaskLockedException: unable to acquire lock shared' in out['held']['traceback']
    assert out['free'] == {'value': 'ran with the lock'}
    assert out['grabbed'] == {'value': True}
    assert out['here'] == "TaskLockedException('unable to acquire lock other')"
    assert (out['is_locked'], out['cleared'], out['is_locked_after']) == (True, True, False)


def test_pipelines_and_chords(fleet):
    out = fleet.produce('workflows', fleet.live_env)
    assert out['pipeline'] == [3, 6, 10]
    assert out['chord_members'] == [0, 2, 4, 6, 8]
    assert out['chord'] == 20
    assert out['chord_pipeline'] == [6, 106]


def test_priorities_and_revocations_with_the_consumer_stopped(fleet):
    """Tasks wait in the queue until one worker starts; it takes them by priority (FIFO
    within one), skipping the revoked ones."""
    env = fleet.env('fleet-ordered', redis_class='PriorityRedisHuey')
    producer = subprocess.Popen(
        [fleet.producer_python, 'producer.py', 'ordered'],
        cwd=fleet.workdir,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = producer.stdout.readline()
        if first.strip() != '{"enqueued": true}':
            producer.kill()
            pytest.fail(f'producer did not enqueue: {first!r}\n{producer.stderr.read()}')
        consumer = fleet.start_consumer(env, workers=1)
        try:
            stdout, stderr = producer.communicate('consumer started\n', timeout=WAIT * 4)
        finally:
            consumer.stop()
    except subprocess.TimeoutExpired:
        producer.kill()
        stdout, stderr = producer.communicate()
        pytest.fail(f'producer hung:\n{fleet.diagnostics(stderr)}')
    if producer.returncode:
        pytest.fail(f'producer exited {producer.returncode}:\n{fleet.diagnostics(stderr)}')
    out = json.loads(stdout.splitlines()[-1])

    assert out['order'] == [
        'high',
        'not expired',
        'revocation lapsed',
        'mid',
        'fifo 0',
        'fifo 1',
        'fifo 2',
        'plain',
        'low',
        'restored',
    ], fleet.diagnostics()
    assert out['values'] == [
        'low',
        'plain',
        'fifo 0',
        'fifo 1',
        'fifo 2',
        'mid',
        'high',
        'revocation lapsed',
        'not expired',
    ]
    assert out['skipped_results'] == [None] * 6
    # A revoked chord member reaches the callback as huey.utils.SKIPPED, pickled by reference.
    assert out['chord'] == [0, 'the SKIPPED singleton', 4]
    # The consumer used up revoke_once and cleared the lapsed revoke_until; the others stand.
    assert out['flags_after'] == {
        'once': False,
        'always': True,
        'by_id': True,
        'until_later': True,
        'lapsed': False,
        'by_class': True,
    }
    assert out['restored'] == 'restored'


def test_one_queue_two_consumers_one_of_each(fleet, reference_huey_file):
    """A real mixed fleet: each consumer's one worker holds a task that waits for the other
    task to start, so each package runs one of them (and both drain the rest)."""
    env = fleet.env('fleet-pair')
    consumers = [
        fleet.start_consumer(env, workers=1),
        fleet.start_consumer(env, workers=1, python=fleet.producer_python),
    ]
    try:
        out = fleet.produce('pair', env)
    finally:
        for consumer in consumers:
            consumer.stop()
    packages = {huey_package.__file__, reference_huey_file}
    (mine_a, partner_a), (mine_b, partner_b) = out['met']
    assert {mine_a, mine_b} == packages
    assert (partner_a, partner_b) == (mine_b, mine_a)
    assert out['more'] == [2 * i for i in range(10)]
