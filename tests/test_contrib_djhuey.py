"""huey.contrib.djhuey with a real Django project (tests/djproject) and a real consumer.

The consumer is ``python manage.py run_huey`` in a subprocess; this process loads the same
project settings, so both share the Django database and the SqliteHuey queue in a temp dir.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip('django')

PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'djproject')


def project_env(data_dir, **extra):
    env = dict(
        os.environ, HUEY_DJPROJECT_DIR=str(data_dir), DJANGO_SETTINGS_MODULE='djproject.settings'
    )
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [PROJECT, env.get('PYTHONPATH')]))
    env.pop('HUEY_DJPROJECT_DEBUG', None)
    env.pop('HUEY_DJPROJECT_IMMEDIATE', None)
    env.update(extra)
    return env


def manage(data_dir, *args, **kwargs):
    return subprocess.run(
        [sys.executable, 'manage.py', *args],
        cwd=PROJECT,
        env=project_env(data_dir),
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    """The project set up in this process (DEBUG off, so HUEY is not immediate)."""
    data_dir = tmp_path_factory.mktemp('djproject')
    migrated = manage(data_dir, 'migrate', '-v', '0')
    assert migrated.returncode == 0, migrated.stderr
    # Django sets the process time zone (TZ) from settings.TIME_ZONE: put it back afterwards
    # so later tests see the machine's local time.
    saved = {k: os.environ.get(k) for k in ('HUEY_DJPROJECT_DIR', 'DJANGO_SETTINGS_MODULE', 'TZ')}
    os.environ['HUEY_DJPROJECT_DIR'] = str(data_dir)
    os.environ['DJANGO_SETTINGS_MODULE'] = 'djproject.settings'
    sys.path.insert(0, PROJECT)
    import django

    django.setup()
    from huey.contrib.djhuey import HUEY

    yield data_dir
    HUEY.storage.close()
    sys.path.remove(PROJECT)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    time.tzset()


@pytest.fixture
def huey(project):
    from huey.contrib.djhuey import HUEY
    from notes.models import Note

    HUEY.storage.flush_all()
    Note.objects.all().delete()
    return HUEY


@pytest.fixture
def run_huey(project):
    """Start ``manage.py run_huey`` with extra arguments; stopped (SIGINT) afterwards."""
    started = []

    def start(*args):
        process = subprocess.Popen(
            [sys.executable, 'manage.py', 'run_huey', *args],
            cwd=PROJECT,
            env=project_env(project),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def stop(process):
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    return process.returncode, output


def test_run_huey_executes_a_db_task_from_another_process(huey, run_huey):
    from notes.models import Note
    from notes.tasks import write_note

    assert huey.immediate is False  # DEBUG is off in this process.
    consumer = run_huey('-w', '1')
    result = write_note('hello')
    note_id, pid = result.get(blocking=True, timeout=60)
    note = Note.objects.get(id=note_id)
    assert (note.text, note.pid) == ('hello', consumer.pid)  # Written by the consumer.

    code, output = stop(consumer)
    assert code == 0, output
    # settings.HUEY['consumer'] said 2 workers; -w 1 on the command line wins.
    assert 'Huey consumer started with 1 thread' in output
    registered = output.split('commands are available:')[1].split('\n[')[0]
    assert '+ notes.tasks.write_note' in registered  # Found by auto-discovery.


def test_run_huey_without_autoload_does_not_know_the_tasks(huey, run_huey):
    consumer = run_huey('-A', '-w', '1', '-V')
    from notes.tasks import write_note

    lines = []
    rejected = threading.Event()

    def read():
        for line in consumer.stdout:
            lines.append(line)
            if 'notes.tasks.write_note not found' in line:
                rejected.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    result = write_note('unknown')
    assert rejected.wait(60), ''.join(lines)  # The consumer cannot run what it never saw.
    assert result.get() is None
    consumer.send_signal(signal.SIGINT)
    assert consumer.wait(30) == 0, ''.join(lines)
    reader.join(10)
    output = ''.join(lines)
    registered = output.split('commands are available:')[1].split('\n[')[0]
    assert 'write_note' not in registered
    assert 'DEBUG:' in output  # -V is huey's verbose logging.


def test_run_huey_help_lists_consumer_options(project):
    helped = manage(project, 'run_huey', '--help')
    assert helped.returncode == 0, helped.stderr
    for flag in (
        '--huey-verbose',
        '-V',
        '--workers',
        '--worker-type',
        '--max-delay',
        '--disable-autoload',
        '--no-periodic',
        '--shutdown-timeout',
    ):
        assert flag in helped.stdout
    bad = manage(project, 'run_huey', '--worker-type', 'fork')
    assert bad.returncode != 0 and 'fork' in bad.stderr


def test_on_commit_task_enqueues_only_after_commit(huey):
    from django.db import transaction

    from notes.tasks import write_note_on_commit

    with pytest.raises(RuntimeError):
        with transaction.atomic():
            write_note_on_commit('rolled back')
            raise RuntimeError('roll back')
    assert huey.pending_count() == 0

    with transaction.atomic():
        result = write_note_on_commit('committed')
        assert huey.pending_count() == 0  # Not before the commit...
    assert huey.pending_count() == 1  # ...but right after it.
    task = huey.dequeue()
    assert task.id == result.id and task.args == ('committed',)
    huey.execute(task)
    from notes.models import Note

    assert result.get() == Note.objects.get(text='committed').id


def test_db_task_wrappers_keep_the_plain_function(huey):
    from notes.models import Note
    from notes.tasks import write_note, yearly_cleanup

    note_id, pid = write_note.call_local('local')
    assert pid == os.getpid() and Note.objects.get(id=note_id).text == 'local'
    assert huey.pending_count() == 0
    assert yearly_cleanup.call_local() is None
    assert not Note.objects.exists()
    assert yearly_cleanup.task_class in huey._registry._periodic_tasks


def test_module_shortcuts_are_bound_to_the_configured_huey(huey):
    import huey.contrib.djhuey as djhuey

    for name in (
        'task',
        'periodic_task',
        'lock_task',
        'enqueue',
        'restore',
        'restore_all',
        'restore_by_id',
        'revoke',
        'revoke_all',
        'revoke_by_id',
        'is_revoked',
        'result',
        'scheduled',
        'on_startup',
        'on_shutdown',
        'pre_execute',
        'post_execute',
        'signal',
        'disconnect_signal',
    ):
        assert getattr(djhuey, name) == getattr(huey, name), name
    assert type(huey).__name__ == 'SqliteHuey' and huey.name == 'djproject'


SHOW_HUEY = textwrap.dedent("""
    import django
    django.setup()
    from huey.contrib.djhuey import HUEY
    print(type(HUEY).__name__, HUEY.name, HUEY.immediate, type(HUEY.storage).__name__)
