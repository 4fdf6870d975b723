"""What a running consumer tells operators: a tally of task outcomes taken from huey's
signals, and a heartbeat record it keeps in the storage.

**Tally** (one per process): how many times each task name reached each outcome, and a
histogram of run durations per task name. The signal receivers write only into a dict owned
by the calling thread: no lock, no storage call, and a clock read only when a run starts and
ends. Forked workers (``-k process``) publish their tally to a spool directory every second and
when they stop; the scheduler and the metrics endpoint add those files up.

**Heartbeat**: every ``Monitor.interval`` seconds the consumer's scheduler loop (never a worker)
writes one record through ``storage.put_heartbeat`` (JSON, keys below). The `huey` command, the
dashboard and the metrics gauges read them back. Its size is bounded: 60 minutes of history,
the 20 newest errors with tracebacks cut to 4,000 characters; consumers delete records that
stopped beating an hour ago, so the storage never grows with them.

    id, host, pid, started, beat (unix seconds), interval (seconds between beats),
    stopped (bool), implementation, version, queue, workers, worker_type, reliable, periodic,
    totals     {outcome: count since the consumer started}
    minutes    [[unix minute, {outcome: count}], ...]   the last 60 minutes with activity
    depths     [[unix minute, pending, scheduled, in_flight, dead_letters], ...]  same hour
    errors     [{time, task, id, error, traceback}, ...]  newest last
"""

import atexit
import bisect
import collections
import contextlib
import fcntl
import functools
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import traceback
import uuid

from huey import signals as S

logger = logging.getLogger('huey.monitor')

# Outcome label of each signal counted (SIGNAL_ENQUEUED is a producer's event: not counted).
OUTCOMES = {
    S.SIGNAL_EXECUTING: 'executed',
    S.SIGNAL_COMPLETE: 'complete',
    S.SIGNAL_ERROR: 'error',
    S.SIGNAL_RETRYING: 'retrying',
    S.SIGNAL_REVOKED: 'revoked',
    S.SIGNAL_EXPIRED: 'expired',
    S.SIGNAL_LOCKED: 'locked',
    S.SIGNAL_DEAD_LETTER: 'dead-lettered',
    S.SIGNAL_CANCELED: 'canceled',
    S.SIGNAL_TIMEOUT: 'timeout',
    S.SIGNAL_RATE_LIMITED: 'rate-limited',
    S.SIGNAL_INTERRUPTED: 'interrupted',
    S.SIGNAL_SCHEDULED: 'scheduled',
}
# Signals that end a run started by SIGNAL_EXECUTING: its duration is observed there.
RUN_ENDS = (
    S.SIGNAL_COMPLETE,
    S.SIGNAL_ERROR,
    S.SIGNAL_LOCKED,
    S.SIGNAL_CANCELED,
    S.SIGNAL_TIMEOUT,
    S.SIGNAL_RATE_LIMITED,
    S.SIGNAL_INTERRUPTED,
)
# Upper bounds (seconds) of the duration histogram's buckets.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
UNKNOWN_TASK = 'unknown'  # the task label of a message that could not be decoded

MAX_ERRORS = 20
MAX_TRACEBACK = 4000
HISTORY_MINUTES = 60
RETENTION = 3600  # seconds after its last beat a consumer's record is deleted
SPOOL_INTERVAL = 1.0


@functools.lru_cache(maxsize=1)
def implementation_version():
    """This package's own version (``huey.__version__`` is the huey API it reproduces)."""
    from importlib import metadata

    try:
        return metadata.version('huey-rs')
    except metadata.PackageNotFoundError:
        return 'unknown'


# Each thread keeps, per task name, one row: a count per outcome (in OUTCOME_ORDER), then the
# duration histogram's bucket counts (BUCKETS, then +Inf), then the sum of durations.
OUTCOME_ORDER = tuple(OUTCOMES.values())
_COLUMN = {signal: OUTCOME_ORDER.index(outcome) for signal, outcome in OUTCOMES.items()}
_EXECUTED = _COLUMN[S.SIGNAL_EXECUTING]
_HISTOGRAM = len(OUTCOME_ORDER)
_ROW = _HISTOGRAM + len(BUCKETS) + 2


