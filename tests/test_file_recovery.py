"""FileStorage under damage: bad bytes, lost files and a full or read-only disk.

Each damage test fills a 20,000-task queue (or 100 scheduled tasks), damages it the way a bad
disk, a careless operator or an attacker would, then checks that every undamaged task comes
out exactly once, the damage is logged or dead-lettered, and new tasks still go through.
"""

import datetime
import errno
import logging
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from huey.storage import FileStorage

TASKS = 20_000
FILLER = b'x' * 500  # about two 8 MiB segments of 20,000 tasks


def message(i):
    return b'%05d:' % i + FILLER


def number(data):
    return int(data.split(b':', 1)[0])


def record_len(body):
    # frame.rs: a 16-byte header, the body, zeros up to the next 8-byte boundary.
    return (16 + body + 7) // 8 * 8


RECORD = record_len(len(message(0)))


@pytest.fixture
def filled(tmp_path):
    path = str(tmp_path / 'huey')
    storage = FileStorage('test', path)
    for i in range(TASKS):
        storage.enqueue(message(i))
    return path


def segments(path):
    queue = os.path.join(path, 'queue.d')
    return [os.path.join(queue, n) for n in sorted(os.listdir(queue)) if n.endswith('.seg')]


def drain(storage):
    out = []
    while (data := storage.dequeue()) is not None:
        out.append(data)
    return out


def check_delivered(path, missing, caplog=None):
    """Every task but `missing` exactly once, in order; then the queue takes new tasks."""
    storage = FileStorage('test', path)
    got = [number(d) for d in drain(storage)]
    assert len(got) == len(set(got)), 'a task was delivered twice'
    assert sorted(got) == got, 'FIFO order broken'
    assert set(got) == set(range(TASKS)) - set(missing)
    storage.enqueue(b'after')
    assert storage.dequeue() == b'after' and storage.dequeue() is None
    return storage


def corrupt(path, offset, value=b'\xff'):
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(value)


def test_one_bad_header_costs_one_task_which_is_dead_lettered(filled, caplog):
    first = segments(filled)[0]
    corrupt(first, 1234 * RECORD + 5)  # the length field of task 1234
    with caplog.at_level(logging.ERROR, logger='huey.storage.file'):
        storage = check_delivered(filled, [1234])
    [letter] = storage.dead_letters()
    assert f'{first} at bytes {1234 * RECORD}..{1235 * RECORD}' in letter['reason']
    assert letter['data'][16:21] == b'01234'  # the damaged record's bytes, kept
    assert any(letter['id'] in r.getMessage() for r in caplog.records)


def test_one_bad_payload_byte_costs_one_task(filled):
    corrupt(segments(filled)[0], 777 * RECORD + 100)
    storage = check_delivered(filled, [777])
    assert storage.dead_letter_count() == 1


def test_a_truncated_segment_loses_only_what_was_cut(filled):
    first, second = segments(filled)[:2]
    size = os.path.getsize(first)
    per_segment = size // RECORD
    # Cut the segment inside its last record (its end-of-segment record goes too).
    os.truncate(first, (per_segment - 1) * RECORD + 40)
    check_delivered(filled, [per_segment - 1])


def test_a_truncated_tail_segment_never_swallows_later_tasks(tmp_path):
    path = str(tmp_path / 'huey')
    storage = FileStorage('test', path)
    for i in range(100):
        storage.enqueue(message(i))
    [seg] = segments(path)
    os.truncate(seg, 50 * RECORD)
    for i in range(100, 110):
        storage.enqueue(message(i))
    got = [number(d) for d in drain(storage)]
    assert got == list(range(50)) + list(range(100, 110))


def test_a_deleted_segment_loses_only_its_tasks_and_later_ones_still_come(filled):
    first, second = segments(filled)[:2]
    per_segment = os.path.getsize(first) // RECORD
    os.remove(second)
    storage = FileStorage('test', filled)
    storage.enqueue(message(TASKS))
    got = [number(d) for d in drain(storage)]
    assert got == list(range(per_segment)) + [TASKS]


def test_a_deleted_tail_segment_never_swallows_later_tasks(tmp_path):
    path = str(tmp_path / 'huey')
    storage = FileStorage('test', path)
    for i in range(100):
        storage.enqueue(message(i))
    [seg] = segments(path)
    os.remove(seg)
    for i in range(100, 110):
        storage.enqueue(message(i))
    assert [number(d) for d in drain(storage)] == list(range(100, 110))


