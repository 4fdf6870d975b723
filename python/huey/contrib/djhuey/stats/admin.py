"""The dashboard pages, as the admin of the table-less HueyDashboard model:

admin/hueystats/hueydashboard/            the dashboard (its "change list")
admin/hueystats/hueydashboard/fragment/   the dashboard's content, polled by the page
admin/hueystats/hueydashboard/events/     the event log, filtered and paged
admin/hueystats/hueydashboard/action/     POST: revoke, restore, flush
"""

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from huey.contrib.djhuey.stats.models import HueyDashboard

# Buttons in the dashboard's "danger zone": operation, label.
DANGER_OPERATIONS = (
    ('flush_queue', 'Flush queue'),
    ('flush_schedule', 'Flush schedule'),
    ('flush_results', 'Flush results'),
    ('flush_locks', 'Flush locks'),
)


def get_huey():
    from huey.contrib.djhuey import HUEY

    return HUEY


def _stats(huey):
    return getattr(huey, '_stats', None)


def _page_number(text):
    try:
        return max(0, int(text))
    except (TypeError, ValueError):
        return 0


@admin.register(HueyDashboard)
class HueyDashboardAdmin(admin.ModelAdmin):
    list_limit = 50  # pending and scheduled tasks listed
    event_limit = 50  # recent events on the dashboard
    event_page_size = 100  # events per page of the event log
    throughput_minutes = 60

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_action_permission(self, request):
        """Revoke, restore and flush need the model's "change" permission."""
        codename = get_permission_codename('change', self.opts)
        return request.user.has_perm(f'{self.opts.app_label}.{codename}')

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path('fragment/', view(self.fragment_view), name='hueystats_dashboard_fragment'),
            path('action/', view(self.action_view), name='hueystats_dashboard_action'),
            path('events/', view(self.events_view), name='hueystats_dashboard_events'),
            *super().get_urls(),
        ]

    def _require_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied

    def dashboard_context(self, request):
        from huey.contrib.stats_dashboard import NO_TASK_STATS, dashboard_context, live_counts

        huey = get_huey()
        stats = _stats(huey)
        can_act = self.has_action_permission(request)
        if stats is None:
            return {'enabled': False, 'live': live_counts(huey), 'can_act': can_act}
        context = dashboard_context(
            huey, stats, self.list_limit, self.event_limit, self.throughput_minutes
        )
        for row in context['known']:
            if row['stats'] is None:
                row['stats'] = dict(NO_TASK_STATS)
        live, overview = context['live'], context['overview']
        context.update(
            enabled=True,
            can_act=can_act,
            danger_ops=DANGER_OPERATIONS,
            tiles=[
                {'value': live['pending'], 'label': 'Pending', 'cls': ''},
                {'value': live['scheduled'], 'label': 'Scheduled', 'cls': ''},
                {'value': live['results'], 'label': 'Results', 'cls': ''},
                {'value': overview['inflight'], 'label': 'Running', 'cls': 'hs-run'},
                {'value': overview['completed'], 'label': 'Completed 24h', 'cls': 'hs-ok'},
                {
                    'value': overview['errors'],
                    'label': 'Errors 24h',
                    'cls': 'hs-err',
                    'sub': f'{overview["error_rate"] * 100:.1f}% error rate',
                },
                {
                    'value': overview['dead_letters'],
                    'label': 'Dead letters 24h',
                    'cls': 'hs-err' if overview['dead_letters'] else '',
                },
            ],
        )
        return context

    def changelist_view(self, request, extra_context=None):
        self._require_view(request)
        context = {
            **self.admin_site.each_context(request),
            'title': 'Huey',
            'opts': self.opts,
            **self.dashboard_context(request),
        }
        return TemplateResponse(request, 'admin/hueystats/dashboard.html', context)

    def fragment_view(self, request):
        self._require_view(request)
        return TemplateResponse(
            request, 'admin/hueystats/_content.html', self.dashboard_context(request)
        )

    def events_view(self, request):
        self._require_view(request)
        stats = _stats(get_huey())
        context = {
            **self.admin_site.each_context(request),
            'title': 'Huey events',
            'opts': self.opts,
            'enabled': stats is not None,
        }
        if stats is not None:
            context.update(self._event_page(request, stats))
        return TemplateResponse(request, 'admin/hueystats/events.html', context)

    def _event_page(self, request, stats):
        filters = {key: request.GET.get(key) or '' for key in ('signal', 'task', 'q')}
        page = _page_number(request.GET.get('p'))
        size = self.event_page_size
        total, events = stats.search_events(
            signal=filters['signal'] or None,
            task=filters['task'] or None,
            q=filters['q'] or None,
            limit=size,
            offset=page * size,
        )
        query = urlencode([(key, value) for key, value in filters.items() if value])
        return {
            **filters,
            'events': events,
            'total': total,
            'page': page,
            'signals': stats.event_signals(),
            'tasks': stats.event_tasks(),
            'qs': query + '&' if query else '',
            'prev_page': page - 1,
            'next_page': page + 1,
            'has_next': (page + 1) * size < total,
            'start': page * size + 1,
            'end': min(total, page * size + len(events)),
        }

    def action_view(self, request):
        if request.method != 'POST' or not self.has_action_permission(request):
            raise PermissionDenied
        from huey.contrib.stats_dashboard import ACTIONS, run_action

        operation = request.POST.get('op')
        if operation in ACTIONS:
            what = operation.replace('_', ' ')
            try:
                run_action(get_huey(), operation, request.POST)
            except Exception as exc:
                message, level = f'Huey: {what} failed: {exc}', messages.ERROR
            else:
                message, level = f'Huey: {what} done.', messages.SUCCESS
            self.message_user(request, message, level, fail_silently=True)
        return HttpResponseRedirect(reverse('admin:hueystats_hueydashboard_changelist'))
