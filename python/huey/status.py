"""What a queue holds, as plain data: the one place the `huey` command, the dashboard and
the metrics gauges read a storage.

Everything here reads; nothing dequeues, pops, acks or writes. Messages are decoded with the
Huey's serializer into huey's ``Message`` fields without looking up the task class, so
messages of tasks this process does not know are still listed. The dicts returned are the
``--json`` output of the `huey` command, described by ``huey/cli/schema.json``:

- times of events (heartbeats, dead letters, leases) are unix seconds (floats);
- task ``eta`` and ``expires`` are ISO 8601 strings, naive as the Huey keeps them (UTC when
  ``Huey(utc=True)``, the default);
- ``args`` is a preview: ``repr`` of the positional and keyword arguments, cut to 100
  characters.
"""

import datetime
import json
import reprlib

from huey.constants import EmptyData
from huey.monitor import HISTORY_MINUTES
from huey.registry import Message
from huey.utils import Error

PREVIEW = 100
SAMPLE = 1000  # messages decoded for the priority breakdown and the next due time
PERIODIC_HORIZON = 7 * 24 * 60  # minutes searched for a periodic task's next run

_repr = reprlib.Repr()
_repr.maxstring = PREVIEW
_repr.maxother = PREVIEW
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 10


def preview(value):
    text = _repr.repr(value)
    return text if len(text) <= PREVIEW else text[: PREVIEW - 3] + '...'


def ago(seconds):
    """A duration for people: ``'4s'``, ``'3m'``, ``'2h'``, ``'5d'``."""
    if seconds is None:
        return '-'
    seconds = abs(seconds)
    for unit, size in (('d', 86400), ('h', 3600), ('m', 60)):
        if seconds >= size:
            return f'{seconds / size:.0f}{unit}'
    return f'{seconds:.0f}s'


def iso(value):
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return None if value is None else str(value)


def decode(huey, data):
    """``Message`` fields of a stored message, or None when it cannot be decoded."""
    try:
        message = huey.serializer.deserialize(data)
    except Exception:
        return None
    if isinstance(message, Message):
        return message
    if isinstance(message, tuple) and len(message) <= len(Message._fields):
        return Message(*message)
    return None


def message_row(huey, data):
    """One task message as a row: id, name, args, eta, priority, retries, expires."""
    message = decode(huey, data)
    if message is None:
        return {
            'id': None,
            'name': None,
            'args': f'<undecodable message, {len(data)} bytes>',
            'eta': None,
            'priority': None,
            'retries': None,
            'expires': None,
        }
    args = _repr.repr(tuple(message.args or ()))
    if message.kwargs:
        args = f'{args} {_repr.repr(message.kwargs)}'
    if len(args) > PREVIEW:
        args = args[: PREVIEW - 3] + '...'
    return {
        'id': message.id,
        'name': message.name,
        'args': args,
        'eta': iso(message.eta),
        'priority': message.priority,
        'retries': message.retries,
        'expires': iso(message.expires_resolved or message.expires),
    }


def _listing(command, huey, total, items):
    return {
        'command': command,
        'version': 1,
        'queue': huey.name,
        'total': total,
        'items': items,
    }


def pending(huey, limit=None):
    storage = huey.storage
    rows = [message_row(huey, data) for data in storage.enqueued_items(limit)]
    return _listing('pending', huey, storage.queue_size(), rows)


def scheduled(huey, limit=None):
    storage = huey.storage
    rows = [message_row(huey, data) for data in storage.scheduled_items(limit)]
    rows.sort(key=lambda row: row['eta'] or '')
    return _listing('scheduled', huey, storage.schedule_size(), rows)


def result_kind(key, value):
    if key.startswith('r:'):
        return 'revocation'
    if key.startswith('rt:'):
        return 'task-revocation'
    if '.lock.' in key:
        return 'lock'
    if key.startswith('chord:'):
        return 'chord'
    if key.startswith('dead-letter:'):
        return 'dead-letter'
    return 'error' if isinstance(value, Error) else 'result'


def results(huey, limit=None):
    storage = huey.storage
    items = storage.result_items()
    keys = sorted(str(k) for k in items)
    if limit is not None:
        keys = keys[:limit]
    raw = {str(k): v for k, v in items.items()}
    rows = []
    for key in keys:
        data = raw[key]
        try:
            value = huey.serializer.deserialize(data)
            text = preview(value.metadata.get('error') if isinstance(value, Error) else value)
        except Exception:
            value, text = EmptyData, '<undecodable value>'
        size = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else None
        rows.append({'key': key, 'kind': result_kind(key, value), 'size': size, 'value': text})
    return _listing('results', huey, len(items), rows)


