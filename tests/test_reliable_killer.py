"""A task that SIGKILLs its own process, among innocent ones, under a real ``huey_consumer``
with ``reliable=True``: the killer is dead-lettered after exactly ``max_deliveries``
deliveries, every innocent task completes and none is dead-lettered (see huey.reliable on
how a crash is charged). The test is the consumer's supervisor: it restarts a consumer the
killer took down (thread workers) and fails on any other exit. One cell per storage in
``BACKENDS`` and worker type; the measurements are printed (``-s``).
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest

CAP = 3
INNOCENTS = 50
KILLER_AT = 10  # innocents enqueued before the killer, so its first crash takes company
WORKERS = 4
LEASE = 1
DEADLINE = 120  # seconds for one cell, start to finish

APP = textwrap.dedent("""
    import os
    import signal
    import time

    from huey import FileHuey, PostgresHuey, RedisHuey, SqliteHuey

    env = globals().get('CONFIG') or os.environ
    opts = dict(reliable=True, lease=float(env['APP_LEASE']), max_deliveries=int(env['APP_CAP']))
    if env['APP_STORAGE'] == 'sqlite':
        huey = SqliteHuey(env['APP_NAME'], filename=env['APP_DB'], **opts)
    elif env['APP_STORAGE'] == 'file':
        huey = FileHuey(env['APP_NAME'], path=env['APP_DB'], **opts)
    elif env['APP_STORAGE'] == 'redis':
        huey = RedisHuey(env['APP_NAME'], port=int(env['APP_PORT']), **opts)
    elif env['APP_STORAGE'] == 'postgres':
        huey = PostgresHuey(env['APP_NAME'], dsn=env['APP_DSN'], **opts)
    LOG = env['APP_LOG']


    def _append(line):
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + '\\n').encode())
        finally:
            os.close(fd)


    def _innocent_running():
        with open(LOG) as fh:
            lines = fh.read().splitlines()
        started = {line[6:] for line in lines if line.startswith('start ')}
        return bool(started - {line[5:] for line in lines if line.startswith('done ')})


    @huey.task(context=True)
    def killer(task=None):
        _append('killer')
        # The first time, strike while an innocent task runs beside it (later deliveries
        # run alone and find none).
        deadline = time.monotonic() + 10
        while task.delivery.count == 1 and not _innocent_running():
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)


    @huey.task()
    def innocent(i):
        _append(f'start {i}')
        time.sleep(0.2)  # long enough to be running when the killer strikes
        _append(f'done {i}')
""")


# How each storage is set up: the fixture giving its server (or None) and the app settings
# for one cell. Postgres is one more entry here (and one more branch in APP).
BACKENDS = {
    'sqlite': (None, lambda cell, server: {'APP_DB': str(cell / 'queue.db')}),
    'file': (None, lambda cell, server: {'APP_DB': str(cell / 'files')}),
    'redis': ('redis_server', lambda cell, server: {'APP_PORT': str(server.port)}),
    'postgres': ('postgres_db', lambda cell, server: {'APP_DSN': server.dsn}),
}


class Cell:
    def __init__(self, path, backend, worker, server):
        self.path, self.backend, self.worker = path, backend, worker
        (path / 'killerapp.py').write_text(APP)
        self.log = path / 'tasks.log'
        self.env = dict(
            os.environ,
            APP_STORAGE=backend,
            APP_NAME=f'killer_{backend}_{worker}_{os.getpid()}',
            APP_LEASE=str(LEASE),
            APP_CAP=str(CAP),
            APP_LOG=str(self.log),
            PYTHONPATH=os.pathsep.join([str(path), os.environ.get('PYTHONPATH', '')]),
            **BACKENDS[backend][1](path, server),
        )
        module = types.ModuleType('killerapp')
        module.CONFIG = self.env
        exec(compile(APP, str(path / 'killerapp.py'), 'exec'), module.__dict__)
        self.app = module

    def start(self):
        out = open(self.path / 'consumer.log', 'ab')
        try:
            return subprocess.Popen(
                [sys.executable, '-m', 'huey.bin.huey_consumer', 'killerapp.huey']
                + ['-w', str(WORKERS), '-k', self.worker, '-s', '1', '-m', '0.1', '-c', '1'],
                cwd=self.path,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()

    def lines(self):
        try:
            return self.log.read_text().splitlines()
        except FileNotFoundError:
            return []

    def finished(self):
        """Every innocent done, one dead letter, nothing queued or in flight."""
        huey = self.app.huey
        done = {line for line in self.lines() if line.startswith('done ')}
        return (
            len(done) == INNOCENTS
            and huey.storage.dead_letter_count() == 1
            and huey.pending_count() == 0
            and huey.storage.inflight_items() == []
        )

    def consumer_log(self):
        return (self.path / 'consumer.log').read_text(errors='replace')[-4000:]


@pytest.mark.parametrize('worker', ['thread', 'process'])
@pytest.mark.parametrize('backend', sorted(BACKENDS))
def test_killer_is_dead_lettered_after_exactly_cap_deliveries(backend, worker, tmp_path, request):
    fixture = BACKENDS[backend][0]
    server = request.getfixturevalue(fixture) if fixture else None
    cell = Cell(tmp_path, backend, worker, server)
    app = cell.app
    app.huey.storage.flush_all()
    tasks = [app.innocent.s(i) for i in range(INNOCENTS)]
    tasks.insert(KILLER_AT, app.killer.s())
    app.huey.enqueue_many(tasks)

    exits = []  # how each consumer the supervisor restarted had ended
    deadline = time.monotonic() + DEADLINE
    proc = cell.start()
    try:
        while not cell.finished():
            assert time.monotonic() < deadline, (
                f'not finished in {DEADLINE}s: exits {exits}, dead letters '
                f'{app.huey.dead_letters()}, log {cell.lines()[-20:]}\n'
                f'{cell.consumer_log()}'
            )
            code = proc.poll()
            if code is not None:
                exits.append(code)
                assert code == -signal.SIGKILL and worker == 'thread', (
                    f'huey_consumer ended with {code} ({worker} workers)\n{cell.consumer_log()}'
                )
                proc = cell.start()
            time.sleep(0.05)  # polling to the deadline
        proc.send_signal(signal.SIGINT)
        final = proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    lines = cell.lines()
    killer_runs = lines.count('killer')
    done = [line for line in lines if line.startswith('done ')]
    starts = [line for line in lines if line.startswith('start ')]
    cut_off = {line for line in starts if starts.count(line) > 1}  # killed mid-run
    [letter] = app.huey.dead_letters()
    print(
        f'\n{backend}/{worker}: killer delivered {killer_runs} times, dead letter deliveries '
        f'{letter["deliveries"]}; innocents completed {len(set(done))}/{INNOCENTS} '
        f'({len(done)} runs, {len(cut_off)} cut off by a crash and rerun); consumer '
        f'restarts {len(exits)}'
    )
    assert final == 0, f'huey_consumer ended with {final} on SIGINT\n{cell.consumer_log()}'
    assert isinstance(app.huey.deserialize_task(letter['data']), app.killer.task_class)
    assert killer_runs == CAP and letter['deliveries'] == CAP, (killer_runs, letter)
    assert set(done) == {f'done {i}' for i in range(INNOCENTS)}
    assert exits == ([-signal.SIGKILL] * CAP if worker == 'thread' else [])
    if worker == 'thread':  # the case under test: a crash took innocent tasks along
        assert cut_off, lines
