"""Signals in huey 3.5.4's order, on every path: one workload (immediate, scheduled, delayed
retry, revoked, expired, locked, interrupted, error, pipeline, chord) run by a real consumer
under huey 3.5.4 (from PyPI, in its own venv) and under huey-rs, on Memory, File, Sqlite,
Redis and Postgres with thread and process workers (and greenlet workers on Redis and
Postgres), with a slow signal receiver (it sleeps before it records, longest for
``enqueued``). The sequence of signals each task received must be the same under both
packages.

The receiver sleeping first makes a late signal visible: a package that let a worker take a
task before sending its ``enqueued`` (as huey-rs once did for scheduled tasks and delayed
retries) records ``executing`` / ``complete`` before that ``enqueued``. Memory runs thread
workers only: a forked worker gets a copy of the memory queue, in huey 3.5.4 as here.
"""

import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import reference_python

WAIT = 60  # seconds for a whole run; each takes a few
SLOW = 0.005  # seconds the signal receiver sleeps...
SLOW_ENQUEUED = 0.05  # ...and for 'enqueued'

APP = textwrap.dedent("""
    import os

    if os.environ['SIG_WORKER'] == 'greenlet':  # as a greenlet consumer's app does
        from gevent import monkey

        monkey.patch_all()

    import datetime
    import time

    import huey as huey_package
    from huey import chord, signals

    env = os.environ
    NAME, STORAGE, PATH = env['SIG_NAME'], env['SIG_STORAGE'], env['SIG_PATH']
    if STORAGE == 'memory':
        huey = huey_package.MemoryHuey(NAME)
    elif STORAGE == 'file':
        huey = huey_package.FileHuey(NAME, path=PATH)
    elif STORAGE == 'sqlite':
        huey = huey_package.SqliteHuey(NAME, filename=PATH)
    elif STORAGE == 'postgres':
        huey = huey_package.PostgresHuey(NAME, dsn=env['SIG_DSN'])
    else:
        huey = huey_package.RedisHuey(NAME, host='127.0.0.1', port=int(env['SIG_PORT']))


    @huey.signal()
    def slow_receiver(signal, task, *args):
        # Slowest for 'enqueued' (a monitor recording a new task, say), so a package that
        # sent it after the task became visible is overtaken by the worker's signals.
        time.sleep(float(env['SIG_SLOW_ENQUEUED' if signal == 'enqueued' else 'SIG_SLOW']))
        if task is not None:
            fd = os.open(env['SIG_LOG'], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f'{task.id} {signal}\\n'.encode())
            finally:
                os.close(fd)


    @huey.task()
    def plain(n=0):
        return n


    @huey.task(retries=1, retry_delay=1, context=True)
    def flaky(task=None):
        if task.retries:
            raise ValueError('the first run fails')
        return 'second run'


    @huey.task()
    def boom():
        raise ValueError('always fails')


    @huey.task()
    @huey.lock_task('held')
    def locked():
        return 'never'


    @huey.task()
    def hang():
        deadline = time.monotonic() + 120  # longer than the test waits: interrupted first
        while time.monotonic() < deadline:
            time.sleep(0.01)


    @huey.task()
    def total(values):
        return sum(values)


    def enqueue_workload():
        huey.flush()
        huey.lock_task('held').acquire()
        past = datetime.datetime.now() - datetime.timedelta(hours=1)
        huey.enqueue(hang.s(id='interrupted'))
        huey.enqueue(plain.s(id='immediate'))
        huey.enqueue(flaky.s(id='retry'))
        huey.enqueue(plain.s(id='revoked'))
        huey.revoke_by_id('revoked')
        huey.enqueue(plain.s(id='expired', expires=past))
        huey.enqueue(locked.s(id='locked'))
        huey.enqueue(boom.s(id='error'))
        huey.enqueue(plain.s(1, id='pipe-1').then(plain.s(id='pipe-2')))
        members = [plain.s(i, id=f'chord-{i}') for i in range(2)]
        huey.enqueue(chord(members, total.s(id='chord-cb')))
        # Last, and far enough ahead that a worker always takes them before they are due
        # (they go to the schedule, then the scheduler enqueues them again).
        for i in range(3):
            huey.enqueue(plain.s(i, id=f'scheduled-{i}', delay=3))


    if __name__ == '__main__':
        enqueue_workload()
        consumer = huey.create_consumer(
            workers=4, worker_type=env['SIG_WORKER'], periodic=False,
            initial_delay=0.01, max_delay=0.05, check_worker_health=False)
        print('consumer starting', flush=True)
        consumer.run()
""")

