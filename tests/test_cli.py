"""The ``huey_consumer`` command run as a real subprocess against a small app module written
into a temporary directory: options, error reporting, start-up log, signals, health checks,
and (with SqliteHuey) a task enqueued here and executed by the subprocess.
"""

import importlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

WAIT = 15  # seconds to wait for something that should take well under one

COMMAND = [sys.executable, '-m', 'huey.bin.huey_consumer']
SCRIPT = Path(sys.executable).with_name('huey_consumer')

APP = """\
import os
import signal

import huey as huey_package
from huey import crontab

STORAGE = os.environ.get('CLI_TEST_STORAGE', 'memory')
if STORAGE == 'sqlite':
    huey = huey_package.SqliteHuey('cli-test', filename=os.environ['CLI_TEST_DB'])
else:
    huey = huey_package.MemoryHuey('cli-test')
not_a_huey = {'name': 'a dict is not a Huey'}


@huey.task()
def add(a, b):
    return a + b


@huey.task()
def hold(fifo):
    print('hold-started', flush=True)
    with open(fifo) as f:  # blocks until the test opens the FIFO for writing
        f.read()
    print('hold-finished', flush=True)
    return 'held'


@huey.periodic_task(crontab(minute='0', hour='0'))
def nightly():
    pass


@huey.on_startup()
def announce():
    print('worker-up', os.getpid(), flush=True)  # stdout: not subject to -q or -l


if os.environ.get('CLI_TEST_SIGINT_AT_STARTUP'):
    @huey.on_startup()
    def interrupt_consumer():
        os.kill(os.getpid(), signal.SIGINT)  # while the consumer is still starting


if os.environ.get('CLI_TEST_HOLD'):
    hold(os.environ['CLI_TEST_HOLD'])  # enqueued at import, in the consumer's own queue
"""


class ConsumerProcess:
    """A consumer subprocess whose combined output is collected line by line."""

    def __init__(self, cwd, *args, env=None, command=None):
        self.proc = subprocess.Popen(
            [*(command or COMMAND), *args],
            cwd=cwd,
            env=env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip('\n'))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern, timeout=WAIT):
        """The regex match of the first output line matching ``pattern``."""
        regex = re.compile(pattern)

        def find():
            return next((m for m in map(regex.search, self.lines) if m), None)

        with self._cond:
            found = self._cond.wait_for(lambda: find() or not self._reader.is_alive(), timeout)
            match = find()
        assert match, f'{pattern!r} not seen (alive={found is not None}):\n{self.output}'
        return match

    def wait_count(self, pattern, n, timeout=WAIT):
        """Wait until ``n`` output lines match ``pattern``."""
        with self._cond:  # a Condition's lock is reentrant: matches() may take it again
            self._cond.wait_for(
                lambda: len(self.matches(pattern)) >= n or not self._reader.is_alive(), timeout
            )
            assert len(self.matches(pattern)) >= n, self.output

    def matches(self, pattern):
        with self._cond:
            return [m for m in map(re.compile(pattern).search, self.lines) if m]

    @property
    def output(self):
        with self._cond:
            return '\n'.join(self.lines)

    def send(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=WAIT):
        code = self.proc.wait(timeout)
        self._reader.join(WAIT)
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(WAIT)


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / 'app.py').write_text(APP)
    return tmp_path


@pytest.fixture
def consumers():
    started = []
    yield started
    for consumer in started:
        consumer.kill()


@pytest.fixture
def start(app_dir, consumers):
    def start(*args, env=None, command=None):
        full_env = dict(os.environ, **(env or {}))
        consumer = ConsumerProcess(app_dir, *args, env=full_env, command=command)
        consumers.append(consumer)
        return consumer

    return start


def run(app_dir, *args, command=None):
    return subprocess.run(
        [*(command or COMMAND), *args],
        cwd=app_dir,
        text=True,
        capture_output=True,
        timeout=WAIT,
        stdin=subprocess.DEVNULL,
    )


# -- options -----------------------------------------------------------------------------------

OPTIONS = {
    '-w': '--workers',
    '-k': '--worker-type',
    '-d': '--delay',
    '-m': '--max-delay',
    '-b': '--backoff',
    '-c': '--health-check-interval',
    '-C': '--disable-health-check',
    '-f': '--flush-locks',
    '-L': '--extra-locks',
    '-M': '--max-tasks',
    '-p': '--prefetch',
    '-t': '--shutdown-timeout',
    '-g': '--graceful-signal',
    '-s': '--scheduler-interval',
    '-n': '--no-periodic',
    '-l': '--logfile',
    '-v': '--verbose',
    '-q': '--quiet',
    '-S': '--simple',
}


