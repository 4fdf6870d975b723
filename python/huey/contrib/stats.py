"""Task statistics for dashboards: every signal a Huey sends, recorded in a peewee database.

``enable_stats(huey, db)`` (or ``HueyStats(huey, db).connect()``) listens to all of
``huey``'s signals in this process and writes them, in batches from a background thread, to
two tables of ``db`` (any peewee database: Sqlite, Postgres, MySQL; ``pip install
huey-rs[peewee]``). The tables are huey 3.5.4's, so dashboards of either read both::

    huey_event(id auto, ts float, queue, task_id, task, signal, duration float null,
               error text null, args text null)     one row per signal, indexes on ts, queue
                                                     and task; pruned to ``max_events`` per
                                                     queue and ``retention_hours``
    huey_inflight(task_id primary key, queue, task, started float)
                                                     tasks executing now (removed when their
                                                     attempt ends), pruned after
                                                     ``inflight_hours``

Recording never raises into the task's code: a failed write is logged to ``huey.stats`` and
its batch dropped. The consumer's shutdown hook and ``atexit`` write what is left; a forked
worker process starts its own writer with an empty buffer.

The read side (``HueyStats.overview``, ``search_events``, ...) feeds the dashboards of
``huey.contrib.djhuey.stats`` (the Django admin) and ``huey.contrib.flask_admin``, through
``huey.contrib.stats_dashboard``.
"""

import atexit
import logging
import os
import threading
import time

from huey import signals as S

# What the dashboards show and do lives in stats_dashboard; huey 3.5.4 had it here, so it is
# importable from here too.
from huey.contrib.stats_dashboard import (  # noqa: F401
    ACTIONS,
    NO_TASK_STATS,
    SIGNAL_COLOURS,
    bar_chart_svg,
    dashboard_context,
    dashboard_css,
    format_duration,
    format_elapsed,
    known_tasks,
    live_counts,
    pending_tasks,
    run_action,
    scheduled_tasks,
    short_name,
    signal_colour,
)

try:
    import peewee
except ImportError as exc:
    raise ImportError(
        'huey.contrib.stats needs peewee: run "pip install huey-rs[peewee]" '
        '(or "pip install peewee") to install it.'
    ) from exc

logger = logging.getLogger('huey.stats')

# Signals that end one attempt at running a task (a retry is enqueued as a new attempt).
TERMINAL = frozenset(
    (
        S.SIGNAL_COMPLETE,
        S.SIGNAL_ERROR,
        S.SIGNAL_CANCELED,
        S.SIGNAL_INTERRUPTED,
        S.SIGNAL_EXPIRED,
        S.SIGNAL_REVOKED,
        S.SIGNAL_TIMEOUT,
        S.SIGNAL_LOCKED,
        S.SIGNAL_RATE_LIMITED,
        S.SIGNAL_RETRYING,
    )
)

# The database the module-level models use: the first HueyStats's, unless set before.
database = peewee.DatabaseProxy()

# What a dead letter is recorded under (it has no task: its message could not be decoded).
DEAD_LETTER_TASK = '(undecodable message)'


class BaseModel(peewee.Model):
    class Meta:
        database = database


class HueyEvent(BaseModel):
    ts = peewee.DoubleField(index=True)
    queue = peewee.CharField(index=True)
    task_id = peewee.CharField()
    task = peewee.CharField(index=True)
    signal = peewee.CharField()
    duration = peewee.DoubleField(null=True)
    error = peewee.TextField(null=True)
    args = peewee.TextField(null=True)

    class Meta:
        table_name = 'huey_event'


class HueyInflight(BaseModel):
    task_id = peewee.CharField(primary_key=True)
    queue = peewee.CharField(index=True)
    task = peewee.CharField()
    started = peewee.DoubleField()

    class Meta:
        table_name = 'huey_inflight'


MODELS = (HueyEvent, HueyInflight)


def _bound_models(db):
    """HueyEvent and HueyInflight bound to ``db``, whatever the module proxy points at (a
    process may record two Hueys into two databases). They keep the class names, from which
    peewee names the indexes."""
    bound = []
    for model in MODELS:
        meta = type('Meta', (), {'database': db, 'table_name': model._meta.table_name})
        bound.append(type(model.__name__, (model,), {'Meta': meta, '__module__': __name__}))
    return tuple(bound)


def _unwrap_proxy(obj):
    return obj.obj if isinstance(obj, peewee.Proxy) else obj