class Tally:
    """Outcome counts and run durations of one process, fed by huey's signals."""

    def __init__(self, huey):
        self.huey = huey
        self._lock = threading.Lock()
        self._local = threading.local()
        self._shards = []  # one {task name: row} per thread that sent a signal
        self._errors = collections.deque(maxlen=MAX_ERRORS)
        self._receivers = self._make_receivers()

    def reset(self):
        """Start from zero (a forked worker must not report what its parent counted)."""
        with self._lock:
            for rows in self._shards:
                rows.clear()
        self._errors.clear()

    def connect(self):
        on_start, on_end, on_event = self._receivers
        signal = self.huey._signal
        signal.connect(on_start, S.SIGNAL_EXECUTING)
        signal.connect(on_end, *RUN_ENDS)
        signal.connect(
            on_event, *[s for s in OUTCOMES if s != S.SIGNAL_EXECUTING and s not in RUN_ENDS]
        )

    def disconnect(self):
        for receiver in self._receivers:
            self.huey._signal.disconnect(receiver)

    def _make_receivers(self):
        # These run on the task path: closures over locals, no lock, no tuple keys, nothing
        # stored on the task (a new attribute would make CPython rebuild the task's dict).
        # A run's row and start time wait in the thread's ``runs`` (keyed by the task's id)
        # from SIGNAL_EXECUTING to the signal that ends it, which the same thread sends.
        local = self._local
        shards = self._shards
        lock = self._lock
        names = self.huey._registry._names  # task class -> registered name
        errors = self._errors
        clock = time.perf_counter
        column = _COLUMN
        bisect_left = bisect.bisect_left

        def thread_state():
            state = local.state = ({}, {})  # task name -> row; id(task) -> (row, start)
            with lock:
                shards.append(state[0])
            return state

        def new_row(rows, name):
            row = rows[name] = [0] * (_ROW - 1) + [0.0]
            return row

        # on_start and on_end are written out flat: each Python-level call would cost
        # about as much as the counting itself.
        def on_start(signal, task, *args):
            try:
                rows, runs = local.state
            except AttributeError:
                rows, runs = thread_state()
            name = names.get(type(task)) or task.name
            row = rows.get(name) or new_row(rows, name)
            row[_EXECUTED] += 1
            if len(runs) > 1000:  # runs that never ended (killed mid-task): forget them
                runs.clear()
            runs[id(task)] = (row, clock())

        def on_end(signal, task, *args):
            try:
                runs = local.state[1]
            except AttributeError:
                runs = thread_state()[1]
            started = runs.pop(id(task), None)
            if started is None:
                on_event(signal, task)
            else:
                row, start = started
                seconds = clock() - start
                row[column[signal]] += 1
                row[_HISTOGRAM + bisect_left(BUCKETS, seconds)] += 1
                row[-1] += seconds
            if signal == S.SIGNAL_ERROR and args:
                # Formatted later, off the task path (see _error_records).
                errors.append([time.time(), names.get(type(task)) or task.name, task.id, args[0]])

        def on_event(signal, task, *args):
            try:
                rows = local.state[0]
            except AttributeError:
                rows = thread_state()[0]
            name = UNKNOWN_TASK if task is None else (names.get(type(task)) or task.name)
            row = rows.get(name) or new_row(rows, name)
            row[column[signal]] += 1

        return on_start, on_end, on_event

    def _error_records(self):
        records = []
        for entry in list(self._errors):
            if not isinstance(entry[3], dict):
                exc = entry[3]
                text = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                entry[3] = {'error': repr(exc), 'traceback': text[-MAX_TRACEBACK:]}
            when, name, task_id, details = entry
            records.append({'time': when, 'task': name, 'id': task_id, **details})
        return records

    def snapshot(self):
        """This process's tally as plain data: ``{'counts': [[task, outcome, n], ...],
        'durations': {task: [bucket counts..., +Inf count, sum]}, 'errors': [...]}``."""
        totals = {}
        with self._lock:
            shards = list(self._shards)
        for rows in shards:
            for name, row in rows.copy().items():
                row = list(row)
                total = totals.get(name)
                if total is None:
                    totals[name] = row
                else:
                    for i, value in enumerate(row):
                        total[i] += value
        counts, durations = [], {}
        for name, row in totals.items():
            counts.extend(
                [name, outcome, row[i]] for i, outcome in enumerate(OUTCOME_ORDER) if row[i]
            )
            if any(row[_HISTOGRAM:-1]):
                durations[name] = row[_HISTOGRAM:]
        return {'counts': counts, 'durations': durations, 'errors': self._error_records()}


