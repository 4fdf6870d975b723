"""huey.monitor: the outcome tally, the spool that adds up forked workers, the heartbeat
record and its bounds, and the heartbeat capability of every storage (apart from results,
counters and flush)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from huey import CySqliteHuey, FileHuey, MemoryHuey, PostgresHuey, RedisHuey, SqliteHuey
from huey import signals as S
from huey.monitor import MAX_ERRORS, RETENTION, Monitor, Spool, Tally, merge, outcome_totals


@pytest.fixture(params=['memory', 'file', 'sqlite', 'cysqlite', 'redis', 'postgres'])
def huey(request, tmp_path):
    if request.param == 'memory':
        instance = MemoryHuey('mon')
    elif request.param == 'cysqlite':
        instance = CySqliteHuey('mon', filename=str(tmp_path / 'q.db'))
    elif request.param == 'file':
        instance = FileHuey('mon', path=str(tmp_path / 'q'))
    elif request.param == 'sqlite':
        instance = SqliteHuey('mon', filename=str(tmp_path / 'q.db'))
    elif request.param == 'postgres':
        instance = PostgresHuey('mon', dsn=request.getfixturevalue('postgres_db').dsn)
    else:
        instance = RedisHuey('mon', url=request.getfixturevalue('redis_db').url)
    yield instance
    instance.storage.close()


def test_heartbeats_are_kept_apart_from_results_and_counters(huey):
    storage = huey.storage
    assert storage.heartbeats() == {}  # reading an empty storage creates nothing
    storage.put_heartbeat('host:1:a', b'{"beat": 1}')
    storage.put_heartbeat('host:2:b', b'{"beat": 2}')
    storage.put_heartbeat('host:1:a', b'{"beat": 3}')
    assert storage.heartbeats() == {'host:1:a': b'{"beat": 3}', 'host:2:b': b'{"beat": 2}'}
    assert storage.result_store_size() == 0 and storage.result_items() == {}
    huey.flush()
    assert len(storage.heartbeats()) == 2
    storage.delete_heartbeat('host:1:a')
    storage.delete_heartbeat('never-written')
    assert storage.heartbeats() == {'host:2:b': b'{"beat": 2}'}


def test_tally_is_exact_across_threads():
    huey = MemoryHuey('tally')

    @huey.task()
    def job():
        pass

    tally = Tally(huey)
    tally.connect()
    per_thread, threads = 2000, 4

    def send():
        for _ in range(per_thread):
            task = job.s()
            huey._emit(S.SIGNAL_EXECUTING, task)
            huey._emit(S.SIGNAL_COMPLETE, task)

    workers = [threading.Thread(target=send) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    huey._emit(S.SIGNAL_DEAD_LETTER, None, 'reason', '1')
    snapshot = tally.snapshot()
    assert outcome_totals(snapshot) == {
        'executed': per_thread * threads,
        'complete': per_thread * threads,
        'dead-lettered': 1,
    }
    histogram = snapshot['durations'][f'{__name__}.job']
    assert sum(histogram[:-1]) == per_thread * threads and histogram[-1] >= 0
    tally.reset()
    assert outcome_totals(tally.snapshot()) == {}
    tally.disconnect()
    huey._emit(S.SIGNAL_COMPLETE, job.s())
    assert outcome_totals(tally.snapshot()) == {}


def test_errors_keep_the_newest_with_tracebacks():
    huey = MemoryHuey('errors')

    @huey.task()
    def fail(i):
        raise ValueError(f'failure {i}')

    tally = Tally(huey)
    tally.connect()
    for i in range(MAX_ERRORS + 5):
        huey.execute(fail.s(i))
    errors = tally.snapshot()['errors']
    assert len(errors) == MAX_ERRORS
    assert errors[-1]['error'] == "ValueError('failure 24')"
    assert 'Traceback' in errors[-1]['traceback'] and 'failure 24' in errors[-1]['traceback']
    tally.disconnect()


def test_spool_adds_up_processes_and_keeps_retired_counts(tmp_path):
    spool = Spool(str(tmp_path))
    one = {'counts': [['t', 'complete', 2]], 'durations': {'t': [1, 1, 0.5]}, 'errors': []}
    two = {'counts': [['t', 'complete', 3], ['u', 'error', 1]], 'durations': {}, 'errors': []}
    spool.retire(one)  # this process stopped
    spool.publish(two)  # this process (same pid) running again
    total = spool.collect()
    assert outcome_totals(total) == {'complete': 5, 'error': 1}
    assert total['durations'] == {'t': [1, 1, 0.5]}
    spool.retire(two)
    assert outcome_totals(spool.collect()) == {'complete': 5, 'error': 1}
    assert sorted(os.listdir(tmp_path)) == ['.lock', 'retired.json']
    assert merge([]) == {'counts': [], 'durations': {}, 'errors': []}


def test_heartbeat_record_history_and_pruning(huey):
    @huey.task()
    def add(a, b):
        return a + b

    monitor = Monitor(huey, 2, 'thread', False, 1, forks=False)
    try:
        for i in range(3):
            add(i, i)
        huey.execute(huey.dequeue())
        now = time.time()
        assert monitor.tick(now) and not monitor.tick(now + 1)  # one beat per interval
        huey.execute(huey.dequeue())
        assert monitor.tick(now + monitor.interval)
        record = json.loads(huey.storage.heartbeats()[monitor.id])
        assert record['totals'] == {'executed': 2, 'complete': 2}
        minute_counts = sum(counts.get('complete', 0) for _, counts in record['minutes'])
        assert minute_counts == 2
        assert record['depths'][-1][1:3] == [1, 0]  # one task still pending, none scheduled
        assert record['workers'] == 2 and record['implementation'] == 'huey-rs'
        assert not record['stopped']

        stale = dict(record, id='old', beat=now - RETENTION - 1)
        huey.storage.put_heartbeat('old', json.dumps(stale).encode())
        huey.storage.put_heartbeat('garbage', b'not json')
        monitor.prune(now)
        assert set(huey.storage.heartbeats()) == {monitor.id}

        monitor.final_beat()
        assert json.loads(huey.storage.heartbeats()[monitor.id])['stopped']
    finally:
        monitor.close()


def test_history_is_bounded_to_an_hour():
    huey = MemoryHuey('bounded')
    monitor = Monitor(huey, 1, 'thread', False, 1, forks=False)
    start = 1_800_000_000
    for step in range(200):  # 200 minutes of beats
        monitor.beat(start + step * 60)
    record = json.loads(huey.storage.heartbeats()[monitor.id])
    assert len(record['depths']) == 60
    assert record['depths'][0][0] == (start + 199 * 60) // 60 - 59
    monitor.close()


APP = """\
from huey import SqliteHuey

