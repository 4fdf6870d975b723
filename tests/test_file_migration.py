"""FileHuey takes over huey 3.5.4's directory, and huey 3.5.4 cannot eat huey-rs's.

huey 3.5.4 runs in its own virtualenv (conftest.reference_python); both sides import the same
small app module written into the test's directory.
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

from conftest import reference_python

from huey.storage import FileStorage

APP = """
import os
from huey import FileHuey

huey = FileHuey('mig', path=os.environ['MIG_PATH'])

@huey.task()
def record(i):
    fd = os.open(os.environ['MIG_LOG'], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b'%d\\n' % i)
    os.close(fd)
    return i
"""


def setup_app(tmp_path):
    (tmp_path / 'migapp.py').write_text(textwrap.dedent(APP))
    env = dict(
        os.environ,
        MIG_PATH=str(tmp_path / 'store'),
        MIG_LOG=str(tmp_path / 'ran.log'),
        PYTHONPATH=str(tmp_path),
    )
    return env


def run(python, code, env, cwd):
    proc = subprocess.run(
        [python, '-c', textwrap.dedent(code)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ran(tmp_path):
    try:
        with open(tmp_path / 'ran.log') as f:
            return [int(line) for line in f]
    except FileNotFoundError:
        return []


def wait_for(predicate, timeout=120, proc=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out'
        if proc is not None:
            assert proc.poll() is None, 'consumer exited'
        time.sleep(0.05)


def start_consumer(python, env, cwd, log):
    return subprocess.Popen(
        [python, '-m', 'huey.bin.huey_consumer', 'migapp.huey', '-w', '4', '-d', '0.05'],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(proc):
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) >= 0


def test_a_huey_354_directory_is_taken_over_exactly_once(tmp_path):
    env = setup_app(tmp_path)
    run(
        reference_python(),
        """
        import datetime, huey, migapp
        assert huey.__version__ == '3.5.4'
        for i in range(1000):
            migapp.record(i)
        eta = datetime.datetime.utcnow() + datetime.timedelta(seconds=1)
        for i in range(1000, 1100):
            task = migapp.record.s(i)
            task.eta = eta
            migapp.huey.add_schedule(task)  # where a 3.5.4 consumer parks a task with an eta
        for i in range(100):
            migapp.huey.put('result-%d' % i, {'n': i})
        """,
        env,
        tmp_path,
    )
    store = tmp_path / 'store'
    assert len(os.listdir(store / 'queue')) == 1000
    assert len(os.listdir(store / 'schedule')) == 100
    # A second huey-rs process opening the directory at the same time changes nothing.
    openers = [
        subprocess.Popen(
            [sys.executable, '-c', 'import migapp; print(migapp.huey.pending_count())'],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    with open(tmp_path / 'consumer.log', 'wb') as log:
        consumer = start_consumer(sys.executable, env, tmp_path, log)
        try:
            wait_for(lambda: len(ran(tmp_path)) >= 1100, proc=consumer)
            time.sleep(0.5)  # anything run twice would show up meanwhile
        finally:
            stop(consumer)
    for opener in openers:
        out, _ = opener.communicate(timeout=60)
        assert opener.returncode == 0 and 0 <= int(out) <= 1100  # due ones move to the queue
    got = ran(tmp_path)
    assert sorted(got) == list(range(1100)), 'every task exactly once'
    run(
        sys.executable,
        """
        import migapp
        for i in range(100):
            assert migapp.huey.get('result-%d' % i) == {'n': i}, i
        assert migapp.huey.pending_count() == 0 and migapp.huey.scheduled_count() == 0
        """,
        env,
        tmp_path,
    )
    assert os.path.isfile(store / 'queue') and os.path.isfile(store / 'schedule')
    assert not os.path.exists(store / 'import')


def test_a_huey_354_consumer_on_a_huey_rs_directory_loses_nothing(tmp_path):
    env = setup_app(tmp_path)
    run(
        sys.executable,
        """
        import migapp
        for i in range(20):
            migapp.record(i)
        migapp.record.schedule((99,), delay=0.5)
        """,
        env,
        tmp_path,
    )
    with open(tmp_path / 'old.log', 'w+b') as log:
        old = start_consumer(reference_python(), env, tmp_path, log)

        def complained():
            log.seek(0)
            return b'Not a directory' in log.read()

        try:
            wait_for(complained, timeout=60, proc=old)  # huey 3.5.4 fails loudly
            time.sleep(1)  # and keeps failing, taking nothing
        finally:
            old.terminate()  # huey 3.5.4's own exit code is not what this test is about
            old.wait(60)
    # Its producer side fails loudly too, storing nothing.
    out = run(
        reference_python(),
        """
        import migapp
        try:
            migapp.record(1000)
        except NotADirectoryError:
            print('refused')
        """,
        env,
        tmp_path,
    )
    assert out.strip() == 'refused'
    assert ran(tmp_path) == []
    with open(tmp_path / 'new.log', 'wb') as log:
        new = start_consumer(sys.executable, env, tmp_path, log)
        try:
            wait_for(lambda: len(ran(tmp_path)) >= 21, proc=new)
        finally:
            stop(new)
    assert sorted(ran(tmp_path)) == list(range(20)) + [99]


def write_legacy(root, count):
    """huey 3.5.4's FileStorage layout, as its docs and files show it: one file per message,
    named so that name order is dequeue order."""
    queue = os.path.join(root, 'queue')
    schedule = os.path.join(root, 'schedule')
    os.makedirs(queue)
    os.makedirs(schedule)
    for i in range(count):
        priority = i % 3
        name = f'{0xFFFF - priority:04x}-{10**12 + i:012x}'
        with open(os.path.join(queue, name), 'wb') as f:
            f.write(b'q%d' % i)
    for i in range(count // 10):
        with open(os.path.join(schedule, f'{10**12 + i:012x}'), 'wb') as f:
            f.write(b's%d' % i)


def test_a_takeover_killed_at_any_point_still_imports_everything_once(tmp_path):
    rng = random.Random(7)
    code = 'import sys; from huey.storage import FileStorage; FileStorage("t", sys.argv[1])'
    for round in range(12):
        root = str(tmp_path / f'r{round}')
        write_legacy(root, 600)
        # Two openers at once, one of them killed after a random moment.
        victim = subprocess.Popen([sys.executable, '-c', code, root])
        rival = subprocess.Popen([sys.executable, '-c', code, root])
        time.sleep(rng.uniform(0.05, 0.4))
        victim.kill()
        victim.wait()
        assert rival.wait(60) == 0
        storage = FileStorage('t', root)
        queued = []
        while (data := storage.dequeue()) is not None:
            queued.append(data)
        assert sorted(queued) == sorted(b'q%d' % i for i in range(600)), round
        # Higher priorities first, FIFO within each.
        assert queued[:3] == [b'q2', b'q5', b'q8']
        scheduled = storage.read_schedule(__import__('datetime').datetime(2100, 1, 1))
        assert sorted(scheduled) == sorted(b's%d' % i for i in range(60)), round
        assert set(os.listdir(root)) - {'.lock'} == {
            'counters',
            'queue',
            'queue.d',
            'results',
            'schedule',
            'schedule.d',
            'tmp',
        }