@pytest.mark.parametrize('how', ['deleted', 'zeroed', 'truncated', 'garbage'])
def test_a_lost_index_is_rebuilt_from_the_segments(filled, how, caplog):
    storage = FileStorage('test', filled)
    taken = [number(storage.dequeue()) for _ in range(5000)]
    assert taken == list(range(5000))
    index = os.path.join(filled, 'queue.d', 'index')
    size = os.path.getsize(index)
    if how == 'deleted':
        os.remove(index)
    elif how == 'zeroed':
        with open(index, 'r+b') as f:
            f.write(bytes(size))
    elif how == 'truncated':
        os.truncate(index, 0)
    else:
        with open(index, 'r+b') as f:
            f.write(os.urandom(64))
    with caplog.at_level(logging.WARNING, logger='huey.storage.file'):
        # The same (live) process notices, as does a fresh one.
        assert storage.queue_size() == TASKS - 5000
    assert any('rebuilt' in r.getMessage() for r in caplog.records)
    check_delivered(filled, taken)


def test_an_index_truncated_under_a_live_process_is_no_signal(tmp_path):
    code = """
        import os, sys
        from huey.storage import FileStorage
        s = FileStorage('t', sys.argv[1])
        s.enqueue(b'a'); s.enqueue(b'b', 7)
        os.truncate(os.path.join(sys.argv[1], 'queue.d', 'index'), 100)
        assert s.queue_size() == 2, s.queue_size()
        assert s.dequeue() == b'b' and s.dequeue() == b'a'
        print('ok')
    """
    proc = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code), str(tmp_path / 'h')],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr)


def test_one_bad_journal_record_costs_one_scheduled_task(tmp_path, caplog):
    path = str(tmp_path / 'huey')
    storage = FileStorage('test', path)
    base = datetime.datetime(2030, 1, 1)
    for i in range(100):
        storage.add_to_schedule(b'%03d' % i + FILLER[:40], base + datetime.timedelta(seconds=i))
    journal = os.path.join(path, 'schedule.d', 'journal')
    # Each add is one record of 16 + 16 + 43 bytes.
    corrupt(journal, 49 * record_len(16 + 43) + 40)
    with caplog.at_level(logging.ERROR, logger='huey.storage.file'):
        again = FileStorage('test', path)
        due = again.read_schedule(base + datetime.timedelta(days=1))
    assert [int(d[:3]) for d in due] == [i for i in range(100) if i != 49]
    [letter] = again.dead_letters()
    assert 'damaged schedule record' in letter['reason'] and journal in letter['reason']
    assert FileStorage('test', path).dead_letter_count() == 1  # reported once
    again.add_to_schedule(b'later', base)
    assert again.read_schedule(base) == [b'later']


def test_damaged_results_and_counters_are_reported_not_read_as_missing(storage_path):
    storage = FileStorage('test', storage_path)
    storage.put_data('k', b'value')
    path = storage.path_for_key('k')
    corrupt(path, 0, b'\x00\x00\x09')
    with pytest.raises(OSError) as info:
        storage.peek_data('k')
    assert info.value.errno == errno.EBADMSG and os.fspath(info.value.filename) == path
    with pytest.raises(OSError):
        storage.pop_data('k')
    assert os.path.exists(path), 'a damaged result is kept for inspection'
    assert storage.result_items() == {}  # left out of the listing, as huey 3.5.4 does
    storage.incr('c', 5)
    counter = os.path.join(
        storage_path, 'counters', os.listdir(os.path.join(storage_path, 'counters'))[0]
    )
    with open(counter, 'w') as f:
        f.write('garbage')
    with pytest.raises(OSError, match='not a counter'):
        storage.incr('c')


@pytest.fixture
def storage_path(tmp_path):
    return str(tmp_path / 'huey')


def test_one_bad_inflight_entry_does_not_stop_lease_recovery(storage_path):
    storage = FileStorage('test', storage_path)
    for data in (b'good', b'bad-priority', b'other'):
        storage.enqueue(data)
    for token in ('t1', 't2', 't3'):
        storage.dequeue_reliable('c', token, 0.0)
    inflight = os.path.join(storage_path, 'inflight')
    # An impossible priority (u32 LE after the 5-byte magic), and an unreadable entry.
    corrupt(os.path.join(inflight, 't2'), 5, struct.pack('<I', 70000))
    os.mkdir(os.path.join(inflight, 't4'))
    os.utime(os.path.join(inflight, 't4'), (0, 0))
    requeued, dead = storage.recover_expired(3, now=time.time() + 10)
    assert requeued == 2 and dead == []
    assert sorted(drain(storage)) == [b'good', b'other']
    reasons = sorted(letter['reason'] for letter in storage.dead_letters())
    assert len(reasons) == 2
    assert 'priority 70000 is outside' in reasons[0]
    assert 't4' in reasons[1]
    assert storage.inflight_items() == []
    assert storage.recover_expired(3, now=time.time() + 10) == (0, [])


# -- a full or read-only filesystem --------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs mounted at tmp_path/fs (root only; CI runs as root)."""
    if os.geteuid() != 0 or shutil.which('mount') is None:
        reason = 'full-disk tests mount a tmpfs: they need root (CI runs them as root)'
        print(reason)
        pytest.skip(reason)
    mount = tmp_path / 'fs'
    mount.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(mount)], check=True)
    yield str(mount)
    subprocess.run(['umount', '-l', str(mount)], check=False)


