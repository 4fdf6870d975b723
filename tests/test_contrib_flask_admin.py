"""huey.contrib.flask_admin: HueyPanel in a real flask-peewee admin, driven by Flask's test
client, over a SqliteHuey whose tasks really run."""

import pytest
from flask import Flask
from flask_peewee.admin import Admin
from flask_peewee.auth import Auth
from flask_peewee.db import Database

from huey import SqliteHuey
from huey.contrib.flask_admin import HueyPanel


@pytest.fixture
def site(tmp_path):
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY='huey-rs-tests-only',
        DATABASE={'name': str(tmp_path / 'site.db'), 'engine': 'peewee.SqliteDatabase'},
    )
    db = Database(app)
    auth = Auth(app, db)
    auth.User.create_table()
    for name, is_admin in (('boss', True), ('visitor', False)):
        user = auth.User(username=name, email=f'{name}@example.com', active=True, admin=is_admin)
        user.set_password('pw-' + name)
        user.save()
    huey = SqliteHuey('flask-site', filename=str(tmp_path / 'queue.db'))

    @huey.task()
    def add(a, b):
        return a + b

    @huey.task()
    def fail():
        raise ValueError('failed on purpose')

    admin = Admin(app, auth)
    admin.register_panel('Huey', HueyPanel, huey, flush_interval=60)
    admin.setup()
    site = type('Site', (), {})()
    site.app, site.huey, site.add, site.fail = app, huey, add, fail
    site.add_name = huey._registry.task_to_string(add.task_class)
    site.stats = huey._stats
    yield site
    site.stats.close()
    huey.storage.close()


def login(site, name):
    client = site.app.test_client()
    response = client.post('/accounts/login/', data={'username': name, 'password': 'pw-' + name})
    assert response.status_code == 302
    return client


def run_all(huey):
    while (task := huey.dequeue()) is not None:
        huey.execute(task)


def test_card_and_dashboard_show_what_ran(site):
    site.add(1, 2)
    site.fail()
    run_all(site.huey)
    site.add.schedule((3, 4), delay=3600)  # Stays pending: nothing runs it here.
    assert site.stats._flush() > 0

    client = login(site, 'boss')
    index = client.get('/admin/')
    assert index.status_code == 200
    card = index.get_data(as_text=True)
    assert 'Manage' in card and '/admin/huey/' in card
    assert '1 completed' in card and '1 errors' in card

    page = client.get('/admin/huey/')
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for shown in ('add', 'fail', 'failed on purpose', 'Danger zone', 'hs-barchart', 'Revoke'):
        assert shown in html
    assert '<style>' in html  # The shared dashboard style sheet.

    fragment = client.get('/admin/huey/fragment')
    assert fragment.status_code == 200
    assert 'Latest events' in fragment.get_data(as_text=True)


def test_buttons_revoke_restore_and_flush(site):
    client = login(site, 'boss')
    action = '/admin/huey/action'
    revoked = client.post(action, data={'op': 'revoke_task', 'task': site.add_name})
    assert revoked.status_code == 302 and revoked.headers['Location'].endswith('/admin/huey/')
    assert site.add.is_revoked()
    assert '>revoked<' in client.get('/admin/huey/').get_data(as_text=True)
    client.post(action, data={'op': 'restore_task', 'task': site.add_name})
    assert not site.add.is_revoked()
    # A task no longer registered (a stale page): the dashboard says so and carries on.
    stale = client.post(action, data={'op': 'revoke_task', 'task': 'gone.task'})
    assert stale.status_code == 302
    assert 'gone.task not found' in client.get('/admin/huey/').get_data(as_text=True)

    site.add(5, 6)
    assert site.huey.pending_count() == 1
    assert client.get(action, query_string={'op': 'flush_queue'}).status_code == 302
    assert site.huey.pending_count() == 1  # A GET changes nothing.
    client.post(action, data={'op': 'flush_queue'})
    assert site.huey.pending_count() == 0


def test_pages_need_an_admin_login(site):
    anonymous = site.app.test_client().get('/admin/huey/')
    assert anonymous.status_code == 302 and '/accounts/login/' in anonymous.headers['Location']
    visitor = login(site, 'visitor')
    assert visitor.get('/admin/huey/').status_code == 403
    assert visitor.post('/admin/huey/action', data={'op': 'flush_queue'}).status_code == 403


def test_a_panel_without_a_database_says_what_to_pass(tmp_path):
    app = Flask(__name__)
    admin = Admin(app, auth=None)
    huey = SqliteHuey('no-db', filename=str(tmp_path / 'queue.db'))
    with pytest.raises(RuntimeError, match=r'register_panel\("Huey", HueyPanel, huey, db\)'):
        admin.register_panel('Huey', HueyPanel, huey)