def add_histogram(into, name, histogram):
    current = into.get(name)
    if current is None:
        into[name] = list(histogram)
    else:
        for i, value in enumerate(histogram):
            current[i] += value


def merge(snapshots):
    """One snapshot adding up several (processes of one consumer)."""
    counts, durations, errors = {}, {}, []
    for snapshot in snapshots:
        for name, outcome, n in snapshot['counts']:
            counts[(name, outcome)] = counts.get((name, outcome), 0) + n
        for name, histogram in snapshot['durations'].items():
            add_histogram(durations, name, histogram)
        errors.extend(snapshot['errors'])
    errors.sort(key=lambda error: error['time'])
    return {
        'counts': [[name, outcome, n] for (name, outcome), n in counts.items()],
        'durations': durations,
        'errors': errors[-MAX_ERRORS:],
    }


def outcome_totals(snapshot):
    totals = {}
    for _, outcome, n in snapshot['counts']:
        totals[outcome] = totals.get(outcome, 0) + n
    return totals


class Spool:
    """The tallies of a consumer's forked processes: ``{pid}.json`` per live process, and
    ``retired.json`` adding up those that stopped cleanly. Files change under an flock."""

    def __init__(self, path=None):
        self.path = path or tempfile.mkdtemp(prefix='huey-tally-')
        self._lock_path = os.path.join(self.path, '.lock')

    @contextlib.contextmanager
    def _locked(self, mode):
        with open(self._lock_path, 'a') as fh:
            fcntl.flock(fh, mode)
            yield

    def _write(self, name, snapshot):
        temp = os.path.join(self.path, f'.{name}.{os.getpid()}.tmp')
        with open(temp, 'w') as fh:
            json.dump(snapshot, fh)
        os.replace(temp, os.path.join(self.path, name))

    def _read(self, name):
        try:
            with open(os.path.join(self.path, name)) as fh:
                return json.load(fh)
        except (FileNotFoundError, ValueError):
            return None

    def publish(self, snapshot):
        with self._locked(fcntl.LOCK_SH):
            self._write(f'{os.getpid()}.json', snapshot)

    def retire(self, snapshot):
        """Fold this process's final tally into ``retired.json``."""
        with self._locked(fcntl.LOCK_EX):
            retired = self._read('retired.json')
            self._write('retired.json', merge([retired, snapshot] if retired else [snapshot]))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, f'{os.getpid()}.json'))

    def collect(self):
        """Every process's tally added up."""
        with self._locked(fcntl.LOCK_SH):
            names = [n for n in os.listdir(self.path) if n.endswith('.json')]
            snapshots = [self._read(name) for name in names]
        return merge([s for s in snapshots if s is not None])

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)