def inflight_entries(huey, storage=None):
    """``storage.inflight_items()`` when the Huey uses reliable delivery (nothing is ever in
    flight otherwise; asking would make some storages create their in-flight tables)."""
    if not huey.reliable:
        return []
    return (storage or huey.storage).inflight_items()


def lease_age(huey, lease_until, now):
    """Seconds since the lease ending at ``lease_until`` was granted or last renewed."""
    return max(now - (lease_until - huey.lease), 0.0)


def inflight(huey, now, limit=None):
    entries = inflight_entries(huey)
    rows = []
    for token, consumer, deliveries, lease_until, data in entries[:limit]:
        row = message_row(huey, data)
        row.update(
            token=token,
            consumer=consumer,
            deliveries=deliveries,
            lease_until=lease_until,
            lease_age=lease_age(huey, lease_until, now),
            expires_in=lease_until - now,
        )
        rows.append(row)
    return _listing('inflight', huey, len(entries), rows)


def letter_row(huey, letter):
    row = message_row(huey, letter['data'])
    row.update(
        letter=str(letter['id']),
        reason=letter['reason'],
        time=letter['time'],
        deliveries=letter['deliveries'],
        size=len(letter['data']),
    )
    return row


def dead_letters(huey, limit=None):
    storage = huey.storage
    rows = [letter_row(huey, letter) for letter in storage.dead_letters(limit)]
    return _listing('dlq-list', huey, storage.dead_letter_count(), rows)


def dead_letter(huey, id):
    """One letter in full (its message decoded field by field), or None."""
    for letter in huey.storage.dead_letters():
        if str(letter['id']) == str(id):
            break
    else:
        return None
    row = letter_row(huey, letter)
    message = decode(huey, letter['data'])
    row.update(
        command='dlq-show',
        version=1,
        queue=huey.name,
        data_hex=bytes(letter['data'][:4096]).hex(),
        message=None
        if message is None
        else {field: preview(getattr(message, field)) for field in Message._fields},
    )
    return row


def consumers(huey, now, storage=None):
    """Consumers with a heartbeat record, newest beat first."""
    storage = storage or huey.storage
    rows = []
    for consumer, data in storage.heartbeats().items():
        try:
            record = json.loads(data)
            beat = float(record['beat'])
        except (ValueError, KeyError, TypeError):
            continue
        interval = float(record.get('interval') or 5)
        stopped = bool(record.get('stopped'))
        rows.append(
            {
                'id': consumer,
                'host': record.get('host'),
                'pid': record.get('pid'),
                'implementation': record.get('implementation'),
                'version': record.get('version'),
                'workers': record.get('workers'),
                'worker_type': record.get('worker_type'),
                'reliable': record.get('reliable'),
                'started': record.get('started'),
                'last_heartbeat': beat,
                'age': max(now - beat, 0.0),
                'alive': not stopped and now - beat <= 3 * interval,
                'stopped': stopped,
                'totals': record.get('totals') or {},
                '_record': record,
            }
        )
    rows.sort(key=lambda row: -row['last_heartbeat'])
    return rows


def public(rows):
    return [{k: v for k, v in row.items() if not k.startswith('_')} for row in rows]


