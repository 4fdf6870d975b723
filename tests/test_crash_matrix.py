"""Crash matrix: a real ``huey_consumer`` is killed at each crash point (``HUEY_CRASHPOINT``,
``os._exit(137)``), a fresh consumer is started, and the history written by the tasks shows
what was lost or run twice. Sqlite, File, Redis and Postgres, thread and process workers,
reliable and default mode. Cells run concurrently (each its own database file, directory or
queue name)
to keep the file well under three minutes. The table is printed (``-s``) and written to the
pytest tmp dir.
"""

import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest

N = int(os.environ.get('HUEY_CRASH_MATRIX_TASKS', '20'))  # make crash-matrix raises it
WORKERS = 2
LEASE = 1
CAP = 3
POINTS = ['after_dequeue', 'mid_task', 'after_result_before_ack', 'mid_schedule_move']

APP = textwrap.dedent("""
    import os
    import time

    from huey import FileHuey, PostgresHuey, RedisHuey, SqliteHuey

    env = globals().get('CONFIG') or os.environ
    opts = dict(reliable=env['APP_RELIABLE'] == '1', lease=float(env['APP_LEASE']),
                max_deliveries=int(env['APP_CAP']))
    if env['APP_STORAGE'] == 'sqlite':
        huey = SqliteHuey(env['APP_NAME'], filename=env['APP_DB'], **opts)
    elif env['APP_STORAGE'] == 'file':
        huey = FileHuey(env['APP_NAME'], path=env['APP_DB'] + '.files', **opts)
    elif env['APP_STORAGE'] == 'postgres':
        huey = PostgresHuey(env['APP_NAME'], dsn=env['APP_PG_DSN'], **opts)
    else:
        huey = RedisHuey(env['APP_NAME'], port=int(env['APP_PORT']), **opts)
    HISTORY = env['APP_HISTORY']


    def _append(line):
        fd = os.open(HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + '\\n').encode())
        finally:
            os.close(fd)


    @huey.task()
    def record(i):
        time.sleep(0.02)
        _append(str(i))
        return i


    @huey.task()
    def chord_done(values):
        _append('chord:' + ','.join(str(v) for v in sorted(values)))
""")


@pytest.fixture(scope='module')
def app_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp('crashapp')
    (path / 'crashapp.py').write_text(APP)
    return path


