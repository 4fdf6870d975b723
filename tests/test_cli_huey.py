"""The ``huey`` command on Memory (in-process), File, Sqlite and Redis (a real redis-server):
every subcommand, ``--json`` output validated against ``huey/cli/schema.json``, reads that
change nothing, confirmations, bad input and exit codes. A few runs go through a real
subprocess (``python -m huey.cli`` and the console script)."""

import datetime
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import jsonschema
import pytest

import huey.cli as cli
from huey.monitor import Monitor

SCHEMA = json.loads((Path(cli.__file__).parent / 'schema.json').read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
STORAGES = ['memory', 'file', 'sqlite', 'redis']

APP = """\
from huey import {cls}, MemoryHuey, crontab

huey = {cls}('cli-ops', {kwargs})
not_a_huey = 42
# MemoryStorage has no reliable delivery (reliable=True on it is a ConfigurationError).
reliable = {cls}('cli-ops', reliable={cls} != MemoryHuey, {kwargs})


@huey.task()
def add(a, b):
    return a + b


@huey.task()
def fail():
    raise ValueError('boom')


@huey.periodic_task(crontab(minute='0', hour='3'))
def nightly():
    pass
"""


class App:
    def __init__(self, module, path, storage):
        self.module = module
        self.path = path  # the APP argument
        self.storage = storage
        self.huey = module.huey


@pytest.fixture(params=STORAGES)
def app(request, tmp_path, monkeypatch):
    storage = request.param
    if storage == 'memory':
        cls, kwargs = 'MemoryHuey', ''
    elif storage == 'file':
        cls, kwargs = 'FileHuey', f'path={str(tmp_path / "queue")!r}'
    elif storage == 'sqlite':
        cls, kwargs = 'SqliteHuey', f'filename={str(tmp_path / "queue.db")!r}'
    else:
        server = request.getfixturevalue('redis_db')
        cls, kwargs = 'RedisHuey', f'url={server.url!r}'
    name = f'ops_app_{storage}_{uuid.uuid4().hex[:8]}'
    (tmp_path / f'{name}.py').write_text(APP.format(cls=cls, kwargs=kwargs))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    yield App(module, f'{name}.huey', storage)
    module.huey.storage.close()
    sys.modules.pop(name, None)


def run(capsys, *argv):
    code = cli.run([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, '--json')
    assert code == 0, err
    data = json.loads(out)
    VALIDATOR.validate(data)
    return data


def state(app):
    """Everything a read must leave as it was."""
    storage = app.huey.storage
    inflight = [] if app.storage == 'memory' else storage.inflight_items()
    return (
        [bytes(d) for d in storage.enqueued_items()],
        [bytes(d) for d in storage.scheduled_items()],
        {k: bytes(v) for k, v in storage.result_items().items()},
        [(letter['id'], bytes(letter['data'])) for letter in storage.dead_letters()],
        [entry[:2] for entry in inflight],
    )


def test_enqueue_then_pending_lists_it(app, capsys):
    code, out, err = run(capsys, 'enqueue', app.path, 'add', '[1, 2]')
    assert code == 0, err
    task_id = out.split()[0]
    data = run_json(capsys, 'enqueue', app.path, 'add', '{"a": 3, "b": 4}')
    assert data['name'].endswith('.add') and data['eta'] is None

    pending = run_json(capsys, 'pending', app.path)
    assert pending['total'] == 2 and pending['queue'] == 'cli-ops'
    first, second = pending['items']
    assert first['id'] == task_id and first['args'] == '(1, 2)'
    assert second['id'] == data['id'] and "'a': 3" in second['args']
    assert [t.id for t in app.huey.pending()] == [task_id, data['id']]

    code, out, _ = run(capsys, 'pending', app.path, '--limit', '1')
    assert code == 0 and task_id in out and data['id'] not in out
    assert '2 pending' in out and '--limit 2' in out
    # The enqueued task really runs with the arguments given.
    assert app.huey.execute(app.huey.dequeue()) == 3


def test_enqueue_options_and_task_lookup(app, capsys):
    data = run_json(
        capsys, 'enqueue', app.path, app.module.__name__ + '.add', '[1, 1]', '--delay', '60'
    )
    eta = datetime.datetime.fromisoformat(data['eta'])
    assert 50 < (eta - app.huey._get_timestamp()).total_seconds() <= 60
    data = run_json(
        capsys, 'enqueue', app.path, 'add', '[2]', '--kwargs', '{"b": 5}', '--retries', '2'
    )
    (row,) = [r for r in run_json(capsys, 'pending', app.path)['items'] if r['id'] == data['id']]
    assert row['retries'] == 2 and row['args'] == "(2,) {'b': 5}"
    if app.huey.storage.priority:
        data = run_json(capsys, 'enqueue', app.path, 'add', '[0, 0]', '--priority', '7')
        assert run_json(capsys, 'pending', app.path)['items'][0]['id'] == data['id']


def test_scheduled_lists_soonest_first(app, capsys):
    now = app.huey._get_timestamp()
    later = app.module.add.s(1, 1)
    later.eta = now + datetime.timedelta(hours=2)
    sooner = app.module.add.s(2, 2)
    sooner.eta = now + datetime.timedelta(minutes=5)
    app.huey.add_schedule(later)
    app.huey.add_schedule(sooner)
    data = run_json(capsys, 'scheduled', app.path)
    assert data['total'] == 2
    assert [row['id'] for row in data['items']] == [sooner.id, later.id]
    assert data['items'][0]['eta'] == sooner.eta.isoformat()
    info = run_json(capsys, 'info', app.path)
    assert info['scheduled'] == {'total': 2, 'next_eta': sooner.eta.isoformat()}


def test_results_classify_keys(app, capsys):
    ok = app.module.add.s(20, 22)
    app.huey.execute(ok)
    bad = app.module.fail.s()
    app.huey.execute(bad)
    app.huey.revoke_by_id('some-task')
    data = run_json(capsys, 'results', app.path)
    rows = {row['key']: row for row in data['items']}
    assert rows[ok.id]['kind'] == 'result' and rows[ok.id]['value'] == '42'
    assert rows[bad.id]['kind'] == 'error' and 'boom' in rows[bad.id]['value']
    assert rows['r:some-task']['kind'] == 'revocation'
    assert data['total'] == 3
    code, out, _ = run(capsys, 'results', app.path)
    assert code == 0 and '3 keys' in out and '42' in out


def test_inflight_shows_lease_age(app, capsys):
    app.module.add(1, 2)
    reliable = app.module.__name__ + '.reliable'
    if app.storage == 'memory':  # MemoryStorage has no reliable delivery: nothing in flight
        assert run_json(capsys, 'inflight', reliable)['total'] == 0
        return
    assert app.huey.storage.dequeue_reliable('test-consumer', 'token-1', 30) is not None
    assert app.huey.storage.mark_started('token-1')  # its task runs: the delivery counts
    assert run_json(capsys, 'inflight', app.path)['total'] == 0  # not a reliable Huey
    data = run_json(capsys, 'inflight', reliable)
    (row,) = data['items']
    assert row['token'] == 'token-1' and row['consumer'] == 'test-consumer'
    assert row['name'].endswith('.add') and row['deliveries'] == 1
    assert 0 <= row['lease_age'] < 10 and 20 < row['expires_in'] <= 30
    info = run_json(capsys, 'info', reliable)
    assert info['in_flight']['total'] == 1 and info['in_flight']['items'][0]['token'] == 'token-1'
    assert app.huey.storage.ack('token-1')


def test_dead_letter_commands(app, capsys):
    storage = app.huey.storage
    message = app.huey.serialize_task(app.module.add.s(5, 6))
    good = storage.put_dead_letter(message, 'KeyError: deployed later', 2)
    junk = storage.put_dead_letter(b'\x00not a message', 'UnpicklingError: junk', 1)

    listing = run_json(capsys, 'dlq', 'list', app.path)
    assert listing['total'] == 2
    assert [row['letter'] for row in listing['items']] == [good, junk]
    assert listing['items'][0]['name'].endswith('.add') and listing['items'][0]['deliveries'] == 2
    assert listing['items'][1]['name'] is None

    shown = run_json(capsys, 'dlq', 'show', app.path, good)
    assert shown['reason'] == 'KeyError: deployed later'
    assert shown['message']['args'] == '(5, 6)'
    assert bytes.fromhex(shown['data_hex']) == bytes(message)
    code, out, _ = run(capsys, 'dlq', 'show', app.path, junk)
    assert code == 0 and '<cannot be decoded>' in out

    code, _, err = run(capsys, 'dlq', 'show', app.path, 'no-such-letter')
    assert code == cli.EXIT_NOT_FOUND and "no dead letter 'no-such-letter'" in err

    code, out, err = run(capsys, 'dlq', 'requeue', app.path, good, 'missing-id')
    assert code == cli.EXIT_NOT_FOUND and 'requeued 1 dead letter' in out and 'missing-id' in err
    assert app.huey.pending_count() == 1 and app.huey.dead_letter_count() == 1
    assert app.huey.execute(app.huey.dequeue()) == 11

    code, _, err = run(capsys, 'dlq', 'requeue', app.path)
    assert code == cli.EXIT_USAGE and '--all' in err

    code, _, err = run(capsys, 'dlq', 'purge', app.path)  # stdin is not a terminal
    assert code == cli.EXIT_USAGE and '--yes' in err
    assert app.huey.dead_letter_count() == 1
    code, out, _ = run(capsys, 'dlq', 'purge', app.path, '--yes')
    assert code == 0 and 'purged 1' in out and app.huey.dead_letter_count() == 0

    storage.put_dead_letter(message, 'x', 1)
    storage.put_dead_letter(message, 'y', 1)
    code, out, _ = run(capsys, 'dlq', 'requeue', app.path, '--all')
    assert code == 0 and 'requeued 2' in out and app.huey.pending_count() == 2


def test_revoke_by_id_and_name(app, capsys):
    result = app.module.add(1, 2)
    code, out, _ = run(capsys, 'revoke', app.path, result.id)
    assert code == 0 and 'revoked' in out and result.is_revoked()
    code, out, _ = run(capsys, 'revoke', app.path, result.id, '--restore')
    assert code == 0 and 'restored' in out and not result.is_revoked()

    code, out, _ = run(capsys, 'revoke', app.path, '--name', 'add', '--once')
    assert code == 0 and app.module.add.is_revoked()
    assert app.huey.execute(app.huey.dequeue()) is None  # skipped once
    code, out, _ = run(capsys, 'revoke', app.path, '--name', 'add', '--restore')
    assert 'was not revoked' in out  # the one-time revocation was used up

    code, _, err = run(capsys, 'revoke', app.path)
    assert code == cli.EXIT_USAGE and '--name' in err
    code, _, err = run(capsys, 'revoke', app.path, '--name', 'nope')
    assert code == cli.EXIT_NOT_FOUND and "no task named 'nope'" in err and '.add' in err


def test_flush_asks_first(app, capsys):
    app.module.add(1, 2)
    app.huey.put('k', 'v')
    app.huey.storage.put_dead_letter(b'x', 'kept', 1)
    code, _, err = run(capsys, 'flush', app.path)
    assert code == cli.EXIT_USAGE and '--yes' in err
    assert app.huey.pending_count() == 1
    code, out, _ = run(capsys, 'flush', app.path, '--yes')
    assert code == 0 and 'flushed' in out
    assert app.huey.pending_count() == 0 and app.huey.result_count() == 0
    assert app.huey.dead_letter_count() == 1  # dead letters are evidence: flush leaves them


def test_info_shows_consumers_and_periodic_tasks(app, capsys):
    app.module.add(1, 2)
    monitor = Monitor(app.huey, 3, 'thread', True, 1, forks=False)
    try:
        app.huey.execute(app.huey.dequeue())
        monitor.beat()
        info = run_json(capsys, 'info', app.path)
    finally:
        monitor.close()
    assert info['pending']['total'] == 0 and info['results']['total'] == 1
    (consumer,) = info['consumers']
    assert consumer['id'] == monitor.id and consumer['alive'] and consumer['workers'] == 3
    assert consumer['implementation'] == 'huey-rs' and consumer['totals']['complete'] == 1
    (periodic,) = info['periodic']
    assert periodic['name'].endswith('.nightly')
    next_run = datetime.datetime.fromisoformat(periodic['next_run'])
    assert (next_run.hour, next_run.minute) == (3, 0)
    code, out, _ = run(capsys, 'info', app.path)
    assert code == 0 and monitor.id in out and 'running' in out and 'nightly' in out


def test_reads_change_nothing(app, capsys):
    app.module.add(1, 2)
    app.module.add(3, 4)
    task = app.module.add.s(0, 0)
    task.eta = app.huey._get_timestamp() + datetime.timedelta(hours=1)
    app.huey.add_schedule(task)
    app.huey.execute(app.module.add.s(9, 9))
    letter = app.huey.storage.put_dead_letter(b'junk', 'junk', 1)
    if app.storage != 'memory':
        app.huey.storage.dequeue_reliable('reader-test', 'tok', 60)
    before = state(app)
    paths = [app.path]
    if app.storage != 'memory':  # a second MemoryHuey would be another, empty memory
        paths.append(app.module.__name__ + '.reliable')
    for path in paths:
        for argv in (
            ['info'],
            ['pending'],
            ['scheduled'],
            ['results'],
            ['inflight'],
            ['dlq', 'list'],
        ):
            run_json(capsys, *argv, path)
        run_json(capsys, 'dlq', 'show', path, letter)
    assert state(app) == before


def test_bad_input(app, capsys):
    code, _, err = run(capsys, 'pending', 'no_such_module_xyz.huey')
    assert code == cli.EXIT_APP and 'ModuleNotFoundError' in err and err.count('\n') == 1
    code, _, err = run(capsys, 'pending', app.module.__name__ + '.not_a_huey')
    assert code == cli.EXIT_APP and 'is a int, not a Huey instance' in err
    code, _, err = run(capsys, 'pending', app.module.__name__ + '.missing')
    assert code == cli.EXIT_APP and "no attribute 'missing'" in err
    code, _, err = run(capsys, 'pending', app.path, '--limit', '-1')
    assert code == cli.EXIT_USAGE and '--limit must be 0 or more' in err
    code, _, err = run(capsys, 'enqueue', app.path, 'add', '[1, 2')
    assert code == cli.EXIT_USAGE and 'ARGS is not valid JSON' in err
    code, _, err = run(capsys, 'enqueue', app.path, 'add', '"text"')
    assert code == cli.EXIT_USAGE and 'JSON array or object' in err
    code, _, err = run(capsys, 'enqueue', app.path, 'add', '[1]', '--kwargs', '[2]')
    assert code == cli.EXIT_USAGE and '--kwargs must be a JSON object' in err
    code, _, err = run(capsys, 'enqueue', app.path, 'add', '[1, 2]', '--eta', 'soon')
    assert code == cli.EXIT_USAGE and 'ISO 8601' in err
    code, _, err = run(capsys, 'enqueue', app.path, 'subtract')
    assert code == cli.EXIT_NOT_FOUND and 'no task named' in err
    code, _, err = run(capsys, 'frobnicate', app.path)
    assert code == cli.EXIT_USAGE and 'invalid choice' in err
    code, _, err = run(capsys, 'dashboard', app.path, '--bind', 'nowhere')
    assert code == cli.EXIT_USAGE and 'HOST:PORT' in err
    code, _, err = run(capsys, 'dashboard', app.path, '--bind', '0.0.0.0:0')
    assert code == cli.EXIT_USAGE and 'access token' in err
    assert app.huey.pending_count() == 0


def test_unreachable_redis_is_a_storage_error(tmp_path, monkeypatch, capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    name = f'ops_down_{uuid.uuid4().hex[:8]}'
    (tmp_path / f'{name}.py').write_text(
        APP.format(cls='RedisHuey', kwargs=f'url="redis://127.0.0.1:{port}/0"')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for argv in (['info'], ['pending'], ['dlq', 'list']):
        code, _, err = run(capsys, *argv, f'{name}.huey')
        assert code == cli.EXIT_STORAGE, err
        assert err.startswith('huey: error: storage error (RedisStorage): ConnectionError')
        assert err.count('\n') == 1


def test_unreadable_sqlite_is_a_storage_error(tmp_path, monkeypatch, capsys):
    db = tmp_path / 'not-a-db.sqlite'
    db.write_bytes(b'this is not a sqlite database' * 100)
    name = f'ops_corrupt_{uuid.uuid4().hex[:8]}'
    (tmp_path / f'{name}.py').write_text(
        APP.format(cls='SqliteHuey', kwargs=f'filename={str(db)!r}, create_tables=False')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = run(capsys, 'pending', f'{name}.huey')
    assert code == cli.EXIT_STORAGE and 'DatabaseError' in err


def test_subprocess_and_console_script(tmp_path):
    db = tmp_path / 'q.db'
    (tmp_path / 'proc_app.py').write_text(
        APP.format(cls='SqliteHuey', kwargs=f'filename={str(db)!r}')
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    script = Path(sys.executable).with_name('huey')
    assert script.exists(), f'console script missing: {script} (make dev installs it)'
    for command in ([sys.executable, '-m', 'huey.cli'], [str(script)]):
        proc = subprocess.run(
            [*command, 'enqueue', 'proc_app.huey', 'add', '[1, 2]', '--json'],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        VALIDATOR.validate(json.loads(proc.stdout))
    proc = subprocess.run(
        [str(script), 'pending', 'proc_app.huey', '--json'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)['total'] == 2
    proc = subprocess.run(
        [str(script), 'flush', 'proc_app.huey'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == cli.EXIT_USAGE and 'refusing without --yes' in proc.stderr
    proc = subprocess.run(
        [str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == cli.EXIT_USAGE and proc.stderr.startswith('huey: error:')


def test_schema_is_valid_and_describes_every_read_command():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert set(SCHEMA['$defs']) >= {
        'info',
        'pending',
        'scheduled',
        'results',
        'inflight',
        'dlq-list',
        'dlq-show',
        'enqueue',
    }
    # A document that breaks the schema is caught (the tests above really validate).
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(
            {'command': 'pending', 'version': 1, 'queue': 'q', 'total': -1, 'items': []}
        )
    assert textwrap.dedent(cli.__doc__).count('huey ') >= 6
