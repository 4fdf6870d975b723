"""Three real ``huey_consumer`` processes share a Sqlite file or a Redis database and run the
same periodic tasks: each due minute runs once, and after all three stop for three minutes a
``catch_up='once'`` task runs once for them when new consumers start. A huey 3.5.4 consumer
joining two huey-rs ones still enqueues its own copies, and everything runs.

Time is simulated: the app's Huey reads the time from a file the test writes
(``_get_timestamp``, which the scheduler reads once per pass), and reports each reading by
its scheduler thread, so the test knows when every consumer has finished checking a minute
(its scheduler has read that minute in a later pass) before it looks at what ran.
"""

import datetime
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from huey import RedisHuey, SqliteHuey

from conftest import reference_python

START = datetime.datetime(2024, 5, 6, 12, 0)
MINUTE = datetime.timedelta(minutes=1)
CONSUMER_OPTIONS = ['-w', '1', '-s', '1', '-d', '0.01', '-m', '0.05']
WAIT = 60  # seconds to wait for what takes a second or two on an idle machine

APP = textwrap.dedent("""
    import datetime
    import os
    import threading

    from huey import RedisHuey, SqliteHuey, crontab

    STATE = os.environ['APP_STATE']


    def _write(path, text):
        with open(path + '.tmp', 'w') as fh:
            fh.write(text)
        os.replace(path + '.tmp', path)


    class SimulatedClock:
        passes = (None, 0)  # (the time the scheduler read, how many passes read it)

        def _get_timestamp(self):
            with open(os.path.join(STATE, 'clock')) as fh:
                now = datetime.datetime.fromisoformat(fh.read().strip())
            if threading.current_thread().name == 'Scheduler':
                seen, count = SimulatedClock.passes
                SimulatedClock.passes = (now, count + 1 if seen == now else 1)
                _write(
                    os.path.join(STATE, f'progress-{os.getpid()}'),
                    f'{now.isoformat()} {SimulatedClock.passes[1]}',
                )
            return now


    if os.environ['APP_STORAGE'] == 'sqlite':
        class App(SimulatedClock, SqliteHuey):
            pass

        huey = App('procs', filename=os.path.join(STATE, 'huey.db'))
    else:
        class App(SimulatedClock, RedisHuey):
            pass

        huey = App('procs', port=int(os.environ['APP_PORT']))


    def _ran(name):
        line = f'{name} {huey._get_timestamp():%H:%M} {os.getpid()}\\n'
        fd = os.open(os.path.join(STATE, 'history'), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


    @huey.periodic_task(crontab(minute='*'))
    def every_minute():
        _ran('every_minute')


    @huey.periodic_task(crontab(minute='*/2'))
    def every_two():
        _ran('every_two')


    @huey.periodic_task(crontab(minute='*'), catch_up='once')
    def once():
        _ran('once')


    if os.environ.get('APP_REFERENCE'):
        # huey 3.5.4's consumer checks periodic tasks when it starts and then every 60 real
        # seconds, whatever the simulated clock says: here only when it starts, so that what
        # it enqueues does not depend on how fast the test runs.
        from huey.consumer import Scheduler

        Scheduler.periodic_task_seconds = 3600
""")