""")


@pytest.mark.parametrize(
    'debug, immediate, expected',
    [
        ('0', None, 'False'),
        ('1', None, 'True'),  # Follows DEBUG by default...
        ('1', '0', 'False'),  # ...unless HUEY['immediate'] is set.
        ('0', '1', 'True'),
    ],
)
def test_immediate_follows_debug_unless_set(tmp_path, debug, immediate, expected):
    extra = {'HUEY_DJPROJECT_DEBUG': debug}
    if immediate is not None:
        extra['HUEY_DJPROJECT_IMMEDIATE'] = immediate
    shown = subprocess.run(
        [sys.executable, '-c', SHOW_HUEY],
        env=project_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    # Immediate mode swaps in a MemoryStorage (huey's immediate_use_memory default).
    storage = 'MemoryStorage' if expected == 'True' else 'SqliteStorage'
    assert shown.stdout.split() == ['SqliteHuey', 'djproject', expected, storage]


def test_settings_huey_may_be_an_instance(tmp_path):
    script = textwrap.dedent("""
        import django
        from django.conf import settings
        from huey import MemoryHuey
        settings.configure(HUEY=MemoryHuey('given', immediate=False), DATABASES={})
        django.setup()
        from huey.contrib.djhuey import HUEY, task
        assert HUEY is settings.HUEY
        @task()
        def double(n):
            return n * 2
        result = double(21)
        HUEY.execute(HUEY.dequeue())
        print(result.get())
    """)
    shown = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == '42'


def test_bad_huey_class_is_a_configuration_error(tmp_path):
    script = textwrap.dedent("""
        import django
        from django.conf import settings
        settings.configure(HUEY={'huey_class': 'huey.NoSuchHuey'}, DATABASES={})
        django.setup()
        import huey.contrib.djhuey
    """)
    shown = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert shown.returncode == 1
    assert 'could not import Huey backend' in shown.stdout
    assert 'Configuring Huey for use with Django' in shown.stdout
