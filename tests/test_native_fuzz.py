"""Native code never panics into Python, aborts or dies by a signal (issue 14, part 5).

Every entry point of ``huey._native`` (functions, constructors, methods; Memory and File
included) is called with hostile values, each target in its own subprocess (see
``native_fuzz_worker.py``): the process must exit normally and every call must end in a
clean ``Exception``. Beside it: timeouts and leases are validated at the API, blocking waits
wake for Ctrl-C, and daemon threads waiting in native code let the interpreter exit.
"""

import inspect
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import huey._native as native

WORKER = Path(__file__).with_name('native_fuzz_worker.py')


def targets():
    """Every public function, constructor and method of huey._native."""
    names = []
    for name, obj in sorted(vars(native).items()):
        if name.startswith('_') or not callable(obj):
            continue
        names.append(name)
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                if (not attr.startswith('_') or attr == '__call__') and callable(
                    getattr(obj, attr)
                ):
                    names.append(f'{name}.{attr}')
    return names


def test_every_entry_point_is_a_target():
    found = targets()
    assert 'MemoryStore.wait_result' in found
    assert 'FileStore.dequeue_wait' in found
    assert 'Framing.decode' in found
    assert 'Crontab.__call__' in found
    assert 'check_seconds' in found
    assert 'PathWatcher.wait' in found
    assert len(found) > 80


def target_groups():
    """The targets by owner (a class with its methods, or the module's functions): one
    subprocess each keeps the run short while a signal still names the call (CASE lines)."""
    groups = {}
    for target in targets():
        owner = target.split('.')[0]
        key = owner if inspect.isclass(getattr(native, owner)) else 'functions'
        groups.setdefault(key, []).append(target)
    return groups


@pytest.mark.parametrize('group', sorted(target_groups()))
def test_hostile_arguments_get_clean_exceptions(group, tmp_path):
    group_targets = target_groups()[group]
    run = subprocess.run(
        [sys.executable, str(WORKER), *group_targets],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    last_case = [line for line in run.stderr.splitlines() if line.startswith('CASE ')][-1:]
    assert run.returncode >= 0, (
        f'{group}: killed by signal {-run.returncode} in {last_case}\n{run.stderr[-3000:]}'
    )
    assert run.returncode == 0, (
        f'{group}: exit {run.returncode} in {last_case}\n{run.stderr[-3000:]}'
    )
    report = json.loads(run.stdout.splitlines()[-1])
    assert sorted(report['cases']) == sorted(group_targets)
    # The valid call plus at least one hostile value per parameter reached every target.
    assert all(count >= 1 for count in report['cases'].values()), report['cases']
    assert report['failures'] == [], '\n'.join(report['failures'])
    assert 'PanicException' not in run.stderr
    assert 'panicked at' not in run.stderr


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), float('-inf'), -1, -0.5])
def test_api_rejects_bad_leases_and_timeouts(bad):
    from huey import MemoryHuey

    with pytest.raises(ValueError, match='lease must be a finite number of seconds'):
        MemoryHuey(reliable=True, lease=bad)
    huey = MemoryHuey()

    @huey.task()
    def add(a, b):
        return a + b

    result = add(1, 2)
    with pytest.raises(ValueError, match='timeout must be a finite number of seconds'):
        result.get(blocking=True, timeout=bad)
    assert native.check_seconds('timeout', 0) == 0.0
    assert native.check_seconds('lease', 2.5) == 2.5


# Daemon threads blocked in native waits (and one in Result.get) while the main thread
# returns: the interpreter must exit with status 0 (it used to abort: SIGABRT, exit 134).
EXIT_SCRIPT = r"""
import sys, threading, time
from huey import FileHuey, MemoryHuey
kind, threads, linger = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
huey = FileHuey(path=sys.argv[4]) if kind == 'file' else MemoryHuey()

@huey.task()
def never_run():
    pass

started = threading.Barrier(threads + 1)

def waiter(i):
    started.wait()
    while True:
        if i % 3 == 0:
            huey.storage.dequeue_wait(0.001 * (i % 7 + 1))
        elif i % 3 == 1:
            huey.storage.wait_result('missing-%d' % i, 0.001 * (i % 5 + 1))
        else:
            never_run().get(blocking=True, timeout=0.002)

for i in range(threads):
    threading.Thread(target=waiter, args=(i,), daemon=True).start()
started.wait()
time.sleep(linger)
"""


# A lingering time of 0 makes the main thread exit while the threads make their first native
# calls: that is where a lazy lookup of a Python object (an import, a once-cell wait) used to
# release and retake the GIL inside a native frame, and about one run in 150 aborted.
@pytest.mark.parametrize('kind', ['memory', 'file'])
def test_daemon_threads_in_native_waits_let_the_interpreter_exit(kind, tmp_path):
    # A ResultTimeout in a thread is printed by threading's excepthook; only the exit matters.
    for attempt in range(8):
        run = subprocess.run(
            [sys.executable, '-c', EXIT_SCRIPT, kind, '9', f'0.0{attempt % 6}', str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, (
            f'attempt {attempt}: exit {run.returncode}\n{run.stderr[-2000:]}'
        )


# A main thread blocked in a native wait with no timeout must answer Ctrl-C promptly.
SIGINT_SCRIPT = r"""
import sys, time
from huey.storage import FileStorage, MemoryStorage
storage = FileStorage(path=sys.argv[2]) if sys.argv[1] == 'file' else MemoryStorage()
wait = storage.dequeue_wait if sys.argv[3] == 'dequeue' else (
    lambda timeout: storage.wait_result('never', timeout))
try:
    print('waiting', flush=True)
    wait(3600)
except KeyboardInterrupt:
    print('interrupted', flush=True)
    sys.exit(7)
"""


@pytest.mark.parametrize('kind', ['memory', 'file'])
@pytest.mark.parametrize('which', ['dequeue', 'result'])
def test_ctrl_c_interrupts_a_native_wait(kind, which, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, '-c', SIGINT_SCRIPT, kind, str(tmp_path), which],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == 'waiting'
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 7, err
    assert out.strip() == 'interrupted'