def run_child(code, *args, timeout=120):
    proc = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode >= 0, f'killed by signal {-proc.returncode}: {proc.stderr}'
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


FILL = """
def fill(directory):
    # Take every free byte, so the next allocation fails with ENOSPC.
    fd = os.open(os.path.join(directory, 'filler'), os.O_WRONLY | os.O_CREAT)
    for size in (65536, 4096, 1):
        try:
            while True:
                os.write(fd, bytes(size))
        except OSError:
            pass
    os.close(fd)
"""


def test_a_full_disk_raises_enospc_and_keeps_everything(small_fs):
    code = (
        'import errno, os, sys\nfrom huey.storage import FileStorage\n'
        + textwrap.dedent(FILL)
        + textwrap.dedent(
            """
        root = sys.argv[1]
        s = FileStorage('t', os.path.join(root, 'h'))
        for i in range(200):
            s.enqueue(b'%03d' % i + b'.' * 100)
        fill(root)
        for call in (lambda: s.enqueue(b'x' * 5000), lambda: s.enqueue(b'y' * 5000, 9),
                     lambda: s.put_data('k', b'v' * 5000)):
            try:
                call()
            except OSError as e:
                assert e.errno == errno.ENOSPC and e.filename, e
            else:
                raise AssertionError('no ENOSPC')
        assert s.queue_size() == 200, s.queue_size()
        try:
            FileStorage('t', os.path.join(root, 'new'))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        else:
            raise AssertionError('opened a store on a full disk')
        os.remove(os.path.join(root, 'filler'))
        s.enqueue(b'after', 3)
        got = [s.dequeue() for _ in range(201)]
        assert got[0] == b'after' and [g[:3] for g in got[1:]] == [b'%03d' % i for i in range(200)]
        assert s.dequeue() is None
        print('ok')
        """
        )
    )
    assert run_child(code, small_fs).strip() == 'ok'


def test_a_read_only_filesystem_raises_erofs(small_fs):
    FileStorage('t', os.path.join(small_fs, 'h')).enqueue(b'kept')
    subprocess.run(['mount', '-o', 'remount,ro', small_fs], check=True)
    code = """
        import errno, os, sys
        from huey.storage import FileStorage
        try:
            FileStorage('t', os.path.join(sys.argv[1], 'h'))
        except OSError as e:
            assert e.errno == errno.EROFS and e.filename, e
            print('ok')
    """
    assert run_child(code, small_fs).strip() == 'ok'
    subprocess.run(['mount', '-o', 'remount,rw', small_fs], check=True)
    assert FileStorage('t', os.path.join(small_fs, 'h')).dequeue() == b'kept'


def test_a_consumer_on_a_full_disk_never_dies_by_signal(small_fs, tmp_path):
    app = tmp_path / 'fullapp.py'
    done = tmp_path / 'done'
    done.mkdir()
    app.write_text(
        textwrap.dedent(
            f"""
            import os
            from huey import FileHuey
            huey = FileHuey('full', path={os.path.join(small_fs, 'h')!r})

            @huey.task()
            def mark(i):
                open(os.path.join({str(done)!r}, str(i)), 'w').close()
                return 'x' * 2000
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}' + os.environ.get('PYTHONPATH', ''))
    enqueue = """
        import sys
        sys.path.insert(0, sys.argv[1])
        import fullapp
        for i in range(int(sys.argv[2]), int(sys.argv[3])):
            fullapp.mark(i)
    """
    run_child(enqueue, tmp_path, 0, 50)
    filler = textwrap.dedent(FILL) + '\nimport sys\nfill(sys.argv[1])\n'
    subprocess.run([sys.executable, '-c', 'import os\n' + filler, small_fs], check=True)
    log = open(tmp_path / 'consumer.log', 'w+b')  # noqa: SIM115 - closed below
    consumer = subprocess.Popen(
        [sys.executable, '-m', 'huey.bin.huey_consumer', 'fullapp.huey', '-w', '2'],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def output():
        log.seek(0)
        return log.read().decode(errors='replace')[-3000:]

    try:
        deadline = time.monotonic() + 60
        while len(os.listdir(done)) < 50 and time.monotonic() < deadline:
            assert consumer.poll() is None, output()
            time.sleep(0.1)
        os.remove(os.path.join(small_fs, 'filler'))
        run_child(enqueue, tmp_path, 50, 60)
        deadline = time.monotonic() + 60
        while len(os.listdir(done)) < 60 and time.monotonic() < deadline:
            assert consumer.poll() is None, output()
            time.sleep(0.1)
        assert sorted(int(n) for n in os.listdir(done)) == list(range(60)), output()
    finally:
        consumer.send_signal(2)
        code = consumer.wait(30)
        log.close()
    assert code >= 0, f'consumer killed by signal {-code}'
