"""The app that the crash matrix and the chaos test kill: a ``record`` task that appends its
argument to a history file (the cells' independent books), a dead-letter signal handler that
appends ``dead``, and a ``Cell``: one storage x worker type x mode, with the consumer it
starts, kills and waits on."""

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

WORKERS = 2


def held(worker):
    """The most tasks one killed consumer can lose in default mode: one per worker running,
    plus its prefetch buffer (huey.prefetch): prefetch - 1 per process, prefetch defaulting
    to one more than the thread or greenlet workers and to 1 for process workers."""
    return WORKERS if worker == 'process' else 2 * WORKERS


LEASE = 1
CAP = 3
DRAIN_DEADLINE = 60  # seconds; a cell that has not drained by then fails

APP = textwrap.dedent("""
    import os
    import time

    from huey import FileHuey, PostgresHuey, RedisHuey, SqliteHuey
    from huey.api import PriorityRedisHuey, RedisExpireHuey
    from huey.signals import SIGNAL_DEAD_LETTER

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
        redis_class = {'redis': RedisHuey, 'priority_redis': PriorityRedisHuey,
                       'redis_expire': RedisExpireHuey}[env['APP_STORAGE']]
        huey = redis_class(env['APP_NAME'], port=int(env['APP_PORT']), **opts)
    HISTORY = env['APP_HISTORY']
    KILL_IN_BODY = env.get('APP_KILL_IN_BODY')  # the marker file of the in_task_body point


    def _append(line):
        fd = os.open(HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + '\\n').encode())
        finally:
            os.close(fd)


    @huey.task()
    def record(i):
        time.sleep(0.02)
        if KILL_IN_BODY and not os.path.exists(KILL_IN_BODY):
            with open(KILL_IN_BODY, 'a') as fh:
                fh.write(f'{os.getpid()} in_task_body\\n')
            os.kill(os.getpid(), 9)  # SIGKILL, before the side effect
        _append(str(i))
        return i


    @huey.signal(SIGNAL_DEAD_LETTER)
    def dead_lettered(signal, task, reason, letter_id):
        _append('dead')


    @huey.task()
    def chord_done(values):
        _append('chord:' + ','.join(str(v) for v in sorted(values)))
""")


GEVENT_CONSUMER = (
    'from gevent import monkey; monkey.patch_all()\n'
    'import sys\n'
    'from huey.bin.huey_consumer import consumer_main\n'
    'sys.exit(consumer_main())'
)


class Cell:
    """One run: storage x worker type x crash point x mode."""

    def __init__(self, app_dir, redis_port, storage, worker, point, reliable, pg_dsn='', cap=CAP):
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
            APP_CAP=str(cap),
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
        if crashpoint == 'in_task_body':
            env.update(APP_KILL_IN_BODY=str(self.marker))
        elif crashpoint:
            env.update(HUEY_CRASHPOINT=crashpoint, HUEY_CRASHPOINT_FILE=str(self.marker))
        log = open(self.dir / f'{self.env["APP_NAME"]}.log', 'ab')
        # Greenlet workers run as gevent's users run them: monkey-patched before anything
        # else is imported (huey_consumer warns when that was not done).
        entry = (
            ['-c', GEVENT_CONSUMER]
            if self.worker == 'greenlet'
            else ['-m', 'huey.bin.huey_consumer']
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                *entry,
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
            self.stop(proc)
        return expected

    def stop(self, proc):
        """A graceful stop (SIGINT), and a kill if it takes longer than 10 seconds."""
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill(proc)

    def wait_until_drained(self, huey, timeout=DRAIN_DEADLINE):
        """Until queue, schedule and in-flight area are empty and the history has not
        grown for half a second (a redelivered task may still be running); not drained by
        ``timeout`` is a failure."""
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
        raise AssertionError(
            f'{self} did not drain in {timeout}s: {huey.scheduled_count()} scheduled, '
            f'{huey.pending_count()} queued, in flight '
            f'{len(huey.storage.inflight_items()) if self.reliable else "-"}'
        )

    def __str__(self):
        mode = 'reliable' if self.reliable else 'default'
        return f'{self.storage}/{self.worker}/{self.point}/{mode}'


def tally(cell, expected):
    """The cell's books from its history alone: the tasks' own records and one ``dead`` line
    per dead-letter signal (not the storage's count)."""
    history = cell.history()
    runs = collections.Counter(history)
    done = set(runs) & expected
    dead = runs['dead']
    counts = {i: runs[i] for i in done}
    return {
        'enqueued': len(expected),
        'completed': len(done),
        'duplicated': sum(c - 1 for c in counts.values()),
        'max_runs': max(counts.values(), default=0),
        'lost': len(expected) - len(done) - dead,
        'dead': dead,
    }


def write_app(path):
    (path / 'crashapp.py').write_text(APP)
    return path


COUNTS = ('enqueued', 'completed', 'duplicated', 'lost', 'dead')


def report(rows, path, broken, title=''):
    """Print the books of ``(cell, tally)`` rows, one line per cell (named as
    storage/worker/point/mode), write them to ``path``, and fail naming every promise
    ``broken(cell, tally)`` finds broken; ``title`` heads the table and the failure."""
    header = f'{"cell":44} ' + ' '.join(f'{c:>10}' for c in COUNTS)
    lines = [title] if title else []
    lines += [header, '-' * len(header)]
    for cell, r in rows:
        counts = ' '.join(f'{r[c]:>10}' for c in COUNTS)
        lines.append(f'{str(cell):44} {counts}')
    table = '\n'.join(lines)
    print('\n' + table)
    path.write_text(table + '\n')
    failures = [f'{cell}: {problem} {r}' for cell, r in rows for problem in broken(cell, r)]
    assert not failures, '\n'.join(([title] if title else []) + failures)