huey = SqliteHuey('procs', filename={db!r})


@huey.task()
def add(a, b):
    return a + b
"""


def test_process_workers_are_added_up_in_the_heartbeat(tmp_path):
    name = f'mon_app_{uuid.uuid4().hex[:8]}'
    (tmp_path / f'{name}.py').write_text(APP.format(db=str(tmp_path / 'q.db')))
    sys.path.insert(0, str(tmp_path))
    try:
        app = __import__(name)
        results = [app.add(i, 1) for i in range(30)]
        consumer = subprocess.Popen(
            [
                sys.executable,
                '-m',
                'huey.bin.huey_consumer',
                f'{name}.huey',
                '-w',
                '3',
                '-k',
                'process',
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert [r.get(blocking=True, timeout=60) for r in results] == [
                i + 1 for i in range(30)
            ]
            deadline = time.monotonic() + 60
            while True:
                records = [json.loads(d) for d in app.huey.storage.heartbeats().values()]
                if records and records[0]['totals'].get('complete') == 30:
                    break
                assert time.monotonic() < deadline, records
                time.sleep(0.2)
            (record,) = records
            assert record['worker_type'] == 'process' and record['workers'] == 3
        finally:
            consumer.send_signal(signal.SIGINT)
            consumer.wait(60)
        (record,) = [json.loads(d) for d in app.huey.storage.heartbeats().values()]
        assert record['stopped'] and record['totals']['complete'] == 30
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