def history(huey, now, consumer_rows=None):
    """The last hour, minute by minute, from the consumers' heartbeat records: outcome
    counts added up over consumers, and queue depths as last sampled by any of them."""
    if consumer_rows is None:
        consumer_rows = consumers(huey, now)
    last = int(now // 60)
    first = last - HISTORY_MINUTES + 1
    counts = {m: {} for m in range(first, last + 1)}
    depths = {}
    # Oldest beat first, so the newest sample of a minute wins.
    for row in sorted(consumer_rows, key=lambda r: r['last_heartbeat']):
        record = row['_record']
        for minute, outcomes in record.get('minutes') or ():
            if minute in counts:
                for outcome, n in outcomes.items():
                    counts[minute][outcome] = counts[minute].get(outcome, 0) + n
        for minute, *sample in record.get('depths') or ():
            if first <= minute <= last:
                depths[minute] = sample
    minutes = []
    for minute in range(first, last + 1):
        sample = depths.get(minute)
        minutes.append(
            {
                'time': minute * 60,
                'complete': counts[minute].get('complete', 0),
                'error': counts[minute].get('error', 0),
                'executed': counts[minute].get('executed', 0),
                'retrying': counts[minute].get('retrying', 0),
                'dead_lettered': counts[minute].get('dead-lettered', 0),
                'pending': sample[0] if sample else None,
                'scheduled': sample[1] if sample else None,
                'in_flight': sample[2] if sample else None,
                'dead_letters': sample[3] if sample else None,
            }
        )
    return minutes


def recent_errors(consumer_rows, limit=20):
    errors = []
    for row in consumer_rows:
        for error in row['_record'].get('errors') or ():
            errors.append(dict(error, consumer=row['id']))
    errors.sort(key=lambda error: -error.get('time', 0))
    return errors[:limit]


def next_run(task, start, horizon=PERIODIC_HORIZON):
    """The first minute after ``start`` whose timestamp the periodic task accepts."""
    minute = start.replace(second=0, microsecond=0)
    for _ in range(horizon):
        minute += datetime.timedelta(minutes=1)
        if task.validate_datetime(minute):
            return minute
    return None


_next_runs = {}  # (task class, minute) -> next run: the search is done once a minute


def periodic(huey):
    start = huey._get_timestamp().replace(second=0, microsecond=0)
    if any(minute != start for _, minute in _next_runs):
        _next_runs.clear()
    names = huey._registry._names
    rows = []
    for task in huey._registry.periodic_tasks:
        key = (type(task), start)
        if key not in _next_runs:
            _next_runs[key] = next_run(task, start)
        name = names.get(type(task), task.name)
        rows.append({'name': name, 'next_run': iso(_next_runs[key])})
    rows.sort(key=lambda row: (row['next_run'] is None, row['next_run'] or '', row['name']))
    return rows


def gauges(huey, storage, now):
    """The numbers the metrics gauges and the dashboard's header show."""
    entries = inflight_entries(huey, storage)
    ages = [lease_age(huey, entry[3], now) for entry in entries]
    alive = sum(1 for row in consumers(huey, now, storage) if row['alive'])
    return {
        'pending': storage.queue_size(),
        'scheduled': storage.schedule_size(),
        'in_flight': len(entries),
        'oldest_lease_age': max(ages) if ages else 0.0,
        'dead_letters': storage.dead_letter_count(),
        'results': storage.result_store_size(),
        'consumers': alive,
    }


def info(huey, now):
    """The overview ``huey info`` prints."""
    storage = huey.storage
    by_priority = {}
    sample = storage.enqueued_items(SAMPLE)
    for data in sample:
        message = decode(huey, data)
        priority = (message.priority if message is not None else None) or 0
        by_priority[priority] = by_priority.get(priority, 0) + 1
    etas = []
    for data in storage.scheduled_items(SAMPLE):
        message = decode(huey, data)
        if message is not None and message.eta is not None:
            etas.append(message.eta)
    entries = inflight_entries(huey)
    inflight_rows = sorted(
        (
            {
                'token': token,
                'name': (decode(huey, data) or Message()).name,
                'consumer': consumer,
                'lease_age': lease_age(huey, lease_until, now),
            }
            for token, consumer, _, lease_until, data in entries
        ),
        key=lambda row: -row['lease_age'],
    )
    consumer_rows = consumers(huey, now)
    pending_total = storage.queue_size()
    return {
        'command': 'info',
        'version': 1,
        'queue': huey.name,
        'storage': type(storage).__name__,
        'reliable': bool(huey.reliable),
        'time': now,
        'pending': {
            'total': pending_total,
            'by_priority': [
                {'priority': p, 'count': n}
                for p, n in sorted(by_priority.items(), key=lambda item: -item[0])
            ],
            'sampled': len(sample) < pending_total,
        },
        'scheduled': {'total': storage.schedule_size(), 'next_eta': iso(min(etas, default=None))},
        'results': {'total': storage.result_store_size()},
        'in_flight': {
            'total': len(entries),
            'oldest_lease_age': inflight_rows[0]['lease_age'] if inflight_rows else None,
            'items': inflight_rows[:10],
        },
        'dead_letters': {'total': storage.dead_letter_count()},
        'consumers': public(consumer_rows),
        'periodic': periodic(huey),
    }
