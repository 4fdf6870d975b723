"""The dashboard's panel: one server-rendered HTML fragment (counts, charts as inline SVG,
consumers, recent errors, in flight, dead letters, scheduled and periodic tasks), built from
``huey.status``. The page embeds it; the page's script fetches it again to refresh."""

import datetime
import time
from html import escape

from huey import status
from huey.status import ago as age

LISTED = 50  # rows per table
SERIES_COLORS = {
    'complete': '#1b7f3b',
    'error': '#b3261e',
    'pending': '#2f6fdb',
    'scheduled': '#c77c0e',
}


def clock(unix):
    return datetime.datetime.fromtimestamp(unix).strftime('%H:%M:%S')


def cell(value, cls=None):
    text = '-' if value is None else escape(str(value))
    return f'<td class="{cls}">{text}</td>' if cls else f'<td>{text}</td>'


def table(headings, rows, empty):
    if not rows:
        return f'<p class="empty">{escape(empty)}</p>'
    head = ''.join(f'<th>{escape(h)}</th>' for h in headings)
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def chart(title, minutes, series, chart_id):
    """A line chart of ``series`` (keys of each minute's dict) over the last hour."""
    width, height, pad = 600, 160, 24
    values = [m[key] for m in minutes for key in series if m[key] is not None]
    top = max(values + [1])
    step = (width - 2 * pad) / max(len(minutes) - 1, 1)
    parts = [
        f'<svg class="chart" id="{chart_id}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">'
    ]
    for fraction in (0, 0.5, 1):
        y = height - pad - fraction * (height - 2 * pad)
        parts.append(
            f'<line class="grid" x1="{pad}" x2="{width - pad}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(f'<text class="axis" x="2" y="{y + 3:.1f}">{top * fraction:.0f}</text>')
    for i in (0, len(minutes) - 1):
        x = pad + i * step
        parts.append(
            f'<text class="axis" x="{x - 12:.1f}" y="{height - 6}">'
            f'{clock(minutes[i]["time"])[:5]}</text>'
        )
    for key in series:
        points = [
            f'{pad + i * step:.1f},{height - pad - (m[key] / top) * (height - 2 * pad):.1f}'
            for i, m in enumerate(minutes)
            if m[key] is not None
        ]
        if points:
            parts.append(
                f'<polyline data-series="{key}" fill="none" stroke="{SERIES_COLORS[key]}" '
                f'stroke-width="2" points="{" ".join(points)}"/>'
            )
    parts.append('</svg>')
    legend = ''.join(
        f'<span><i style="background:{SERIES_COLORS[key]}"></i>{escape(key)}</span>'
        for key in series
    )
    return (
        f'<section><h2>{escape(title)}</h2>{"".join(parts)}'
        f'<div class="legend">{legend}</div></section>'
    )


def _form(root, action, csrf, label, fields=(), confirm=None, danger=False):
    hidden = ''.join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(str(v))}">' for k, v in fields
    )
    ask = f' data-confirm="{escape(confirm)}"' if confirm else ''
    cls = ' class="danger"' if danger else ''
    return (
        f'<form method="post" action="{root}{action}"{ask}>'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">{hidden}'
        f'<button type="submit"{cls}>{escape(label)}</button></form>'
    )


