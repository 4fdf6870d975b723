"""huey._native.PathWatcher, the one wake-up watcher of FileStorage and SqliteStorage, with
inotify and with the short-poll fallback that macOS and Windows take (forced here with
HUEY_RS_WATCHER=poll)."""

import sys
import threading
import time

import pytest

from huey._native import PathWatcher
from huey.storage import FileStorage
from huey.storage.sqlite import _WalWatcher

MODES = ['inotify', 'poll'] if sys.platform.startswith('linux') else ['poll']


@pytest.fixture(params=MODES)
def mode(request, monkeypatch):
    if request.param == 'poll':
        monkeypatch.setenv('HUEY_RS_WATCHER', 'poll')
    else:
        monkeypatch.delenv('HUEY_RS_WATCHER', raising=False)
    return request.param


def test_a_file_watcher_sees_writes_and_removal(tmp_path, mode):
    path = tmp_path / 'db-wal'
    assert PathWatcher.create(path) is None, 'nothing to watch yet'
    path.write_bytes(b'a')
    watcher = PathWatcher.create(path)
    assert watcher.polling == (mode == 'poll')
    assert watcher.drain() is False
    time.sleep(0.01)  # a new mtime for the poll to see
    with open(path, 'ab') as f:
        f.write(b'more')
    watcher.wait(1.0)
    assert watcher.drain() is True
    assert watcher.drain() is False
    path.unlink()
    watcher.wait(0.05)
    assert watcher.drain() is None
    watcher.close()
    assert watcher.drain() is None
    with pytest.raises(ValueError, match='timeout'):
        watcher.wait(float('nan'))


def test_close_from_another_thread_ends_a_wait(tmp_path, mode):
    path = tmp_path / 'f'
    path.write_bytes(b'')
    watcher = PathWatcher.create(path)
    waiter = threading.Thread(target=watcher.wait, args=(0.5,))
    waiter.start()
    watcher.close()
    waiter.join(5)
    assert not waiter.is_alive()


def test_dequeue_wait_and_wait_result_wake_on_another_writer(tmp_path, mode):
    storage = FileStorage('w', str(tmp_path / 'h'))
    other = FileStorage('w', str(tmp_path / 'h'))
    got = []
    waiter = threading.Thread(target=lambda: got.append(storage.dequeue_wait(30)))
    waiter.start()
    time.sleep(0.2)
    started = time.monotonic()
    other.enqueue(b'wake')
    waiter.join(30)
    assert got == [b'wake'] and time.monotonic() - started < 5
    found = []
    waiter = threading.Thread(target=lambda: found.append(storage.wait_result('k', 30)))
    waiter.start()
    time.sleep(0.2)
    other.put_data('k', b'v')
    waiter.join(30)
    assert found == [True] and storage.peek_data('k') == b'v'


def test_sqlite_uses_the_native_watcher_and_polls_without_it(tmp_path, mode):
    db = tmp_path / 'q.db'
    (tmp_path / 'q.db-wal').write_bytes(b'')
    watcher = _WalWatcher.create(str(db))
    if mode == 'poll':
        assert watcher is None  # SqliteStorage's own data_version poll takes over
    else:
        assert isinstance(watcher, PathWatcher) and not watcher.polling
        watcher.close()