class Monitor:
    """A consumer's tally and heartbeat. Created by the consumer; ``tick()`` is called by the
    scheduler loop, ``worker_started()``/``worker_stopped()`` in each forked process."""

    interval = 5.0

    def __init__(self, huey, workers, worker_type, periodic, scheduler_interval, forks):
        self.huey = huey
        self.tally = Tally(huey)
        self.tally.connect()
        self.forks = forks
        self.spool = None  # created by start() when the workers are forked processes
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.id = f'{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}'
        self.started = time.time()
        self.workers = workers
        self.worker_type = worker_type
        self.periodic = periodic
        self.scheduler_interval = scheduler_interval
        self.version = implementation_version()
        self._next_beat = 0.0
        self._next_prune = 0.0
        self._last_totals = {}
        self._minutes = {}  # unix minute -> {outcome: count}
        self._depths = {}  # unix minute -> [pending, scheduled, in flight, dead letters]
        self._publisher = None
        self._failures = 0
        self.metrics_server = None

    # -- the tally of this consumer (all its processes) -------------------------------------

    def snapshot(self):
        if self.spool is not None:
            return self.spool.collect()
        return self.tally.snapshot()

    def worker_started(self):
        """In a forked process: count from zero, and publish to the spool every second."""
        if self.spool is None:
            return
        self.tally.reset()
        stop = threading.Event()

        def publish():
            while not stop.wait(SPOOL_INTERVAL):
                try:
                    self.spool.publish(self.tally.snapshot())
                except Exception:
                    logger.exception('Publishing the tally failed')

        thread = threading.Thread(target=publish, name='huey-tally', daemon=True)
        thread.start()
        self._publisher = (stop, thread)

    def worker_stopped(self):
        if self.spool is None or self._publisher is None:
            return
        stop, thread = self._publisher
        stop.set()
        thread.join()
        try:
            self.spool.retire(self.tally.snapshot())
        except Exception:
            logger.exception('Publishing the final tally failed')

    # -- heartbeat --------------------------------------------------------------------------

    def tick(self, now=None):
        """Beat when ``interval`` seconds passed since the last beat (the scheduler loop
        calls this on every pass). A storage error is logged, never raised."""
        now = time.time() if now is None else now
        if now < self._next_beat:
            return False
        self._next_beat = now + self.interval
        try:
            self.beat(now)
        except Exception:
            self._failures += 1
            if self._failures == 1:
                logger.exception('Writing the consumer heartbeat failed')
            return False
        self._failures = 0
        return True

    def record(self, now, stopped=False):
        snapshot = self.snapshot()
        totals = outcome_totals(snapshot)
        minute = int(now // 60)
        current = self._minutes.setdefault(minute, {})
        for outcome, n in totals.items():
            delta = n - self._last_totals.get(outcome, 0)
            if delta > 0:
                current[outcome] = current.get(outcome, 0) + delta
        self._last_totals = totals
        self._depths[minute] = self._sample_depths()
        oldest = minute - HISTORY_MINUTES + 1
        for history in (self._minutes, self._depths):
            for old in [m for m in history if m < oldest]:
                del history[old]
        return {
            'id': self.id,
            'host': self.host,
            'pid': self.pid,
            'started': self.started,
            'beat': now,
            'interval': max(self.interval, self.scheduler_interval),
            'stopped': stopped,
            'implementation': 'huey-rs',
            'version': self.version,
            'queue': self.huey.name,
            'workers': self.workers,
            'worker_type': self.worker_type,
            'reliable': bool(self.huey.reliable),
            'periodic': bool(self.periodic),
            'totals': totals,
            'minutes': [[m, counts] for m, counts in sorted(self._minutes.items()) if counts],
            'depths': [[m, *depths] for m, depths in sorted(self._depths.items())],
            'errors': snapshot['errors'],
        }

    def _sample_depths(self):
        storage = self.huey.storage
        inflight = len(storage.inflight_items()) if self.huey.reliable else 0
        return [
            storage.queue_size(),
            storage.schedule_size(),
            inflight,
            storage.dead_letter_count(),
        ]

    def beat(self, now=None, stopped=False):
        now = time.time() if now is None else now
        record = self.record(now, stopped)
        storage = self.huey.storage
        storage.put_heartbeat(self.id, json.dumps(record).encode('utf8'))
        if now >= self._next_prune:
            self._next_prune = now + 60
            self.prune(now)

    def prune(self, now):
        """Delete the records of consumers that stopped beating ``RETENTION`` seconds ago
        (or whose record cannot be read)."""
        storage = self.huey.storage
        for consumer, data in storage.heartbeats().items():
            try:
                beat = float(json.loads(data)['beat'])
            except (ValueError, KeyError, TypeError):
                beat = 0.0
            if now - beat > RETENTION:
                storage.delete_heartbeat(consumer)

    def final_beat(self):
        """The last record, marked stopped (the scheduler's shutdown)."""
        try:
            self.beat(stopped=True)
        except Exception:
            logger.exception('Writing the final consumer heartbeat failed')

    # -- lifecycle --------------------------------------------------------------------------

    def start(self):
        """Before the consumer forks: the spool its processes publish to."""
        if self.forks and self.spool is None:
            self.spool = Spool()
            atexit.register(self.spool.remove)  # forked children leave by os._exit

    def serve_metrics(self, bind):
        """Serve the OpenMetrics endpoint on ``bind`` ('host:port') from this process."""
        from huey.metrics import serve

        storage = self.huey.storage
        if self.spool is not None:
            # Forked workers share nothing with this process; the endpoint reads the storage
            # through its own connections so a scrape never holds a lock a fork inherits.
            storage = self.huey.get_storage(**self.huey.storage_kwargs)
        consumer = {'workers': self.workers, 'worker_type': self.worker_type}
        self.metrics_server = serve(self.huey, bind, self, storage, consumer)
        return self.metrics_server

    def close(self):
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server = None
        self.tally.disconnect()
        if self.spool is not None:
            self.spool.remove()
            atexit.unregister(self.spool.remove)
