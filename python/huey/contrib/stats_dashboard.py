"""What the stats dashboards show and do, shared by the Django admin
(``huey.contrib.djhuey.stats``) and the Flask panel (``huey.contrib.flask_admin``): the
storage's live counts and listings beside the events ``HueyStats`` recorded, the buttons'
operations, and the presentation helpers their templates use."""

import functools
import os

from huey import signals as S


def short_name(name):
    """A task's name without its module."""
    return name.rsplit('.', 1)[-1]


# What dashboards show besides the recorded events --------------------------------------


def _or_default(read, default):
    """``read()``, or ``default`` when the storage cannot answer (a dashboard still shows
    the rest of the page when, say, Redis is down)."""
    try:
        return read()
    except Exception:
        return default


def live_counts(huey):
    """Pending, scheduled and result counts straight from the storage (None when it fails)."""
    return {
        'pending': _or_default(huey.pending_count, None),
        'scheduled': _or_default(huey.scheduled_count, None),
        'results': _or_default(huey.result_count, None),
    }


def pending_tasks(huey, limit=50):
    def read():
        return [
            {'task': type(t).__name__, 'id': t.id, 'priority': t.priority, 'eta': t.eta}
            for t in huey.pending(limit)
        ]

    return _or_default(read, [])


def scheduled_tasks(huey, limit=50):
    def read():
        return [
            {'task': type(t).__name__, 'id': t.id, 'eta': t.eta} for t in huey.scheduled(limit)
        ]

    return _or_default(read, [])


def known_tasks(huey):
    """The tasks registered in this process, by name, with whether they are revoked."""
    rows = []
    for full, task_class in sorted(huey._registry._registry.items()):
        rows.append(
            {
                'full': full,
                'task': task_class.__name__,
                'revoked': _or_default(lambda c=task_class: huey.is_revoked(c), False),
            }
        )
    return rows


# The numbers of a task nothing was recorded for (dashboard_context leaves its stats None).
NO_TASK_STATS = {'executed': 0, 'completed': 0, 'errors': 0, 'retries': 0, 'avg': None}


def dashboard_context(huey, stats, list_limit=50, event_limit=50, throughput_minutes=60):
    """Everything a dashboard page shows, as plain data."""
    breakdown = {row['full']: row for row in stats.task_breakdown()}
    known = known_tasks(huey)
    for row in known:
        row['stats'] = breakdown.get(row['full'])
        row['registered'] = True
    # A web process may not import the consumer's tasks: list what was recorded too.
    registered = {row['full'] for row in known}
    for full in sorted(set(breakdown) - registered):
        known.append(
            {
                'full': full,
                'task': short_name(full),
                'revoked': False,
                'registered': False,
                'stats': breakdown[full],
            }
        )
    return {
        'live': live_counts(huey),
        'overview': stats.overview(),
        'known': known,
        'inflight': stats.inflight(),
        'events': stats.recent_events(event_limit),
        'pending': pending_tasks(huey, list_limit),
        'scheduled': scheduled_tasks(huey, list_limit),
        'throughput': stats.throughput(throughput_minutes),
    }


def _task_class(huey, form):
    return huey._registry.string_to_task(form['task'])


# Dashboard buttons: operation name -> what it does with the posted form.
ACTIONS = {
    'revoke_task': lambda huey, form: huey.revoke_all(_task_class(huey, form)),
    'restore_task': lambda huey, form: huey.restore_all(_task_class(huey, form)),
    'revoke_id': lambda huey, form: huey.revoke_by_id(form['id']),
    'restore_id': lambda huey, form: huey.restore_by_id(form['id']),
    'flush_queue': lambda huey, form: huey.storage.flush_queue(),
    'flush_results': lambda huey, form: huey.storage.flush_results(),
    'flush_schedule': lambda huey, form: huey.storage.flush_schedule(),
    'flush_locks': lambda huey, form: huey.flush_locks(),
}


def run_action(huey, op, form):
    """Carry out the dashboard operation ``op`` (a key of ``ACTIONS``; others are ignored)."""
    action = ACTIONS.get(op)
    if action is not None:
        action(huey, form)


# Presentation shared by the dashboards (Django template tags, the Flask panel's Jinja) -----

# Badge colour of each signal (CSS class hs-sig-<colour>); other signals are "quiet".
SIGNAL_COLOURS = {
    S.SIGNAL_COMPLETE: 'ok',
    S.SIGNAL_ERROR: 'err',
    S.SIGNAL_DEAD_LETTER: 'err',
    S.SIGNAL_EXECUTING: 'run',
    S.SIGNAL_RETRYING: 'warn',
    S.SIGNAL_TIMEOUT: 'warn',
    S.SIGNAL_EXPIRED: 'warn',
    S.SIGNAL_INTERRUPTED: 'warn',
    S.SIGNAL_SCHEDULED: 'info',
    S.SIGNAL_REVOKED: 'dark',
    S.SIGNAL_CANCELED: 'dark',
}


def signal_colour(signal):
    return SIGNAL_COLOURS.get(signal, 'quiet')


def format_duration(seconds):
    """A run time: '850 ms', '2.40 s'; '' when unknown."""
    if seconds is None:
        return ''
    if seconds < 1:
        return f'{seconds * 1000:.0f} ms'
    return f'{seconds:.2f} s'


def format_elapsed(seconds):
    """Time since a task started: '12.5s', '3m 20s', '2h 5m'."""
    seconds = max(0, seconds)
    if seconds < 60:
        return f'{seconds:.1f}s'
    minutes = int(seconds // 60)
    if minutes < 60:
        return f'{minutes}m {int(seconds % 60)}s'
    return f'{minutes // 60}h {minutes % 60}m'


def bar_chart_svg(complete, error=None, width=600, height=56):
    """An SVG bar per slot of ``throughput()``: completions (class hs-bar-ok) with errors
    (hs-bar-err) stacked on top. Numbers only, so the markup is safe to embed as is."""
    slots = len(complete) or 1
    error = list(error or [0] * slots)
    slot_width = width / slots
    top, baseline = 4, height - 4
    scale = (baseline - top) / max([1] + [c + e for c, e in zip(complete, error)])
    bars = []
    for i, (done, failed) in enumerate(zip(complete, error)):
        x, bar_width = i * slot_width + slot_width * 0.15, slot_width * 0.7
        done_height, failed_height = int(done) * scale, int(failed) * scale
        for css, count, y, bar_height in (
            ('hs-bar-ok', done, baseline - done_height, done_height),
            ('hs-bar-err', failed, baseline - done_height - failed_height, failed_height),
        ):
            if count:
                bars.append(
                    f'<rect class="{css}" x="{x:.2f}" y="{y:.2f}" width="{bar_width:.2f}" '
                    f'height="{bar_height:.2f}"></rect>'
                )
    return (
        f'<svg class="hs-barchart" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
        'role="img" aria-label="completed and failed tasks per minute">'
        f'<rect x="0" y="{top}" width="{width}" height="{baseline - top}" fill="currentColor" '
        f'opacity="0.04"></rect>{"".join(bars)}<line x1="0" y1="{baseline}" x2="{width}" '
        f'y2="{baseline}" stroke="currentColor" opacity="0.3" '
        'vector-effect="non-scaling-stroke"></line></svg>'
    )


@functools.lru_cache(maxsize=1)
def dashboard_css():
    """The dashboards' style sheet (``stats.css`` beside this module)."""
    with open(os.path.join(os.path.dirname(__file__), 'stats.css'), encoding='utf8') as fh:
        return fh.read()