@pytest.mark.parametrize('command', [COMMAND, [str(SCRIPT)]], ids=['module', 'script'])
def test_help_lists_every_option(app_dir, command):
    done = run(app_dir, '--help', command=command)
    assert done.returncode == 0
    assert 'path.to.huey_instance' in done.stdout
    for short, long in OPTIONS.items():
        assert re.search(rf'^\s+{short}( \S+)?, {long}\b', done.stdout, re.M), (short, long)


def one_line_error(done):
    assert done.returncode != 0
    assert 'Traceback' not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_missing_import_path_is_an_error(app_dir):
    done = run(app_dir)
    assert done.returncode != 0
    assert 'Traceback' not in done.stderr
    assert 'import path' in done.stderr


@pytest.mark.parametrize('path', ['no_such_module.huey', 'app.no_such_attribute', 'app'])
def test_bad_import_path_is_a_one_line_error(app_dir, path):
    line = one_line_error(run(app_dir, path))
    assert path.split('.')[-1] in line or path in line


def test_an_object_that_is_not_huey_is_a_one_line_error(app_dir):
    line = one_line_error(run(app_dir, 'app.not_a_huey'))
    assert 'app.not_a_huey' in line
    assert 'Huey' in line


def test_an_app_that_fails_to_import_shows_the_users_traceback(app_dir):
    # As huey does: the frames inside the user's code, with file and line, not only the
    # exception's message (and none of the consumer's own import machinery).
    (app_dir / 'broken.py').write_text('import broken_helper\nhuey = None\n')
    (app_dir / 'broken_helper.py').write_text(
        'SETTINGS = {}\n\n\ndef load():\n    return SETTINGS["missing"]\n\n\nvalue = load()\n'
    )
    done = run(app_dir, 'broken.huey')
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert "Error importing broken.huey: KeyError: 'missing'" in lines[0]
    assert lines[1] == 'Traceback (most recent call last):'
    frames = re.findall(r'File "(.+?)", line (\d+), in (\S+)', done.stderr)
    assert [(os.path.basename(f), int(n), fn) for f, n, fn in frames] == [
        ('broken.py', 1, '<module>'),
        ('broken_helper.py', 8, '<module>'),
        ('broken_helper.py', 5, 'load'),
    ]
    assert lines[-1] == "KeyError: 'missing'"


@pytest.mark.parametrize(
    'args, mentions',
    [
        (['-s', '7'], 'factor of 60'),
        (['-s', '90'], 'scheduler'),
        (['-s', '0'], 'scheduler'),
        (['-w', '0'], 'workers'),
        (['-p', '0'], 'prefetch'),
        (['-b', '0.5'], 'backoff'),
    ],
)
def test_invalid_option_values_are_one_line_errors(app_dir, args, mentions):
    line = one_line_error(run(app_dir, *args, 'app.huey'))
    assert mentions in line.lower()


@pytest.mark.parametrize(
    'args', [['-w', 'two'], ['-k', 'fiber'], ['-g', 'HUP'], ['--no-such-option']]
)
def test_malformed_options_are_rejected_without_traceback(app_dir, args):
    done = run(app_dir, *args, 'app.huey')
    assert done.returncode != 0
    assert 'Traceback' not in done.stderr
    assert 'error' in done.stderr.lower()


# -- running -----------------------------------------------------------------------------------


def test_startup_log_lists_registered_tasks_and_sigint_exits_cleanly(start):
    consumer = start('app.huey', '-w', '2')
    consumer.wait_for(r'The following commands are available')
    for name in ('add', 'hold', 'nightly'):
        consumer.wait_for(rf'^\+ app\.{name}$')
    consumer.wait_for(r'worker-up')
    assert consumer.matches(r'started with 2 thread')
    consumer.send(signal.SIGINT)
    assert consumer.wait() == 0
    assert 'Traceback' not in consumer.output
    assert consumer.matches(r'Received SIGINT|Shutting down gracefully')


def test_logfile_and_quiet_options(start, app_dir):
    logfile = app_dir / 'consumer.log'
    consumer = start('app.huey', '-l', str(logfile), '-S')
    consumer.wait_for(r'worker-up')
    consumer.send(signal.SIGINT)
    assert consumer.wait() == 0
    assert consumer.output.splitlines() == [consumer.lines[0]]  # only the app's own print
    text = logfile.read_text()
    assert '+ app.add' in text
    # -S: "HH:MM:SS message", no level or logger name
    assert re.search(r'^\d\d:\d\d:\d\d Huey consumer started', text, re.M)

    quiet = start('app.huey', '-q')
    quiet.wait_for(r'worker-up')
    quiet.send(signal.SIGINT)
    assert quiet.wait() == 0
    assert not quiet.matches(r'The following commands|Huey consumer started')

    verbose = start('app.huey', '-v')
    verbose.wait_for(r'worker-up')
    verbose.wait_for(r'DEBUG')
    verbose.send(signal.SIGINT)
    assert verbose.wait() == 0


