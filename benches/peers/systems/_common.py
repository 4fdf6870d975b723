"""What every adapter shares: the workloads, their timing, worker processes, one JSON line out.

Runs under each system's own venv, so it uses the standard library only. An adapter is a
subclass of ``System`` in ``systems/<name>.py`` that ends with ``main(ItsClass)``.

Workloads (``params['workload']``), the same for every system:

- ``enqueue``: ``tasks`` no-op calls enqueued one at a time by this process; tasks/s.
- ``bulk-enqueue``: the same calls through the system's bulk API (``System.bulk_enqueue``);
  ``n/a`` when it has none.
- ``drain-threads`` / ``drain-processes``: enqueue ``tasks`` calls (untimed), then start the
  worker (``System.worker_specs``): 4 threads or the asyncio equivalent in one process, or 4
  processes. Completion is polled every 2 ms with one O(1) Redis command that reads the
  system's own record of finished tasks (``System.completed``). The rate is timed from the
  first poll that sees a completed task to the one that sees all of them, so worker start-up
  (interpreter, imports, forking) is left out; it is reported as ``startup_s`` in the JSON.
  ``drain-threads`` also reports ``rss``: the peak RSS (``VmHWM``) of the worker's processes,
  summed, read when the drain is over.
- ``latency``: the thread worker idle; ``samples`` times (5 ms apart) enqueue one task and wait
  for its result (``System.roundtrip``); p50 and p99 in ms.
"""

import importlib.metadata
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

POLL = 0.002  # seconds between completion polls
STALL_TIMEOUT = 30  # seconds without a completed task before a drain counts as broken
START_TIMEOUT = 60  # seconds for a worker to finish its first task
PAUSE = 0.005  # seconds between latency samples
CONCURRENCY = 4


class System:
    """One task queue. Subclasses set the class attributes and implement the methods."""

    module = ''  # the adapter's module, e.g. 'systems.rq' (its worker entry point)
    packages = ()  # distributions whose versions go into the JSON line
    bulk_api = None  # None: the system has no bulk enqueue API
    per_task = ''  # what a worker does per task (Redis work, ack, result): under the table
    notes = {}  # workload -> note shown under the table

    def __init__(self, params):
        self.params = params
        self.url = params['redis_url']

    def enqueue(self, n):
        """Enqueue ``noop(i)`` for i in range(n), one call at a time."""
        raise NotImplementedError

    def bulk_enqueue(self, n):
        """Enqueue ``noop(i)`` for i in range(n) in one call of the bulk API."""
        raise NotImplementedError

    def completed(self, n):
        """How many of the ``n`` enqueued tasks have finished: one O(1) Redis command."""
        raise NotImplementedError

    def roundtrip(self, i, timeout):
        """Enqueue one task and block until its result ``i`` (or a signal of it) is back."""
        raise NotImplementedError

    def worker_specs(self, kind):
        """One parameter dict per worker process to start (``kind``: 'thread' or 'process');
        default: one process that runs 4 threads or forks 4 workers itself."""
        return [{'kind': kind, 'concurrency': CONCURRENCY}]

    def worker_argv(self, spec):
        return [sys.executable, '-m', self.module, 'worker', json.dumps({**self.params, **spec})]

    def close(self):
        pass

    @classmethod
    def worker(cls, params):
        """Run a worker as ``params`` say until SIGTERM (the ``worker`` subcommand)."""
        raise NotImplementedError


def wait_for_sigterm():
    """Block the main thread until SIGTERM (what Workers.stop sends)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def percentile(samples, p):
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method='inclusive')[p - 1]


def proc_stat(pid):
    """(ppid, pgrp) of a live process, or None."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(')') + 2 :].split()
    return int(fields[1]), int(fields[2])


