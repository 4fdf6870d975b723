"""Human-readable output of the ``huey`` command: plain-text tables from ``huey.status``'s
data (``--json`` prints that data itself)."""

import datetime

from huey.status import ago


def when(unix):
    if unix is None:
        return '-'
    return datetime.datetime.fromtimestamp(unix).strftime('%Y-%m-%d %H:%M:%S')


def table(columns, rows):
    """``columns``: (heading, key or function) pairs; every cell is shown as text."""
    cells = [[heading for heading, _ in columns]]
    for row in rows:
        line = []
        for _, getter in columns:
            value = getter(row) if callable(getter) else row.get(getter)
            line.append('-' if value is None else str(value))
        cells.append(line)
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return '\n'.join(
        '  '.join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in cells
    )


def footer(data, noun):
    shown, total = len(data['items']), data['total']
    if not total:
        return f'no {noun} in queue {data["queue"]!r}'
    more = f' ({total - shown} more: --limit {total})' if total > shown else ''
    return f'{total} {noun} in queue {data["queue"]!r}{more}'


TASK_COLUMNS = [
    ('ID', 'id'),
    ('NAME', 'name'),
    ('ARGS', 'args'),
    ('ETA', 'eta'),
    ('PRIORITY', 'priority'),
    ('RETRIES', 'retries'),
]


def _listing(noun, columns):
    def render(data):
        text = footer(data, noun)
        if data['items']:
            text = table(columns, data['items']) + '\n' + text
        return text

    return render


pending = _listing('pending', TASK_COLUMNS)
scheduled = _listing('scheduled', TASK_COLUMNS)
results = _listing(
    'keys',
    [('KEY', 'key'), ('KIND', 'kind'), ('SIZE', 'size'), ('VALUE', 'value')],
)
inflight = _listing(
    'in flight',
    [
        ('ID', 'id'),
        ('NAME', 'name'),
        ('ARGS', 'args'),
        ('CONSUMER', 'consumer'),
        ('DELIVERIES', 'deliveries'),
        ('LEASE AGE', lambda row: ago(row['lease_age'])),
        (
            'EXPIRES IN',
            lambda row: ('-' if row['expires_in'] < 0 else '') + ago(row['expires_in']),
        ),
    ],
)
dead_letters = _listing(
    'dead letters',
    [
        ('LETTER', 'letter'),
        ('TIME', lambda row: when(row['time'])),
        ('NAME', 'name'),
        ('DELIVERIES', 'deliveries'),
        ('REASON', lambda row: row['reason'][:80]),
    ],
)


def dead_letter(data):
    lines = [
        f'letter:     {data["letter"]}',
        f'time:       {when(data["time"])}',
        f'deliveries: {data["deliveries"]}',
        f'reason:     {data["reason"]}',
        f'size:       {data["size"]} bytes',
    ]
    if data['message'] is None:
        lines.append('message:    <cannot be decoded>')
        lines.append(f'data (hex): {data["data_hex"][:200]}')
    else:
        lines.append('message:')
        lines.extend(f'  {field}: {value}' for field, value in data['message'].items())
    return '\n'.join(lines)


def enqueued(data):
    eta = f' (eta {data["eta"]})' if data['eta'] else ''
    return f'{data["id"]}  {data["name"]}{eta}'


def info(data):
    pending = data['pending']
    lines = [
        f'queue {data["queue"]!r} on {data["storage"]}'
        + (' (reliable delivery)' if data['reliable'] else ''),
        f'  pending:      {pending["total"]}',
    ]
    if pending['by_priority'] and any(p['priority'] for p in pending['by_priority']):
        sample = ' (first 1000)' if pending['sampled'] else ''
        counts = ', '.join(f'p{p["priority"]}: {p["count"]}' for p in pending['by_priority'])
        lines.append(f'    by priority{sample}: {counts}')
    scheduled = data['scheduled']
    next_eta = f' (next due {scheduled["next_eta"]})' if scheduled['next_eta'] else ''
    lines.append(f'  scheduled:    {scheduled["total"]}{next_eta}')
    lines.append(f'  results:      {data["results"]["total"]}')
    inflight = data['in_flight']
    oldest = inflight['oldest_lease_age']
    lines.append(
        f'  in flight:    {inflight["total"]}'
        + (f' (oldest lease {ago(oldest)} old)' if oldest is not None else '')
    )
    for item in inflight['items']:
        lines.append(
            f'    {item["name"]}  lease {ago(item["lease_age"])} old  ({item["consumer"]})'
        )
    lines.append(f'  dead letters: {data["dead_letters"]["total"]}')
    consumers = data['consumers']
    alive = sum(1 for c in consumers if c['alive'])
    lines.append(f'consumers: {alive} running, {len(consumers) - alive} gone')
    for c in consumers:
        state = 'running' if c['alive'] else ('stopped' if c['stopped'] else 'silent')
        lines.append(
            f'  {c["id"]}  {state}, last heartbeat {ago(c["age"])} ago, '
            f'{c["workers"]} {c["worker_type"]} worker(s), {c["implementation"]} '
            f'{c["version"]}, up since {when(c["started"])}'
        )
    if data['periodic']:
        lines.append('periodic tasks:')
        for task in data['periodic']:
            lines.append(f'  {task["name"]}  next run {task["next_run"] or "not within 7 days"}')
    return '\n'.join(lines)