def test_signal_during_startup_is_handled_gracefully(start):
    consumer = start('app.huey', env={'CLI_TEST_SIGINT_AT_STARTUP': '1'})
    assert consumer.wait() == 0
    assert 'Traceback' not in consumer.output
    consumer.wait_for(r'Received SIGINT')


def test_sighup_restarts_the_consumer_in_place(start):
    consumer = start('app.huey', '-S')
    first = consumer.wait_for(r'worker-up (\d+)').group(1)
    consumer.send(signal.SIGHUP)
    consumer.wait_for(r'Consumer will restart')
    consumer.wait_count(r'worker-up', 2)
    assert len(consumer.matches(r'Huey consumer started')) == 2
    assert consumer.matches(r'worker-up (\d+)')[-1].group(1) == first  # exec: same pid
    consumer.send(signal.SIGINT)
    assert consumer.wait() == 0


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / 'release.fifo'
    os.mkfifo(path)
    return path


def release(fifo):
    with open(fifo, 'w') as f:
        f.write('go')


@pytest.mark.parametrize(
    'graceful_args, signum',
    [
        ([], signal.SIGINT),
        (['-g', 'TERM'], signal.SIGTERM),
    ],
)
def test_graceful_signal_lets_the_running_task_finish(start, fifo, graceful_args, signum):
    consumer = start('app.huey', *graceful_args, env={'CLI_TEST_HOLD': str(fifo)})
    consumer.wait_for(r'hold-started')
    consumer.send(signum)
    consumer.wait_for(r'Shutting down gracefully')
    with pytest.raises(subprocess.TimeoutExpired):
        consumer.proc.wait(0.3)  # still waiting for the task
    release(fifo)
    assert consumer.wait() == 0
    consumer.wait_for(r'hold-finished')
    assert not consumer.matches(r'did not finish')
    assert 'Traceback' not in consumer.output


@pytest.mark.parametrize('worker_type', ['thread', 'process'])
def test_interrupt_signal_does_not_wait_for_the_running_task(start, fifo, worker_type):
    consumer = start('app.huey', '-k', worker_type, env={'CLI_TEST_HOLD': str(fifo)})
    consumer.wait_for(r'hold-started')
    consumer.send(signal.SIGTERM)  # with the default -g INT, TERM interrupts
    assert consumer.wait() == 0
    assert not consumer.matches(r'hold-finished')
    if worker_type == 'process':
        consumer.wait_for(r'did not finish')  # the child's task got KeyboardInterrupt


def test_killed_process_worker_is_restarted_by_the_health_check(start):
    consumer = start('app.huey', '-k', 'process', '-w', '1', '-c', '0.1')
    first = int(consumer.wait_for(r'worker-up (\d+)').group(1))
    assert first != consumer.proc.pid
    os.kill(first, signal.SIGKILL)
    consumer.wait_for(r'Worker 1 died, restarting')
    second = int(consumer.wait_for(rf'worker-up (?!{first}\b)(\d+)').group(1))
    assert second not in (first, consumer.proc.pid)
    os.kill(second, 0)  # the replacement is alive
    consumer.send(signal.SIGINT)
    assert consumer.wait() == 0


# -- a queue shared with the consumer subprocess -------------------------------------------------


@pytest.fixture
def shared_app(app_dir, monkeypatch):
    """The app module imported here too (as ``app``, so task names match), on a sqlite
    file the consumer subprocess also opens."""
    db = str(app_dir / f'queue-{uuid.uuid4().hex}.db')
    monkeypatch.setenv('CLI_TEST_STORAGE', 'sqlite')
    monkeypatch.setenv('CLI_TEST_DB', db)
    monkeypatch.syspath_prepend(str(app_dir))
    sys.modules.pop('app', None)
    module = importlib.import_module('app')
    yield module
    sys.modules.pop('app', None)


@pytest.mark.parametrize('worker_type', ['thread', 'process', 'greenlet'])
def test_task_enqueued_here_is_executed_by_the_consumer(start, shared_app, worker_type):
    consumer = start('app.huey', '-k', worker_type, '-w', '2')
    results = [shared_app.add(n, n) for n in range(5)]
    assert [r.get(blocking=True, timeout=WAIT) for r in results] == [0, 2, 4, 6, 8]
    consumer.send(signal.SIGINT)
    assert consumer.wait() == 0
    assert len(consumer.matches(r'app\.add: \S+ executed in')) == 5


def test_scheduled_task_enqueued_here_runs_after_its_delay(start, shared_app):
    consumer = start('app.huey')
    consumer.wait_for(r'worker-up')
    before = time.monotonic()
    result = shared_app.add.schedule((20, 22), delay=1)
    assert result.get(blocking=True, timeout=WAIT) == 42
    assert time.monotonic() - before >= 1
    consumer.send(signal.SIGINT)
    assert consumer.wait() == 0
