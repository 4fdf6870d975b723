"""The web dashboard: access token and CSRF checks over plain HTTP, and the page in a real
headless Chromium (Debian's ``chromium``, driven by Playwright) against a live consumer:
the numbers change as tasks run, and clicking Requeue on a dead letter puts it back on the
queue, where the consumer runs it."""

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from huey import MemoryHuey
from huey.dashboard import serve

CHROMIUM = os.environ.get('HUEY_TEST_CHROMIUM', '/usr/bin/chromium')
WAIT = 60


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def request(url, data=None, headers=None):
    """(status, headers, body) without following redirects."""
    body = None if data is None else urllib.parse.urlencode(data).encode()
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with OPENER.open(req, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


@pytest.fixture
def memory_dashboard():
    huey = MemoryHuey('dash-unit')

    @huey.task()
    def add(a, b):
        return a + b

    server = serve(huey, ('127.0.0.1', 0))
    yield huey, add, server
    server.shutdown()


def test_actions_need_post_and_the_csrf_token(memory_dashboard):
    huey, add, server = memory_dashboard
    letter = huey.storage.put_dead_letter(huey.serialize_task(add.s(1, 2)), 'test', 1)
    status, _, page = request(server.url)
    assert status == 200 and f'id="letter-{letter}"' in page
    assert "default-src 'self'" in request(server.url)[1]['Content-Security-Policy']

    # No token, a wrong token, a GET, another origin: all refused, nothing changes.
    assert request(server.url + 'dlq/requeue', {'id': letter})[0] == 403
    assert request(server.url + 'dlq/requeue', {'id': letter, 'csrf': 'x' * 64})[0] == 403
    assert request(server.url + 'dlq/requeue?id=' + letter)[0] == 404
    csrf = server.app.csrf
    assert f'value="{csrf}"' in page
    status, _, _ = request(
        server.url + 'dlq/purge', {'csrf': csrf}, {'Origin': 'http://evil.example'}
    )
    assert status == 403
    assert huey.dead_letter_count() == 1 and huey.pending_count() == 0

    status, headers, _ = request(server.url + 'dlq/requeue', {'id': letter, 'csrf': csrf})
    assert status == 303 and headers['Location'].startswith('/?done=Requeued+1')
    assert huey.dead_letter_count() == 0 and huey.pending_count() == 1
    huey.storage.put_dead_letter(b'junk', 'junk', 1)
    status, _, _ = request(server.url + 'dlq/purge', {'csrf': csrf})
    assert status == 303 and huey.dead_letter_count() == 0


def test_token_required_away_from_localhost():
    huey = MemoryHuey('dash-token')
    with pytest.raises(ValueError, match='not localhost'):
        serve(huey, ('0.0.0.0', 0))
    server = serve(huey, ('127.0.0.1', 0), token='s3cret')
    try:
        assert request(server.url)[0] == 401
        assert request(server.url + 'panel')[0] == 401
        assert request(server.url + '?token=wrong')[0] == 401
        status, headers, _ = request(server.url + '?token=s3cret')
        assert status == 303 and 'HttpOnly' in headers['Set-Cookie']
        cookie = headers['Set-Cookie'].split(';')[0]
        assert request(server.url, headers={'Cookie': cookie})[0] == 200
        assert request(server.url + 'panel', headers={'Authorization': 'Bearer s3cret'})[0] == 200
        # The CSRF token is tied to the access token too, and POST needs both.
        csrf = server.app.csrf
        assert request(server.url + 'dlq/purge', {'csrf': csrf})[0] == 401
        assert request(server.url + 'dlq/purge', {'csrf': csrf}, {'Cookie': cookie})[0] == 303
    finally:
        server.shutdown()
    server = serve(huey, ('0.0.0.0', 0), token='s3cret')  # allowed with a token
    server.shutdown()


def test_storage_error_is_shown_not_raised(redis_server_factory):
    from huey import RedisHuey

    redis = redis_server_factory()
    huey = RedisHuey('dash-down', url=redis.url)
    server = serve(huey, ('127.0.0.1', 0))
    try:
        redis.stop()
        status, _, page = request(server.url)
        assert status == 200 and 'id="storage-error"' in page and 'ConnectionError' in page
        assert request(server.url + 'panel')[0] == 503
    finally:
        server.shutdown()


APP = """\
from huey import SqliteHuey

huey = SqliteHuey('dash-live', filename={db!r})


@huey.task()
def add(a, b):
    return a + b
"""


def chromium_path():
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    found = shutil.which('chromium')
    if found is None:
        pytest.fail(
            f'chromium not found at {CHROMIUM} or on PATH: the dashboard test needs a real '
            'browser (Debian: apt-get install chromium, or `make chromium`)'
        )
    return found


def inotify_instances():
    """Open inotify instances on the machine (Chromium needs some; the limit is per user)."""
    count = 0
    for fd_dir in glob.glob('/proc/[0-9]*/fd'):
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                count += os.readlink(os.path.join(fd_dir, name)) == 'anon_inode:inotify'
            except OSError:
                pass
    return count


@contextlib.contextmanager
def chromium(browser_path, attempts=3):
    """Playwright driving Chromium. A start that dies (seen on a loaded machine) is tried
    again with a fresh Playwright driver; the errors of every attempt are in the failure."""
    from playwright.sync_api import sync_playwright

    errors = []
    for _ in range(attempts):
        manager = sync_playwright()
        playwright = manager.start()
        try:
            browser = playwright.chromium.launch(
                executable_path=browser_path,
                args=['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
                timeout=WAIT * 1000,
            )
        except Exception as exc:
            errors.append(f'{type(exc).__name__}: {exc}')
            with contextlib.suppress(Exception):
                playwright.stop()
            continue
        try:
            yield browser
        finally:
            with contextlib.suppress(Exception):
                browser.close()
            playwright.stop()
        return
    limit = open('/proc/sys/fs/inotify/max_user_instances').read().strip()
    pytest.fail(
        f'Chromium ({browser_path}) did not start: {" | ".join(errors)} '
        f'(inotify instances open: {inotify_instances()}, per-user limit {limit})'
    )


def test_dashboard_in_chromium_against_a_live_consumer(tmp_path, monkeypatch):
    try:
        from playwright.sync_api import expect
    except ImportError:
        pytest.fail('playwright is not installed: pip install playwright (make dev installs it)')
    expect.set_options(timeout=WAIT * 1000)  # a loaded machine: every wait gets WAIT
    browser_path = chromium_path()
    monkeypatch.setenv('DEBUG', 'pw:browser')  # the browser's own log, shown if this fails
    (tmp_path / 'dash_app.py').write_text(APP.format(db=str(tmp_path / 'q.db')))
    sys.path.insert(0, str(tmp_path))
    import dash_app

    huey = dash_app.huey
    consumer = subprocess.Popen(
        [sys.executable, '-m', 'huey.bin.huey_consumer', 'dash_app.huey', '-w', '2'],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / 'consumer.log', 'wb'),
    )
    server = serve(huey, ('127.0.0.1', 0), refresh=0.5)
    try:
        with chromium(browser_path) as browser:
            page = browser.new_page(viewport={'width': 1280, 'height': 1400})
            page.goto(server.url)
            expect(page.locator('h1')).to_contain_text('dash-live')
            # The consumer's first heartbeat appears without reloading the page.
            expect(page.locator('#consumers-count')).to_have_text('1', timeout=WAIT * 1000)
            expect(page.locator('#consumers')).to_contain_text('running')
            results_before = int(page.locator('#results-count').inner_text())

            for i in range(5):
                dash_app.add(i, i)
            expect(page.locator('#results-count')).to_have_text(
                str(results_before + 5), timeout=WAIT * 1000
            )

            task = dash_app.add.s(20, 22)
            letter = huey.storage.put_dead_letter(huey.serialize_task(task), 'KeyError: x', 1)
            row = page.locator(f'#letter-{letter}')
            expect(row).to_be_visible(timeout=WAIT * 1000)
            expect(page.locator('#dead-letters-count')).to_have_text('1')
            row.get_by_role('button', name='Requeue').click()
            expect(page.locator('#notice')).to_contain_text('Requeued 1 dead letter')
            refreshed = page.locator('#refreshed').text_content()
            expect(page.locator('#refreshed')).not_to_have_text(refreshed)  # a refresh...
            expect(page.locator('#notice')).to_contain_text('Requeued 1')  # ...keeps it
            expect(page.locator(f'#letter-{letter}')).to_have_count(0)
            expect(page.locator('#dead-letters-count')).to_have_text('0')
            # The requeued message is the same task: the consumer runs it and stores 42 (read
            # with preserve=True: a plain read takes the result away, and the count with it).
            assert huey.result(task.id, blocking=True, timeout=WAIT, preserve=True) == 42
            expect(page.locator('#results-count')).to_have_text(
                str(results_before + 6), timeout=WAIT * 1000
            )
            shot = os.environ.get('HUEY_DASHBOARD_SCREENSHOT')
            if shot:
                page.screenshot(path=shot, full_page=True)
    finally:
        server.shutdown()
        sys.path.remove(str(tmp_path))
        sys.modules.pop('dash_app', None)
        consumer.send_signal(signal.SIGINT)
        try:
            consumer.wait(30)
        except subprocess.TimeoutExpired:
            consumer.kill()
            consumer.wait()
    log = Path(tmp_path / 'consumer.log').read_text()
    assert 'Traceback' not in log, log
    assert huey.dead_letter_count() == 0