def _resolve_db(db):
    """The peewee Database in ``db``: a Database, a proxy of one, or an object with a
    ``database`` attribute holding either (flask-peewee's ``Database`` wrapper)."""
    found = _unwrap_proxy(db)
    if not isinstance(found, peewee.Database):
        found = _unwrap_proxy(getattr(found, 'database', None))
    if isinstance(found, peewee.Database):
        return found
    raise TypeError(f'Expected a peewee Database (or a wrapper holding one), got {db!r}')


def _task_name(task_class):
    return f'{task_class.__module__}.{task_class.__name__}'


class HueyStats:
    """Records ``huey``'s signals into ``db``; see the module docstring.

    ``flush_interval`` is how often (seconds) the writer thread writes what was recorded, or
    sooner once ``flush_max`` events are waiting. ``capture_args`` also keeps each task's
    arguments (their repr, cut to 400 characters).
    """

    def __init__(
        self,
        huey,
        db,
        retention_hours=48,
        max_events=2000,
        inflight_hours=6,
        capture_args=False,
        create_tables=True,
        flush_interval=0.5,
        flush_max=200,
    ):
        self.huey = huey
        self.name = huey.name
        self.db = _resolve_db(db)
        self.retention = retention_hours * 3600
        self.max_events = max_events
        self.inflight_retention = inflight_hours * 3600
        self.capture_args = capture_args
        self._flush_interval = flush_interval
        self._flush_max = flush_max
        self._event, self._inflight = _bound_models(self.db)
        self._connected = False
        self._prune_at = 0.0
        self._fresh_state()
        if database.obj is None:
            database.initialize(self.db)
        if create_tables:
            opened_here = self.db.is_closed()
            self.db.create_tables([self._event, self._inflight], safe=True)
            if opened_here:
                # A socket left open here would be shared by processes forked later.
                self.db.close()

    def _fresh_state(self):
        self._buf = []  # rows recorded, not written yet
        self._start = {}  # task id -> when it started executing (this process)
        self._lock = threading.Lock()  # guards _buf
        self._flush_lock = threading.Lock()  # held for a whole write
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._writer = None

    # Recording ---------------------------------------------------------------------------

    def connect(self):
        """Start recording: listen to the signals, start the writer, flush at shutdown."""
        if self._connected:
            return
        self._connected = True
        self.huey.signal()(self._on_signal)
        # Process workers leave through os._exit, which skips atexit: the consumer runs
        # shutdown hooks in each worker first.
        self.huey.on_shutdown('huey_stats_flush')(self._flush)
        if hasattr(os, 'register_at_fork'):
            os.register_at_fork(after_in_child=self._reset_after_fork)
        self._start_writer()
        atexit.register(self.close)

    def _start_writer(self):
        self._writer = threading.Thread(
            target=self._writer_loop, args=(self._stop, self._wake), daemon=True
        )
        self._writer.name = f'huey-stats-{self.name}'
        self._writer.start()

    def _reset_after_fork(self):
        if self._stop.is_set():
            return  # Closed before the fork: stays closed.
        # The parent's writer thread, its locks (possibly held at the fork) and its
        # buffered rows are the parent's; the child starts afresh. Its inherited database
        # connection is the parent's socket or file handle: forget it without closing.
        self._fresh_state()
        dispose = getattr(self.db, 'dispose', None)
        if dispose is not None:
            dispose()
        else:  # peewee before 4.5
            self.db._state.reset()
        self._start_writer()

    def _on_signal(self, signal, task, *args):
        try:
            self._record(signal, task, args)
        except Exception:
            logger.exception('huey stats could not record a %r signal; event dropped.', signal)

    def _record(self, signal, task, args):
        now = time.time()
        duration = error = captured = None
        if signal == S.SIGNAL_DEAD_LETTER:
            reason, letter_id = (tuple(args) + (None, None))[:2]
            task_id, task_name, error = str(letter_id or ''), DEAD_LETTER_TASK, str(reason)
        else:
            task_id, task_name = str(task.id), _task_name(type(task))
            if signal == S.SIGNAL_EXECUTING:
                self._start[task.id] = now
            elif signal in TERMINAL:
                started = self._start.pop(task.id, None)
                if started is not None:
                    duration = now - started
            if signal == S.SIGNAL_ERROR and args and args[0] is not None:
                error = repr(args[0])[:1000]
            if self.capture_args:
                captured = self._format_args(task)
        row = {
            'ts': now,
            'queue': self.name,
            'task_id': task_id,
            'task': task_name,
            'signal': signal,
            'duration': duration,
            'error': error,
            'args': captured,
        }
        with self._lock:
            self._buf.append(row)
            waiting = len(self._buf)
        if waiting >= self._flush_max:
            self._wake.set()

    @staticmethod
    def _format_args(task):
        try:
            return repr(task.args)[:200] + ' ' + repr(task.kwargs)[:199]
        except Exception:
            return '<unrepresentable>'

    def _writer_loop(self, stop, wake):
        while not stop.is_set():
            wake.wait(self._flush_interval)
            wake.clear()
            self._flush()
        if not self.db.is_closed():
            self.db.close()  # This thread's connection.

    def _flush(self):
        """Write the buffered rows in one transaction; returns how many were written."""
        with self._flush_lock:
            with self._lock:
                batch, self._buf = self._buf, []
            if not batch:
                return 0
            # The last signal of each task in the batch decides its in-flight row.
            running = {}
            for row in batch:
                if row['signal'] == S.SIGNAL_EXECUTING:
                    running[row['task_id']] = row
                elif row['signal'] in TERMINAL:
                    running[row['task_id']] = None
            Event, Inflight = self._event, self._inflight
            try:
                with self.db.atomic():
                    for start in range(0, len(batch), 100):
                        Event.insert_many(batch[start : start + 100]).execute()
                    # Rows touched in one order by every writer: no lock-order deadlocks.
                    for task_id in sorted(running):
                        Inflight.delete().where(Inflight.task_id == task_id).execute()
                        row = running[task_id]
                        if row is not None:
                            Inflight.insert(
                                task_id=task_id,
                                queue=row['queue'],
                                task=row['task'],
                                started=row['ts'],
                            ).execute()
            except Exception:
                logger.exception('huey stats could not write %d events; dropped.', len(batch))
                return 0
            self._maybe_prune()
            return len(batch)

    def _maybe_prune(self):
        """At most once a minute: drop events past retention or beyond ``max_events`` (per
        queue), and in-flight rows older than ``inflight_hours`` (their worker died)."""
        now = time.time()
        if now < self._prune_at:
            return
        self._prune_at = now + 60
        Event, Inflight = self._event, self._inflight
        try:
            with self.db.atomic():
                mine = Event.queue == self.name
                Event.delete().where(mine & (Event.ts < now - self.retention)).execute()
                newest_dropped = (
                    Event.select(Event.id)
                    .where(mine)
                    .order_by(Event.id.desc())
                    .offset(self.max_events)
                    .limit(1)
                    .scalar()
                )
                if newest_dropped is not None:
                    Event.delete().where(mine & (Event.id <= newest_dropped)).execute()
                Inflight.delete().where(
                    (Inflight.queue == self.name)
                    & (Inflight.started < now - self.inflight_retention)
                ).execute()
        except Exception:
            logger.exception('huey stats could not prune old events.')

    def close(self):
        """Stop the writer and write what is left. A closed recorder stays closed."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self._writer is not None and self._writer is not threading.current_thread():
            self._writer.join(timeout=2)
        self._flush()  # Rows recorded while the writer made its last write.

    # Reading -----------------------------------------------------------------------------

    def _events(self, *columns):
        Event = self._event
        return Event.select(*columns).where(Event.queue == self.name)

    def window_counts(self, seconds=86400):
        """``{signal: count}`` over the last ``seconds``."""
        Event = self._event
        query = (
            self._events(Event.signal, peewee.fn.COUNT(Event.id))
            .where(Event.ts > time.time() - seconds)
            .group_by(Event.signal)
        )
        return dict(query.tuples())

    @staticmethod
    def _event_dict(row, time_format='%H:%M:%S'):
        return {
            'ts': row['ts'],
            'time': time.strftime(time_format, time.localtime(row['ts'])),
            'task': short_name(row['task']),
            'task_full': row['task'],
            'task_id': row['task_id'],
            'signal': row['signal'],
            'duration': row['duration'],
            'error': row['error'],
            'args': row.get('args'),
        }

    def _newest_first(self, query):
        Event = self._event
        return query.order_by(Event.ts.desc(), Event.id.desc())

    def recent_events(self, limit=50):
        rows = self._newest_first(self._events()).limit(limit).dicts()
        return [self._event_dict(row) for row in rows]

    def search_events(self, signal=None, task=None, q=None, limit=100, offset=0):
        """``(total, events)``: the events matching every filter given, newest first, the
        page ``offset:offset + limit`` of them. ``q`` is a plain substring (no wildcards)
        of the task id, the task name or the error, in any case."""
        Event = self._event
        query = self._events()
        if signal:
            query = query.where(Event.signal == signal)
        if task:
            query = query.where(Event.task == task)
        if q:
            query = query.where(
                Event.task_id.contains(q) | Event.task.contains(q) | Event.error.contains(q)
            )
        total = query.count()
        rows = self._newest_first(query).limit(limit).offset(offset).dicts()
        return total, [self._event_dict(row, '%Y-%m-%d %H:%M:%S') for row in rows]

    def _distinct(self, field):
        return [value for (value,) in self._events(field).distinct().order_by(field).tuples()]

    def event_signals(self):
        return self._distinct(self._event.signal)

    def event_tasks(self):
        return self._distinct(self._event.task)

    def inflight(self):
        """The tasks executing now, longest-running first."""
        Inflight = self._inflight
        now = time.time()
        rows = (
            Inflight.select(Inflight.task_id, Inflight.task, Inflight.started)
            .where(Inflight.queue == self.name)
            .order_by(Inflight.started)
            .tuples()
        )
        return [
            {'task': short_name(task), 'id': task_id, 'started': started, 'elapsed': now - started}
            for task_id, task, started in rows
        ]

    def task_breakdown(self):
        """Per task seen: runs, completions, errors, retries and mean run time, busiest
        first."""
        Event = self._event
        query = (
            self._events(
                Event.task,
                Event.signal,
                peewee.fn.COUNT(Event.id),
                peewee.fn.SUM(Event.duration),
            )
            .where(Event.signal != S.SIGNAL_DEAD_LETTER)
            .group_by(Event.task, Event.signal)
        )
        per_task = {}
        for task, signal, count, total_time in query.tuples():
            per_task.setdefault(task, {})[signal] = (count, total_time or 0.0)
        rows = []
        for task, counts in per_task.items():
            completed, completed_time = counts.get(S.SIGNAL_COMPLETE, (0, 0.0))
            rows.append(
                {
                    'task': short_name(task),
                    'full': task,
                    'executed': counts.get(S.SIGNAL_EXECUTING, (0,))[0],
                    'completed': completed,
                    'errors': counts.get(S.SIGNAL_ERROR, (0,))[0],
                    'retries': counts.get(S.SIGNAL_RETRYING, (0,))[0],
                    'avg': completed_time / completed if completed else None,
                }
            )
        rows.sort(key=lambda row: (row['executed'], row['completed']), reverse=True)
        return rows

    def throughput(self, minutes=60):
        """Completions and errors per minute over the last ``minutes``, oldest first."""
        Event = self._event
        now = time.time()
        complete, error = [0] * minutes, [0] * minutes
        query = self._events(Event.ts, Event.signal).where(
            (Event.ts > now - minutes * 60) & Event.signal.in_([S.SIGNAL_COMPLETE, S.SIGNAL_ERROR])
        )
        for ts, signal in query.tuples():
            slot = minutes - 1 - int((now - ts) // 60)
            if 0 <= slot < minutes:
                (error if signal == S.SIGNAL_ERROR else complete)[slot] += 1
        return {'complete': complete, 'error': error}

    def overview(self, seconds=86400):
        """Completions, errors, retries, error rate and dead letters over the last
        ``seconds``, and how many tasks are executing now."""
        counts = self.window_counts(seconds)
        completed = counts.get(S.SIGNAL_COMPLETE, 0)
        errors = counts.get(S.SIGNAL_ERROR, 0)
        finished = completed + errors
        Inflight = self._inflight
        return {
            'completed': completed,
            'errors': errors,
            'retries': counts.get(S.SIGNAL_RETRYING, 0),
            'dead_letters': counts.get(S.SIGNAL_DEAD_LETTER, 0),
            'error_rate': errors / finished if finished else 0,
            'inflight': Inflight.select().where(Inflight.queue == self.name).count(),
        }


def enable_stats(huey, db, **kwargs):
    """Record ``huey``'s signals into ``db`` (once per Huey); returns its HueyStats."""
    stats = getattr(huey, '_stats', None)
    if stats is None:
        stats = HueyStats(huey, db, **kwargs)
        huey._stats = stats
        stats.connect()
    return stats