class Fleet:
    def __init__(self, state, storage, port):
        self.state = state
        self.env = dict(
            os.environ,
            APP_STATE=str(state),
            APP_STORAGE=storage,
            APP_PORT=str(port),
            PYTHONPATH=os.pathsep.join([str(state), os.environ.get('PYTHONPATH', '')]),
        )
        if storage == 'sqlite':
            self.huey = SqliteHuey('procs', filename=str(state / 'huey.db'))
        else:
            self.huey = RedisHuey('procs', port=port)
        self.procs = []
        self.now = START
        self.set_clock(START)

    def set_clock(self, now):
        self.now = now
        (self.state / 'clock.tmp').write_text(now.isoformat())
        os.replace(self.state / 'clock.tmp', self.state / 'clock')

    def start(self, n=3, reference=0):
        """Start ``n`` huey-rs consumers and ``reference`` huey 3.5.4 ones."""
        # huey 3.5.4 must import its own package: only the app's directory on its path.
        reference_env = dict(self.env, APP_REFERENCE='1', PYTHONPATH=str(self.state))
        kinds = [(sys.executable, self.env)] * n
        if reference:
            kinds += [(reference_python(), reference_env)] * reference
        for python, env in kinds:
            log = open(self.state / 'consumers.log', 'ab')
            self.procs.append(
                subprocess.Popen(
                    [
                        python,
                        '-m',
                        'huey.bin.huey_consumer',
                        'periodicapp.huey',
                        *CONSUMER_OPTIONS,
                    ],
                    cwd=self.state,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()

    def stop(self):
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            assert proc.returncode == 0, self.log()
        self.procs = []

    def kill(self):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log(self):
        return (self.state / 'consumers.log').read_text(errors='replace')[-5000:]

    def history(self):
        try:
            lines = (self.state / 'history').read_text().splitlines()
        except FileNotFoundError:
            return []
        return [tuple(line.split()[:2]) for line in lines]

    def wait_until(self, predicate, what):
        deadline = time.monotonic() + WAIT
        while not predicate():
            for proc in self.procs:
                assert proc.poll() is None, f'a consumer exited while {what}:\n{self.log()}'
            assert time.monotonic() < deadline, f'timed out while {what}:\n{self.log()}'
            time.sleep(0.05)

    def checked(self, pid):
        """Whether consumer ``pid`` has finished checking the clock's minute: its scheduler
        read that minute a third time (huey-rs reads the clock once a pass; huey 3.5.4 twice in
        a pass that checks periodic tasks, once in others), so a pass that checked and
        enqueued has ended."""
        try:
            text = (self.state / f'progress-{pid}').read_text()
        except FileNotFoundError:
            return False
        at, count = text.split()
        return datetime.datetime.fromisoformat(at) == self.now and int(count) >= 3

    def minute(self, expected_runs):
        """Let every consumer check the clock's minute, wait for ``expected_runs`` more
        runs, then move the clock on a minute."""
        ran_before = len(self.history())
        self.wait_until(
            lambda: all(self.checked(proc.pid) for proc in self.procs),
            f'waiting for every consumer to check {self.now}',
        )
        self.wait_until(
            lambda: (
                len(self.history()) >= ran_before + expected_runs
                and self.huey.pending_count() == 0
            ),
            f'waiting for the runs of {self.now}',
        )
        self.set_clock(self.now + MINUTE)


@pytest.mark.parametrize('storage', ['sqlite', 'redis'])
def test_three_consumer_processes_run_each_periodic_minute_once(storage, tmp_path, request):
    port = request.getfixturevalue('redis_db').port if storage == 'redis' else 0
    (tmp_path / 'periodicapp.py').write_text(APP)
    fleet = Fleet(tmp_path, storage, port)
    try:
        fleet.start()
        for minute in range(5):  # 12:00-12:04
            fleet.minute(expected_runs=3 if minute % 2 == 0 else 2)
        fleet.stop()
        fleet.set_clock(fleet.now + 3 * MINUTE)  # 12:05-12:07: no consumer runs
        fleet.start()
        fleet.minute(expected_runs=4)  # 12:08: every_minute, every_two, once twice
        fleet.minute(expected_runs=2)  # 12:09
        fleet.stop()
    finally:
        fleet.kill()
    history = fleet.history()
    assert sorted(history) == sorted(
        [('every_minute', f'12:0{m}') for m in (0, 1, 2, 3, 4, 8, 9)]
        + [('every_two', f'12:0{m}') for m in (0, 2, 4, 8)]
        + [('once', f'12:0{m}') for m in (0, 1, 2, 3, 4, 8, 8, 9)]
    ), fleet.log()
    assert fleet.huey.pending_count() == 0


@pytest.mark.parametrize('storage', ['sqlite', 'redis'])
def test_a_huey_3_5_4_consumer_in_the_fleet_keeps_running_its_own_copies(
    storage, tmp_path, request
):
    """huey 3.5.4 knows nothing of claims: each periodic check it makes enqueues its own copy
    of that minute's runs, as it always did, beside the one the huey-rs consumers agree on;
    neither kind trips over what the other stores."""
    port = request.getfixturevalue('redis_db').port if storage == 'redis' else 0
    (tmp_path / 'periodicapp.py').write_text(APP)
    fleet = Fleet(tmp_path, storage, port)
    try:
        fleet.start(n=2, reference=1)
        for expected_runs in (6, 2, 3):  # 12:00-12:02
            fleet.minute(expected_runs)
        fleet.stop()
    finally:
        fleet.kill()
    # 12:00 twice: the huey 3.5.4 consumer's own copy, from its check when it started.
    due = {'every_minute': [0, 0, 1, 2], 'every_two': [0, 0, 2], 'once': [0, 0, 1, 2]}
    expected = [(name, f'12:0{m}') for name, minutes in due.items() for m in minutes]
    assert sorted(fleet.history()) == sorted(expected), fleet.log()
    assert fleet.huey.pending_count() == 0
