"""huey's Django example with the stats dashboard (tests/djexample), end to end.

The project (admin, ``huey.contrib.djhuey``, ``huey.contrib.djhuey.stats``, Django's tasks
framework on ``HueyBackend``) is migrated, its consumer is ``manage.py run_huey`` on the test
redis-server (one test runs it all on PostgreSQL: Django's tables, the queue and the stats
tables), and each test drives the project from one more process: ``manage.py shell``
running a snippet that prints its findings as JSON (Django's settings are per process, and
this pytest process already holds tests/djproject's).
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid

import pytest

PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'djexample')

# HueyBackend plugs into Django 6's tasks framework or its backport, django-tasks (>= 0.9),
# which needs Python 3.10: on 3.9 there is nothing to plug into (the example project then
# defines no Django tasks; test_contrib_optional_packages checks the import error).
needs_tasks_framework = pytest.mark.skipif(
    sys.version_info < (3, 10), reason='no Django tasks framework installs on Python 3.9'
)

# Logs in as the superuser the fixture creates; every snippet may use it.
PRELUDE = """
import json, time
from django.test import Client
from huey.contrib.djhuey import HUEY

def admin_client(username='boss'):
    client = Client()
    assert client.login(username=username, password='pw-' + username)
    return client

def wait_for(check, timeout=30, what='condition'):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting for ' + what)
        time.sleep(0.05)