# The signal each task reaches once the workload has settled ('interrupted' is the one task
# still running then: the test stops the consumer to interrupt it).
LAST = {
    'immediate': 'complete',
    'scheduled-0': 'complete',
    'scheduled-1': 'complete',
    'scheduled-2': 'complete',
    'retry': 'complete',
    'revoked': 'revoked',
    'expired': 'expired',
    'locked': 'locked',
    'error': 'error',
    'pipe-1': 'complete',
    'pipe-2': 'complete',
    'chord-0': 'complete',
    'chord-1': 'complete',
    'chord-cb': 'complete',
    'interrupted': 'executing',
}

RUN = ['enqueued', 'executing', 'complete']
EXPECTED = {
    'immediate': RUN,
    'scheduled-0': ['enqueued', 'scheduled', *RUN],
    'retry': ['enqueued', 'executing', 'error', 'retrying', 'scheduled', *RUN],
    'revoked': ['enqueued', 'revoked'],
    'expired': ['enqueued', 'expired'],
    'locked': ['enqueued', 'executing', 'locked'],
    'error': ['enqueued', 'executing', 'error'],
    'interrupted': ['enqueued', 'executing', 'interrupted'],
    'pipe-2': RUN,
    'chord-cb': RUN,
}

CELLS = [
    ('memory', 'thread'),
    ('file', 'thread'),
    ('file', 'process'),
    ('sqlite', 'thread'),
    ('sqlite', 'process'),
    ('redis', 'thread'),
    ('redis', 'process'),
    ('redis', 'greenlet'),
    ('postgres', 'thread'),
    ('postgres', 'process'),
    ('postgres', 'greenlet'),
]


@pytest.fixture(scope='module')
def app_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp('signal-order')
    (path / 'sigapp.py').write_text(APP)
    return path


def _sequences(log_path):
    sequences = {}
    with open(log_path) as log:
        for line in log:
            task_id, name = line.split()
            sequences.setdefault(task_id, []).append(name)
    return sequences


def _settled(sequences):
    return all(last in sequences.get(task_id, ()) for task_id, last in LAST.items())


def run_workload(package, python, app_dir, storage, worker, redis_port, dsn):
    """Run the workload under ``python``; the signal sequence per task id."""
    tag = ''.join(c if c.isalnum() else '_' for c in f'{package}-{storage}-{worker}')
    log_path = app_dir / f'{tag}.log'
    env = dict(
        os.environ,
        SIG_NAME=tag,
        SIG_STORAGE=storage,
        SIG_PATH=str(app_dir / f'{tag}.{storage}'),
        SIG_PORT=str(redis_port),
        SIG_DSN=dsn,
        SIG_LOG=str(log_path),
        SIG_SLOW=str(SLOW),
        SIG_SLOW_ENQUEUED=str(SLOW_ENQUEUED),
        SIG_WORKER=worker,
        PYTHONPATH=str(app_dir),
    )
    output = open(app_dir / f'{tag}.out', 'wb')
    proc = subprocess.Popen(
        [python, str(app_dir / 'sigapp.py')],
        cwd=app_dir,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output.close()
    try:
        deadline = time.monotonic() + WAIT
        while not (log_path.exists() and _settled(_sequences(log_path))):
            assert proc.poll() is None, f'{tag} exited early: {_output(app_dir, tag)}'
            assert time.monotonic() < deadline, (
                f'{tag} did not settle: {_sequences(log_path) if log_path.exists() else {}}'
            )
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)  # interrupts the task still running
        proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return _sequences(log_path)


def _output(app_dir, tag):
    return (app_dir / f'{tag}.out').read_text(errors='replace')[-3000:]


@pytest.fixture(scope='module')
def runs(app_dir, redis_server, postgres_server):
    """{(package, storage, worker): sequences}, every run at once (each its own storage)."""
    pythons = {'huey-rs': sys.executable, 'huey 3.5.4': reference_python()}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = {
            (package, storage, worker): pool.submit(
                run_workload,
                package,
                python,
                app_dir,
                storage,
                worker,
                redis_server.port,
                postgres_server.dsn,
            )
            for package, python in pythons.items()
            for storage, worker in CELLS
        }
        return {key: future.result() for key, future in futures.items()}


@pytest.mark.parametrize('storage, worker', CELLS, ids=[f'{s}-{w}' for s, w in CELLS])
def test_every_task_gets_huey_354s_signal_sequence(runs, storage, worker):
    ours = runs[('huey-rs', storage, worker)]
    theirs = runs[('huey 3.5.4', storage, worker)]
    # The reference itself follows the documented order (so the comparison means something).
    for task_id, sequence in EXPECTED.items():
        assert theirs[task_id] == sequence, (task_id, theirs[task_id])
    assert set(ours) == set(theirs) == set(LAST)
    different = {
        task_id: {'huey-rs': ours[task_id], 'huey 3.5.4': theirs[task_id]}
        for task_id in LAST
        if ours[task_id] != theirs[task_id]
    }
    assert not different, different
