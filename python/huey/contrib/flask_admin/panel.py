"""HueyPanel: the flask-peewee admin panel (see ``huey.contrib.flask_admin``).

Pages, under the admin's URL prefix and the panel's slug (``/admin/huey/`` for "Huey"):
``/`` the dashboard, ``/fragment`` its content (polled by the page), ``/action`` (POST)
revoke, restore and flush. flask-peewee's admin requires a logged-in admin user for all.
"""

import os

from flask import flash, redirect, render_template, request, url_for
from flask_peewee.admin import AdminPanel
from jinja2 import ChoiceLoader, FileSystemLoader
from markupsafe import Markup

from huey.contrib.stats import enable_stats
from huey.contrib.stats_dashboard import (
    ACTIONS,
    NO_TASK_STATS,
    bar_chart_svg,
    dashboard_context,
    dashboard_css,
    format_duration,
    format_elapsed,
    live_counts,
    run_action,
    signal_colour,
)

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'templates')

# Buttons in the dashboard's "danger zone": operation, label.
DANGER_OPERATIONS = (
    ('flush_queue', 'Flush queue'),
    ('flush_schedule', 'Flush schedule'),
    ('flush_results', 'Flush results'),
    ('flush_locks', 'Flush locks'),
)


def _badge(signal):
    return Markup('<span class="hs-badge hs-sig-{}">{}</span>').format(
        signal_colour(signal), signal
    )


# Jinja helpers the panel's templates use (the same ones the Django dashboard uses).
JINJA_GLOBALS = {
    'huey_barchart': lambda complete, error, width=600, height=56: Markup(
        bar_chart_svg(complete, error, int(width), int(height))
    ),
    'huey_css': lambda: Markup('<style>{}</style>').format(Markup(dashboard_css())),
    'huey_badge': _badge,
}
JINJA_FILTERS = {
    'huey_duration': lambda seconds: format_duration(seconds) or Markup('&mdash;'),
    'huey_elapsed': format_elapsed,
}


class HueyPanel(AdminPanel):
    """``admin.register_panel(title, HueyPanel, huey, db=None, **HueyStats options)``.

    ``db`` is where the events are recorded (a peewee database, or flask-peewee's
    ``Database``); by default the admin's auth database.
    """

    template_name = 'admin/huey/card.html'
    list_limit = 50
    event_limit = 50
    throughput_minutes = 60

    def __init__(self, admin, title, huey, db=None, **kwargs):
        super().__init__(admin, title)
        if db is None:
            db = getattr(getattr(admin, 'auth', None), 'db', None)
        if db is None:
            raise RuntimeError(
                'HueyPanel has no database to record huey stats in: pass one, as in '
                'admin.register_panel("Huey", HueyPanel, huey, db)'
            )
        self.huey = huey
        self.stats = enable_stats(huey, db, **kwargs)
        self._install_templates(admin.app)

    @staticmethod
    def _install_templates(app):
        env = app.jinja_env
        if getattr(env, '_huey_panel_templates', False):
            return
        env.loader = ChoiceLoader([env.loader, FileSystemLoader(TEMPLATE_DIR)])
        env.globals.update(JINJA_GLOBALS)
        env.filters.update(JINJA_FILTERS)
        env._huey_panel_templates = True

    def detail_url(self):
        return url_for(self.get_url_name('index'))

    def get_context(self):
        """The admin index card: live counts and, when stats can be read, today's numbers
        and the last half hour's completions."""
        context = {
            'live': live_counts(self.huey),
            'detail_url': self.detail_url(),
            'enabled': True,
            'overview': None,
            'spark': [],
        }
        try:
            context['overview'] = self.stats.overview()
            context['spark'] = self.stats.throughput(30)['complete']
        except Exception:
            context['enabled'] = False
        return context

    def get_urls(self):
        # flask-peewee names each URL after its view's __name__: keep index/fragment/action.
        return (('/', self.index), ('/fragment', self.fragment), ('/action', self.action))

    def _dashboard(self):
        context = dashboard_context(
            self.huey, self.stats, self.list_limit, self.event_limit, self.throughput_minutes
        )
        for row in context['known']:
            if row['stats'] is None:
                row['stats'] = dict(NO_TASK_STATS)
        context.update(panel=self, danger_ops=DANGER_OPERATIONS)
        return context

    def index(self):
        return render_template('admin/huey/dashboard.html', admin=self.admin, **self._dashboard())

    def fragment(self):
        return render_template('admin/huey/_content.html', **self._dashboard())

    def action(self):
        operation = request.form.get('op')
        if request.method == 'POST' and operation in ACTIONS:
            try:
                run_action(self.huey, operation, request.form)
            except Exception as exc:
                flash(f'Huey: {operation.replace("_", " ")} failed: {exc}', 'danger')
            else:
                flash(f'Huey: {operation.replace("_", " ")} done.', 'success')
        return redirect(self.detail_url())