class Cell:
    """One run: storage x worker type x crash point x mode."""

    def __init__(self, app_dir, redis_port, storage, worker, point, reliable, pg_dsn=''):
        self.storage, self.worker, self.point, self.reliable = storage, worker, point, reliable
        name = f'{storage}-{worker}-{point}-{int(reliable)}'
        self.dir = app_dir
        self.env = dict(
            os.environ,
            APP_STORAGE=storage,
            APP_NAME=name.replace('-', '_'),
            APP_DB=str(app_dir / f'{name}.db'),
            APP_PORT=str(redis_port),
            APP_PG_DSN=pg_dsn,
            APP_RELIABLE='1' if reliable else '0',
            APP_LEASE=str(LEASE),
            APP_CAP=str(CAP),
            APP_HISTORY=str(app_dir / f'{name}.history'),
            PYTHONPATH=os.pathsep.join([str(app_dir), os.environ.get('PYTHONPATH', '')]),
        )
        self.marker = app_dir / f'{name}.crashed'
        self.history_path = app_dir / f'{name}.history'

    def huey(self):
        """The app module built in this process with this cell's settings."""
        module = types.ModuleType('crashapp')
        module.CONFIG = self.env
        exec(compile(APP, str(self.dir / 'crashapp.py'), 'exec'), module.__dict__)
        return module

    def start(self, crashpoint=None):
        env = dict(self.env)
        env.pop('HUEY_CRASHPOINT', None)
        if crashpoint:
            env.update(HUEY_CRASHPOINT=crashpoint, HUEY_CRASHPOINT_FILE=str(self.marker))
        log = open(self.dir / f'{self.env["APP_NAME"]}.log', 'ab')
        proc = subprocess.Popen(
            [
                sys.executable,
                '-m',
                'huey.bin.huey_consumer',
                'crashapp.huey',
                '-w',
                str(WORKERS),
                '-k',
                self.worker,
                '-s',
                '1',
                '-m',
                '0.1',
                '-C',
            ],
            cwd=self.dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return proc

    def history(self):
        try:
            return self.history_path.read_text().split()
        except FileNotFoundError:
            return []

    @staticmethod
    def kill(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)

    def run(self, enqueue):
        app = self.huey()
        app.huey.storage.flush_all()
        expected = enqueue(app)
        proc = self.start(self.point)
        deadline = time.monotonic() + 20
        while not self.marker.exists():
            assert time.monotonic() < deadline, f'{self} never reached {self.point}'
            time.sleep(0.02)
        self.kill(proc)  # the crashed process, and in process mode its parent and siblings
        proc = self.start()
        try:
            self.wait_until_drained(app.huey)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill(proc)
        return expected

    def wait_until_drained(self, huey, timeout=20):
        """Until queue, schedule and in-flight area are empty and the history has not
        grown for half a second (a redelivered task may still be running)."""
        deadline = time.monotonic() + timeout
        last, stable_since = None, time.monotonic()
        while time.monotonic() < deadline:
            history = len(self.history())
            if history != last:
                last, stable_since = history, time.monotonic()
            # Looked at in the order messages flow (schedule, queue, in flight), so one
            # moving on between two looks is not missed in both places.
            idle = (
                huey.scheduled_count() == 0
                and huey.pending_count() == 0
                and not (self.reliable and huey.storage.inflight_items())
            )
            if idle and time.monotonic() - stable_since > 0.5:
                return
            time.sleep(0.05)

    def __str__(self):
        mode = 'reliable' if self.reliable else 'default'
        return f'{self.storage}/{self.worker}/{self.point}/{mode}'


def _enqueue_tasks(point):
    def enqueue(app):
        if point != 'mid_schedule_move':
            app.huey.enqueue_many([app.record.s(i) for i in range(N)])
        else:
            now = app.huey._get_timestamp()
            for i in range(N):
                task = app.record.s(i)
                task.eta = now
                app.huey.add_schedule(task)
        return {str(i) for i in range(N)}

    return enqueue


def _tally(cell, expected):
    history = cell.history()
    done = set(history) & expected
    dead = cell.huey().huey.storage.dead_letter_count()
    counts = {i: history.count(i) for i in done}
    return {
        'enqueued': len(expected),
        'completed': len(done),
        'duplicated': sum(c - 1 for c in counts.values()),
        'max_runs': max(counts.values(), default=0),
        'lost': len(expected) - len(done) - dead,
        'dead': dead,
    }


def test_crash_matrix(app_dir, redis_server, postgres_server, tmp_path_factory):
    cells = [
        Cell(app_dir, redis_server.port, storage, worker, point, reliable, postgres_server.dsn)
        for storage in ('sqlite', 'file', 'redis', 'postgres')
        for worker in ('thread', 'process')
        for point in POINTS
        for reliable in (True, False)
    ]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {pool.submit(cell.run, _enqueue_tasks(cell.point)): cell for cell in cells}
        rows = []
        for future in concurrent.futures.as_completed(futures):
            cell = futures[future]
            rows.append((cell, _tally(cell, future.result())))
    rows.sort(key=lambda row: str(row[0]))
    header = (
        f'{"storage":8} {"worker":8} {"crash point":24} {"mode":8} {"enqueued":>8} '
        f'{"completed":>9} {"duplicated":>10} {"lost":>5} {"dead":>5}'
    )
    lines = [header, '-' * len(header)]
    for cell, r in rows:
        lines.append(
            f'{cell.storage:8} {cell.worker:8} {cell.point:24} '
            f'{"reliable" if cell.reliable else "default":8} {r["enqueued"]:>8} '
            f'{r["completed"]:>9} {r["duplicated"]:>10} {r["lost"]:>5} '
            f'{r["dead"]:>5}'
        )
    table = '\n'.join(lines)
    print('\n' + table)
    (tmp_path_factory.getbasetemp() / 'crash_matrix.txt').write_text(table + '\n')
    for cell, r in rows:
        if cell.reliable:
            assert r['lost'] == 0, f'{cell} lost tasks: {r}'
            assert r['max_runs'] <= CAP, f'{cell} ran a task more than {CAP} times: {r}'
        else:
            # huey's at-most-once: only the messages popped by the killed process are lost.
            assert r['lost'] <= WORKERS, f'{cell} lost more than the tasks in flight: {r}'
            assert r['duplicated'] == 0, f'{cell} ran a task twice in default mode: {r}'


@pytest.mark.parametrize('storage', ['sqlite', 'file', 'redis', 'postgres'])
def test_chord_fires_after_its_members_consumer_is_killed(
    app_dir, redis_server, postgres_server, storage
):
    cell = Cell(
        app_dir, redis_server.port, storage, 'thread', 'mid_task', True, postgres_server.dsn
    )
    cell.env['APP_NAME'] += '_chord'

    def enqueue(app):
        from huey import chord

        app.huey.enqueue(chord([app.record.s(i) for i in range(5)], app.chord_done.s()))
        return {'chord:0,1,2,3,4'}

    expected = cell.run(enqueue)
    history = cell.history()
    assert expected <= set(history), history
    assert history.count('chord:0,1,2,3,4') == 1, history