def peak_rss_kb(pid):
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Workers:
    """Worker processes in one process group of their own, output to a log file."""

    def __init__(self, argvs):
        fd, self.log_path = tempfile.mkstemp(prefix='peers-worker-', suffix='.log')
        self.log = os.fdopen(fd, 'wb')
        self.procs = []
        for argv in argvs:
            group = self.procs[0].pid if self.procs else 0
            self.procs.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=self.log,
                    stderr=subprocess.STDOUT,
                    process_group=group,
                )
            )
        self.pgid = self.procs[0].pid

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def check(self):
        """Raise when a worker process has exited."""
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f'worker exited ({proc.returncode}): {self.log_tail()}')

    def log_tail(self):
        self.log.flush()
        with open(self.log_path, errors='replace') as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else 'no output'

    def pids(self):
        """Every live process of the group, and their descendants wherever they went."""
        stats = {}
        for name in os.listdir('/proc'):
            if name.isdigit() and (st := proc_stat(int(name))) is not None:
                stats[int(name)] = st
        found = {pid for pid, (_, pgrp) in stats.items() if pgrp == self.pgid}
        found |= {p.pid for p in self.procs if p.poll() is None}
        while True:
            more = {pid for pid, (ppid, _) in stats.items() if ppid in found} - found
            if not more:
                return found
            found |= more

    def peak_rss_mb(self):
        return sum(peak_rss_kb(pid) for pid in self.pids()) / 1024

    def stop(self, timeout=3):
        """SIGTERM to the group, SIGKILL to whatever is left after ``timeout`` seconds
        (a graceful stop is not part of any workload: taskiq's CLI does not finish one)."""
        pids = self.pids()
        try:
            os.killpg(self.pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pid in pids | self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            proc.wait()
        self.log.close()
        os.unlink(self.log_path)


def timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def drain(system, n, kind):
    """Enqueue n tasks, start the worker, time the completions; values for the JSON line."""
    system.enqueue(n)
    if system.completed(n) != 0:
        raise RuntimeError('tasks completed before any worker ran')
    launched = time.perf_counter()
    with Workers([system.worker_argv(spec) for spec in system.worker_specs(kind)]) as workers:
        first = None  # (time, count) at the first poll that saw a completed task
        seen, progress_at = 0, launched
        while True:
            done = system.completed(n)
            now = time.perf_counter()
            if done and first is None:
                first = (now, done)
            if done >= n:
                break
            if done != seen:
                seen, progress_at = done, now
            elif now - progress_at > (STALL_TIMEOUT if first else START_TIMEOUT):
                raise RuntimeError(f'stalled at {done} of {n} tasks completed')
            workers.check()
            time.sleep(POLL)
        if first[1] >= n:
            raise RuntimeError(f'all {n} tasks completed before the first poll: raise tasks')
        rate = (n - first[1]) / (now - first[0])
        values = {'drain-threads' if kind == 'thread' else 'drain-processes': rate}
        if kind == 'thread':
            values['rss'] = workers.peak_rss_mb()
    return values, {'startup_s': first[0] - launched, 'first_poll_count': first[1]}


def latency(system, samples):
    with Workers([system.worker_argv(spec) for spec in system.worker_specs('thread')]):
        if system.roundtrip(-1, START_TIMEOUT) != -1:  # the worker is up and running tasks
            raise RuntimeError('warm-up task returned a wrong value')
        times = []
        for i in range(samples):
            time.sleep(PAUSE)
            t0 = time.perf_counter()
            value = system.roundtrip(i, STALL_TIMEOUT)
            times.append(time.perf_counter() - t0)
            if value != i:
                raise RuntimeError(f'task {i} returned {value!r}')
    return {
        'latency-p50': percentile(times, 50) * 1e3,
        'latency-p99': percentile(times, 99) * 1e3,
    }, {}


def run_workload(system, p):
    workload, n = p['workload'], p.get('tasks', 0)
    if workload == 'enqueue':
        return {'enqueue': n / timed(system.enqueue, n)}, {}
    if workload == 'bulk-enqueue':
        if system.bulk_api is None:
            return {}, {'na': 'no bulk API'}
        return {'bulk-enqueue': n / timed(system.bulk_enqueue, n)}, {}
    if workload in ('drain-threads', 'drain-processes'):
        return drain(system, n, 'thread' if workload == 'drain-threads' else 'process')
    if workload == 'latency':
        return latency(system, p['samples'])
    raise ValueError(f'unknown workload {workload!r}')


def versions(packages):
    found = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def first_line(exc):
    text = str(exc).strip().splitlines()
    return f'{type(exc).__name__}: {text[0]}' if text else type(exc).__name__


def main(system_class):
    """``python -m systems.<name> [worker] '<json>'``: run a workload and print one JSON
    line ``{"values": {...}, "extra": {...}, "versions": {...}}`` (``"error"`` on failure),
    or with ``worker`` be a worker process."""
    if sys.argv[1] == 'worker':
        system_class.worker(json.loads(sys.argv[2]))
        return
    params = json.loads(sys.argv[1])
    out = {'versions': versions(system_class.packages), 'per_task': system_class.per_task}
    try:
        system = system_class(params)
        try:
            out['values'], out['extra'] = run_workload(system, params)
        finally:
            system.close()
    except Exception as exc:
        traceback.print_exc()
        out['error'] = first_line(exc)
    note = system_class.notes.get(params['workload'])
    if note:
        out['note'] = note
    print(json.dumps(out), flush=True)
