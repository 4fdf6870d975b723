"""CySqliteHuey, SqlHuey and ValkeyGlideHuey share their queue with huey 3.5.4's.

Each side is its own interpreter: huey 3.5.4 (from PyPI, with cysqlite, peewee and
valkey-glide-sync, in a virtualenv built once under ~/.cache/huey-rs) and huey-rs (this
one). Both import one tasks module and enqueue, run and read each other's tasks, schedule
and results.
"""

import fcntl
import json
import os
import subprocess
import sys
import textwrap

import pytest

import huey as huey_package
from conftest import assert_is_huey_354

VENV = os.path.join(os.path.expanduser('~'), '.cache', 'huey-rs', 'huey-3.5.4-contrib-venv')
PACKAGES = ['huey==3.5.4', 'redis', 'cysqlite', 'peewee', 'valkey-glide-sync']

TASKS_MODULE = """
import os

KIND, TARGET = os.environ['INTEROP_KIND'], os.environ['INTEROP_TARGET']
if KIND == 'cysqlite':
    from huey import CySqliteHuey
    huey = CySqliteHuey('interop', filename=TARGET)
elif KIND == 'sql':
    from huey.contrib.sql_huey import SqlHuey
    huey = SqlHuey('interop', database=TARGET)
else:
    from huey.contrib.valkey_glide import ValkeyGlideHuey
    huey = ValkeyGlideHuey('interop', port=int(TARGET))


@huey.task()
def add(a, b):
    return a + b
"""


def reference_python():
    """huey 3.5.4 with the optional packages of these storages (built on first use)."""
    python = os.path.join(VENV, 'bin', 'python')
    marker = os.path.join(VENV, '.complete')
    if not os.path.exists(marker):
        os.makedirs(os.path.dirname(VENV), exist_ok=True)
        with open(VENV + '.lock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # One builder when test processes race.
            if not os.path.exists(marker):
                subprocess.run([sys.executable, '-m', 'venv', '--clear', VENV], check=True)
                subprocess.run(
                    [python, '-m', 'pip', 'install', '-q', '--prefer-binary', *PACKAGES],
                    check=True,
                )
                open(marker, 'w').close()
    return python


def test_the_reference_is_huey_3_5_4_in_its_own_venv():
    assert_is_huey_354(reference_python())


@pytest.fixture(params=['cysqlite', 'sql', 'valkey'])
def fleet(request, tmp_path):
    (tmp_path / 'interop_tasks.py').write_text(TASKS_MODULE)
    if request.param == 'cysqlite':
        target = str(tmp_path / 'queue.db')
    elif request.param == 'sql':
        target = f'sqlite:///{tmp_path / "queue.db"}'
    else:
        server = request.getfixturevalue('redis_db')
        target = str(server.port)
    env = dict(os.environ, INTEROP_KIND=request.param, INTEROP_TARGET=target)
    env['PYTHONPATH'] = str(tmp_path)
    reference = reference_python()

    def run(side, code):
        """Run ``code`` under huey 3.5.4 (``side='3.5.4'``) or huey-rs; its last printed
        line is JSON, returned."""
        python = reference if side == '3.5.4' else sys.executable
        prelude = 'import json, datetime, huey\nfrom interop_tasks import huey as h, add\n'
        done = subprocess.run(
            [python, '-c', prelude + textwrap.dedent(code)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run


RUN_ALL = """
ran = 0
while True:
    for task in h.read_schedule(datetime.datetime.now() + datetime.timedelta(days=1)):
        h.enqueue(task)
    task = h.dequeue()
    if task is None:
        break
    h.execute(task)
    ran += 1
"""


def test_each_side_runs_the_others_tasks_and_reads_the_results(fleet):
    ours = fleet('huey-rs', 'print(json.dumps(huey.__file__))')
    theirs = fleet('3.5.4', 'print(json.dumps(huey.__file__))')
    # Each side imports its own package (the reference's is checked for what it is above).
    assert ours == huey_package.__file__
    assert theirs.startswith(os.path.join(VENV, '')), theirs

    ids = fleet('3.5.4', 'print(json.dumps([add(i, i).id for i in range(5)]))')
    assert fleet('huey-rs', RUN_ALL + 'print(json.dumps(ran))') == 5
    results = fleet('3.5.4', f'print(json.dumps([h.result(i) for i in {ids!r}]))')
    assert results == [0, 2, 4, 6, 8]

    ids = fleet(
        'huey-rs',
        """
        now = datetime.datetime.now()
        later = add.schedule((1, 1), eta=now - datetime.timedelta(seconds=1))
        h.add_schedule(later.task)   # straight into the schedule, as a consumer would
        h.storage.flush_queue()
        print(json.dumps([add(10, 1).id, later.id]))
        """,
    )
    assert fleet('3.5.4', RUN_ALL + 'print(json.dumps(ran))') == 2
    assert fleet('huey-rs', f'print(json.dumps([h.result(i) for i in {ids!r}]))') == [11, 2]
    counts = 'print(json.dumps([h.pending_count(), h.scheduled_count(), h.result_count()]))'
    assert fleet('huey-rs', counts) == fleet('3.5.4', counts) == [0, 0, 0]
