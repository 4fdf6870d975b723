"""``huey.contrib.flask_admin``: the Huey dashboard as a panel of flask-peewee's admin.

Install with ``pip install huey-rs[flask]`` (flask-peewee and wtf-peewee), then::

    from flask_peewee.admin import Admin
    from huey.contrib.flask_admin import HueyPanel

    admin = Admin(app, auth)
    admin.register_panel('Huey', HueyPanel, huey)   # events go to auth's database,
    admin.setup()                                   # or pass db=... after huey

The admin's index shows a card (queue counts, today's completions and errors, a sparkline);
its "Manage" link opens the dashboard: throughput, per-task numbers with revoke/restore,
running, pending and scheduled tasks, recent events, and flush buttons. The consumer records
the events: call ``enable_stats(huey, db)`` where the consumer imports ``huey`` too.

As in huey 3.5.4, ``HueyPanel`` is None when flask-peewee is not installed.
"""

from huey.contrib.stats import HueyStats, enable_stats

try:
    import flask_peewee  # noqa: F401
except ImportError:
    HueyPanel = None
else:
    from huey.contrib.flask_admin.panel import HueyPanel

__all__ = ['HueyPanel', 'HueyStats', 'enable_stats']