def render(huey, csrf, root=''):
    now = time.time()
    storage = huey.storage
    consumer_rows = status.consumers(huey, now)
    gauges = status.gauges(huey, storage, now)
    minutes = status.history(huey, now, consumer_rows)
    if minutes:  # the current minute's depths: read now, not at the last heartbeat
        minutes[-1]['pending'] = gauges['pending']
        minutes[-1]['scheduled'] = gauges['scheduled']
    out = []

    counts = [
        ('pending', 'pending', gauges['pending'], False),
        ('scheduled', 'scheduled', gauges['scheduled'], False),
        ('in-flight', 'in flight', gauges['in_flight'], False),
        ('dead-letters', 'dead letters', gauges['dead_letters'], gauges['dead_letters'] > 0),
        ('results', 'results', gauges['results'], False),
        ('consumers', 'consumers', gauges['consumers'], gauges['consumers'] == 0),
    ]
    boxes = ''.join(
        f'<div class="count{" alert" if alert else ""}"><span class="n" id="{key}-count">{n}'
        f'</span><span class="label">{escape(label)}</span></div>'
        for key, label, n, alert in counts
    )
    out.append(f'<div class="counts">{boxes}</div><p></p>')

    out.append('<div class="charts">')
    out.append(
        chart('Throughput (tasks per minute)', minutes, ('complete', 'error'), 'throughput')
    )
    out.append(chart('Queue depth', minutes, ('pending', 'scheduled'), 'depth'))
    out.append('</div>')

    rows = []
    for c in consumer_rows:
        state = 'running' if c['alive'] else ('stopped' if c['stopped'] else 'silent')
        rows.append(
            '<tr>'
            + cell(c['id'], 'mono')
            + f'<td class="{"ok" if c["alive"] else "bad"}">{state}</td>'
            + cell(f'{age(c["age"])} ago')
            + cell(f'{c["workers"]} {c["worker_type"]}')
            + cell(f'{c["implementation"]} {c["version"]}')
            + cell(c['totals'].get('complete', 0))
            + cell(c['totals'].get('error', 0))
            + '</tr>'
        )
    out.append(
        '<section id="consumers"><h2>Consumers</h2>'
        + table(
            ['consumer', 'state', 'last heartbeat', 'workers', 'version', 'complete', 'errors'],
            rows,
            'No consumer has written a heartbeat in the last hour.',
        )
        + '</section>'
    )

    rows = []
    for i, error in enumerate(status.recent_errors(consumer_rows)):
        rows.append(
            '<tr>'
            + cell(clock(error['time']))
            + cell(error['task'])
            + cell(error['id'], 'mono')
            + f'<td><details id="error-{i}"><summary>{escape(error["error"])}</summary>'
            f'<pre>{escape(error["traceback"])}</pre></details></td></tr>'
        )
    out.append(
        '<section id="errors"><h2>Recent errors</h2>'
        + table(['time', 'task', 'id', 'error'], rows, 'No errors in the last hour.')
        + '</section>'
    )

    inflight = status.inflight(huey, now, LISTED)
    rows = [
        '<tr>'
        + cell(row['name'])
        + cell(row['id'], 'mono')
        + cell(row['consumer'], 'mono')
        + cell(row['deliveries'])
        + cell(age(row['lease_age']))
        + cell(('expired ' if row['expires_in'] < 0 else 'in ') + age(row['expires_in']))
        + '</tr>'
        for row in inflight['items']
    ]
    out.append(
        f'<section id="inflight"><h2>In flight ({inflight["total"]})</h2>'
        + table(
            ['task', 'id', 'consumer', 'deliveries', 'lease age', 'lease ends'],
            rows,
            'Nothing in flight (in-flight leases exist with Huey(reliable=True)).',
        )
        + '</section>'
    )

    letters = status.dead_letters(huey, LISTED)
    rows = [
        f'<tr id="letter-{escape(row["letter"])}">'
        + cell(row['letter'], 'mono')
        + cell(clock(row['time']))
        + cell(row['name'])
        + cell(row['deliveries'])
        + cell(row['reason'])
        + '<td>'
        + _form(root, '/dlq/requeue', csrf, 'Requeue', [('id', row['letter'])])
        + '</td></tr>'
        for row in letters['items']
    ]
    actions = ''
    if letters['total']:
        actions = (
            '<div class="actions">'
            + _form(root, '/dlq/requeue', csrf, 'Requeue all', [('all', '1')])
            + _form(
                root,
                '/dlq/purge',
                csrf,
                'Purge all',
                confirm=f'Delete all {letters["total"]} dead letters?',
                danger=True,
            )
            + '</div>'
        )
    out.append(
        f'<section id="dead-letters"><h2>Dead letters ({letters["total"]})</h2>'
        + actions
        + table(
            ['letter', 'time', 'task', 'deliveries', 'reason', ''],
            rows,
            'The dead-letter queue is empty.',
        )
        + '</section>'
    )

    scheduled = status.scheduled(huey, LISTED)
    rows = [
        '<tr>'
        + cell(row['eta'])
        + cell(row['name'])
        + cell(row['id'], 'mono')
        + cell(row['args'], 'mono')
        + cell(row['retries'])
        + '</tr>'
        for row in scheduled['items']
    ]
    out.append(
        f'<section id="scheduled"><h2>Scheduled ({scheduled["total"]})</h2>'
        + table(['eta', 'task', 'id', 'args', 'retries'], rows, 'Nothing is scheduled.')
        + '</section>'
    )

    rows = [
        '<tr>' + cell(row['name']) + cell(row['next_run'] or 'not within 7 days') + '</tr>'
        for row in status.periodic(huey)
    ]
    out.append(
        '<section id="periodic"><h2>Periodic tasks</h2>'
        + table(['task', 'next run'], rows, 'This app has no periodic tasks.')
        + '</section>'
    )
    return '\n'.join(out)