"""


class Example:
    """The project in one data directory, on one Redis queue (or all in one PostgreSQL
    database: ``pg_dsn``)."""

    def __init__(self, data_dir, redis_port, queue, huey_class, pg_dsn=None):
        self.data_dir = data_dir
        self.env = dict(
            os.environ,
            HUEY_DJEXAMPLE_DIR=str(data_dir),
            HUEY_DJEXAMPLE_REDIS_PORT=str(redis_port),
            HUEY_DJEXAMPLE_QUEUE=queue,
            HUEY_DJEXAMPLE_CLASS=huey_class,
            DJANGO_SETTINGS_MODULE='djexample.settings',
        )
        if pg_dsn:
            self.env['HUEY_DJEXAMPLE_PG_DSN'] = pg_dsn
        self.env['PYTHONPATH'] = os.pathsep.join(
            filter(None, [PROJECT, os.environ.get('PYTHONPATH')])
        )

    def manage(self, *args, timeout=120):
        return subprocess.run(
            [sys.executable, 'manage.py', *args],
            cwd=PROJECT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run(self, code, timeout=120):
        """Run ``code`` in ``manage.py shell``; it prints one JSON line last, returned."""
        done = self.manage('shell', '-c', PRELUDE + textwrap.dedent(code), timeout=timeout)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    def consumer(self):
        return subprocess.Popen(
            [sys.executable, 'manage.py', 'run_huey', '-w', '2'],
            cwd=PROJECT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _setup(tmp_path_factory, redis_port, huey_class, pg_dsn=None):
    data_dir = tmp_path_factory.mktemp('djexample')
    example = Example(data_dir, redis_port, uuid.uuid4().hex, huey_class, pg_dsn)
    migrated = example.manage('migrate', '-v', '0')
    assert migrated.returncode == 0, migrated.stderr
    example.run(
        """
        from django.contrib.auth.models import Permission, User
        User.objects.create_superuser('boss', 'boss@example.com', 'pw-boss')
        User.objects.create_user('clerk', password='pw-clerk', is_staff=True)
        viewer = User.objects.create_user('viewer', password='pw-viewer', is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename='view_hueydashboard'))
        print(json.dumps(True))
        """
    )
    return example


@pytest.fixture(scope='module')
def example(tmp_path_factory, redis_server):
    """The migrated project with ``run_huey`` running (stopped with SIGINT afterwards)."""
    yield from _running(_setup(tmp_path_factory, redis_server.port, 'huey.RedisHuey'))


@pytest.fixture(scope='module')
def postgres_example(tmp_path_factory, postgres_server):
    """``example`` with everything in a new PostgreSQL database."""
    import psycopg

    database = f'djexample_{uuid.uuid4().hex[:12]}'
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'create database {database}')
    dsn = postgres_server.dsn.rsplit('/', 1)[0] + '/' + database
    yield from _running(_setup(tmp_path_factory, 0, 'huey.PostgresHuey', dsn))


def _running(example):
    consumer = example.consumer()
    example.consumer_process = consumer
    yield example
    if consumer.poll() is None:
        consumer.send_signal(signal.SIGINT)
        try:
            consumer.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            consumer.kill()
            consumer.communicate()


@pytest.fixture(scope='module')
def quiet_example(tmp_path_factory, redis_server):
    """The migrated project with no consumer (what is enqueued stays in the queue), on a
    PriorityRedisHuey."""
    return _setup(tmp_path_factory, redis_server.port, 'huey.PriorityRedisHuey')


def test_migrate_creates_the_dashboard_permissions_and_the_stats_tables(example):
    found = example.run(
        """
        from django.contrib.auth.models import Permission
        print(json.dumps(sorted(
            p.codename for p in Permission.objects.filter(content_type__app_label='hueystats')
        )))
        """
    )
    assert found == [
        'add_hueydashboard',
        'change_hueydashboard',
        'delete_hueydashboard',
        'view_hueydashboard',
    ]
    stats_db = os.path.join(example.data_dir, 'huey-stats.db')
    with sqlite3.connect(stats_db) as conn:
        tables = {name for (name,) in conn.execute('select name from sqlite_master')}
    assert {'huey_event', 'huey_inflight'} <= tables


def test_consumer_runs_tasks_and_the_dashboard_pages_answer_200(example):
    _check_consumer_and_dashboard(example)


def test_on_postgres_migrate_run_huey_and_the_dashboard_pages_answer_200(postgres_example):
    _check_consumer_and_dashboard(postgres_example)
    found = postgres_example.run(
        """
        import peewee
        from django.db import connection
        print(json.dumps([connection.vendor, sorted(connection.introspection.table_names()),
                          type(HUEY).__name__,
                          isinstance(HUEY._stats.db, peewee.PostgresqlDatabase)]))
        """
    )
    vendor, tables, huey_class, stats_on_postgres = found
    assert vendor == 'postgresql' and huey_class == 'PostgresHuey' and stats_on_postgres
    # Django's, huey's queue tables and the stats tables, side by side in one database.
    assert {'auth_user', 'huey_task', 'huey_kv', 'huey_event', 'huey_inflight'} <= set(tables)


def _check_consumer_and_dashboard(example):
    found = example.run(
        """
        from shop.tasks import add, count_users, flaky
        flaky()  # Its first attempt's error may be read as its result: wait for its events.
        results = [add(2, 3).get(blocking=True, timeout=30),
                   count_users().get(blocking=True, timeout=30)]
        stats = HUEY._stats

        def consumer_events():
            done = stats.search_events(signal='complete')[1]
            names = {event['task'] for event in done}
            return names >= {'add', 'flaky', 'count_users'} and names

        wait_for(consumer_events, what='the consumer to record its events')
        client = admin_client()
        pages = {}
        for url in ('/admin/', '/admin/hueystats/', '/admin/hueystats/hueydashboard/',
                    '/admin/hueystats/hueydashboard/fragment/',
                    '/admin/hueystats/hueydashboard/events/',
                    '/admin/hueystats/hueydashboard/events/?signal=error',
                    '/admin/hueystats/hueydashboard/events/?q=purpose&p=0'):
            response = client.get(url)
            pages[url] = [response.status_code, response.content.decode()]
        breakdown = {row['task']: row for row in stats.task_breakdown()}
        print(json.dumps({'results': results, 'pages': pages, 'flaky': breakdown['flaky']}))
        """
    )
    assert found['results'] == [5, 3]
    pages = found['pages']
    assert {url: status for url, (status, _) in pages.items()} == dict.fromkeys(pages, 200)
    dashboard = pages['/admin/hueystats/hueydashboard/'][1]
    for shown in ('Running now', 'Latest events', 'count_users', 'flaky', 'Danger zone'):
        assert shown in dashboard
    assert 'hs-barchart' in dashboard
    assert 'shop.tasks.flaky' in pages['/admin/hueystats/hueydashboard/fragment/'][1]
    errors = pages['/admin/hueystats/hueydashboard/events/?signal=error'][1]
    assert 'flaky failed on purpose' in errors and '1 event' in errors
    assert (
        'flaky failed on purpose'
        in pages['/admin/hueystats/hueydashboard/events/?q=purpose&p=0'][1]
    )
    # Two attempts of flaky: one error then a retry, then a completion.
    assert (found['flaky']['executed'], found['flaky']['errors'], found['flaky']['completed']) == (
        2,
        1,
        1,
    )


def test_dashboard_buttons_revoke_restore_and_flush(quiet_example):
    found = quiet_example.run(
        """
        from shop.tasks import add
        client = admin_client()
        action = '/admin/hueystats/hueydashboard/action/'
        HUEY.storage.flush_all()
        add(1, 2)
        HUEY.add_schedule(add.s(3, 4, delay=3600))
        before = [HUEY.pending_count(), HUEY.scheduled_count()]
        revoked = client.post(action, {'op': 'revoke_task', 'task': 'shop.tasks.add'})
        after_revoke = add.is_revoked()
        page = client.get('/admin/hueystats/hueydashboard/').content.decode()
        restored = client.post(action, {'op': 'restore_task', 'task': 'shop.tasks.add'})
        flushed = client.post(action, {'op': 'flush_schedule'})
        flushed_queue = client.post(action, {'op': 'flush_queue'})
        unknown = client.post(action, {'op': 'drop_everything'})
        print(json.dumps({
            'statuses': [revoked.status_code, restored.status_code, flushed.status_code,
                         flushed_queue.status_code, unknown.status_code],
            'location': revoked['Location'],
            'revoked': after_revoke, 'restored': not add.is_revoked(),
            'badge': '>revoked<' in page,
            'counts': [before, [HUEY.pending_count(), HUEY.scheduled_count()]],
        }))
        """
    )
    assert found['statuses'] == [302] * 5
    assert found['location'] == '/admin/hueystats/hueydashboard/'
    assert found['revoked'] and found['restored'] and found['badge']
    assert found['counts'] == [[1, 1], [0, 0]]


def test_dashboard_needs_the_view_permission_and_buttons_the_change_permission(quiet_example):
    found = quiet_example.run(
        """
        from django.test import Client
        url = '/admin/hueystats/hueydashboard/'
        anonymous = Client().get(url)
        clerk, viewer = admin_client('clerk'), admin_client('viewer')
        viewer_page = viewer.get(url)
        print(json.dumps({
            'anonymous': [anonymous.status_code, anonymous['Location'].split('?')[0]],
            'clerk': [clerk.get(url).status_code, clerk.get(url + 'events/').status_code],
            'viewer': [viewer_page.status_code, 'Danger zone' in viewer_page.content.decode()],
            'viewer_action': viewer.post(url + 'action/', {'op': 'flush_queue'}).status_code,
            'get_action': admin_client().get(url + 'action/').status_code,
        }))
        """
    )
    assert found['anonymous'] == [302, '/admin/login/']
    assert found['clerk'] == [403, 403]
    assert found['viewer'] == [200, False]
    assert found['viewer_action'] == 403
    assert found['get_action'] == 403


@needs_tasks_framework
def test_django_tasks_run_in_run_huey(example):
    found = example.run(
        """
        import os
        try:
            from django.tasks import TaskResultStatus, default_task_backend
        except ImportError:
            from django_tasks import TaskResultStatus, default_task_backend
        from shop.tasks import attempt_number, explode, multiply

        results = [multiply.enqueue(6, 7), attempt_number.enqueue('x'), explode.enqueue()]

        def finished():
            for result in results:
                result.refresh()
            return all(result.is_finished for result in results)

        wait_for(finished, what='run_huey to run the Django tasks')
        product, context, failure = results
        fetched = default_task_backend.get_result(product.id)
        print(json.dumps({
            'statuses': [r.status.value for r in results],
            'product': product.return_value, 'my_pid': os.getpid(),
            'context': context.return_value,
            'attempts': [r.attempts for r in results],
            'error': [failure.errors[0].exception_class_path,
                      'exploded on purpose' in failure.errors[0].traceback],
            'fetched': [fetched.id == product.id, fetched.return_value == product.return_value,
                        fetched.task.module_path],
            'timestamps': all(r.enqueued_at and r.started_at and r.finished_at for r in results),
        }))
        """
    )
    assert found['statuses'] == ['SUCCESSFUL', 'SUCCESSFUL', 'FAILED']
    assert found['product']['product'] == 42
    assert found['product']['pid'] != found['my_pid']  # The consumer ran it.
    assert found['context'] == ['x', 1]
    assert found['attempts'] == [1, 1, 1]
    assert found['error'] == ['builtins.ValueError', True]
    assert found['fetched'] == [True, True, 'shop.tasks.multiply']
    assert found['timestamps']


@needs_tasks_framework
def test_tasks_backend_priority_eta_and_invalid_tasks(quiet_example):
    found = quiet_example.run(
        """
        import datetime
        from django.utils import timezone
        try:
            from django.tasks import task
            from django.tasks.exceptions import InvalidTask
        except ImportError:
            from django_tasks import task
            from django_tasks.exceptions import InvalidTaskError as InvalidTask
        from shop.tasks import multiply

        HUEY.storage.flush_all()
        multiply.enqueue(1, 1)
        multiply.using(priority=50).enqueue(2, 2)
        multiply.using(priority=-50).enqueue(3, 3)
        order = [HUEY.dequeue().args[1] for _ in range(3)]
        later = timezone.now() + datetime.timedelta(minutes=10)
        deferred = multiply.using(run_after=later).enqueue(4, 4)
        scheduled = HUEY.dequeue()
        rejected = []
        for make in (lambda: task(lambda: 1).enqueue(),
                     lambda: multiply.using(run_after=datetime.datetime.now()),
                     lambda: multiply.using(queue_name='elsewhere')):
            try:
                make()
            except InvalidTask as exc:
                rejected.append(type(exc).__name__)
        print(json.dumps({
            'order': order, 'priority_supported': multiply.get_backend().supports_priority,
            'eta': scheduled.eta is not None and scheduled.args[1] == [4, 4],
            'deferred_status': deferred.status.value, 'rejected': len(rejected),
            'left': HUEY.pending_count(),
        }))
        """
    )
    assert found['priority_supported'] is True
    assert found['order'] == [[2, 2], [1, 1], [3, 3]]
    assert found['eta'] and found['deferred_status'] == 'READY'
    assert found['rejected'] == 3
    assert found['left'] == 0


@needs_tasks_framework
def test_tasks_backend_enqueue_on_commit_and_a_function_that_moved(quiet_example):
    found = quiet_example.run(
        """
        from django.db import transaction
        from django.test import override_settings
        try:
            from django.tasks.exceptions import TaskResultDoesNotExist
        except ImportError:
            from django_tasks.exceptions import TaskResultDoesNotExist
        import shop.tasks

        HUEY.storage.flush_all()
        backend = {'BACKEND': 'huey.contrib.djhuey.tasks_backend.HueyBackend',
                   'ENQUEUE_ON_COMMIT': True}
        out = {}
        with override_settings(TASKS={'default': backend}):
            with transaction.atomic():
                kept = shop.tasks.multiply.enqueue(5, 5)
                out['inside'] = HUEY.pending_count()
                try:
                    kept.refresh()
                except TaskResultDoesNotExist:
                    out['unknown_inside'] = True
            out['after_commit'] = HUEY.pending_count()
            try:
                with transaction.atomic():
                    shop.tasks.multiply.enqueue(6, 6)
                    raise RuntimeError('roll back')
            except RuntimeError:
                pass
            out['after_rollback'] = HUEY.pending_count()

        # The function is gone by the time the consumer runs it: the result says ImportError.
        message = HUEY.dequeue()
        saved = shop.tasks.multiply
        del shop.tasks.multiply
        try:
            HUEY.execute(message)
        finally:
            shop.tasks.multiply = saved
        del shop.tasks.multiply
        try:
            kept.refresh()   # Still readable while the function is missing.
            out['moved'] = [kept.status.value, kept.errors[0].exception_class_path,
                            kept.task.module_path]
        finally:
            shop.tasks.multiply = saved
        print(json.dumps(out))
        """
    )
    assert found['inside'] == 0 and found['unknown_inside']
    assert found['after_commit'] == 1
    assert found['after_rollback'] == 1
    assert found['moved'] == ['FAILED', 'builtins.ImportError', 'shop.tasks.multiply']
