"""Tasks through a real consumer (4 workers, started in-process) on each storage.

``mode=drain``: enqueue N tasks by calling a task, then start the consumer and time until
every task completed (thread workers: counted by SIGNAL_COMPLETE in this process; with
``worker_type=process`` the forked workers run them, so the run polls ``result_count()``
every 2 ms until all N results are stored); with ``metrics=true`` (huey-rs only) the consumer
serves OpenMetrics (``--metrics``) and a thread scrapes it every second meanwhile.
``reliable=true``: huey-rs in reliable mode (huey 3.5.4, which has none, in its default).
``mode=latency``: on an idle consumer, enqueue
one task and block on its result, repeatedly, with short pauses so the workers go back to
polling an empty queue.
"""

import logging
import threading
import time

from huey.signals import SIGNAL_COMPLETE

from workloads._common import IS_HUEY_RS, emit, make_huey, metric, params, percentile

STALL_TIMEOUT = 10  # seconds without progress before a run counts as broken, not slow


def start_consumer(huey, worker_type='thread', metrics=False):
    # Stop it with stop(graceful=True): that joins the workers, so none is still inside a
    # storage call when the interpreter exits.
    options = {'metrics': '127.0.0.1:0'} if metrics else {}
    consumer = huey.create_consumer(
        workers=4,
        worker_type=worker_type,
        initial_delay=0.001,
        max_delay=0.001,
        periodic=False,
        check_worker_health=False,
        **options,
    )
    consumer.start()
    if metrics:
        scraper = threading.Thread(
            target=scrape, args=(consumer.monitor.metrics_server.url,), daemon=True
        )
        scraper.start()
    return consumer


def scrape(url, every=1.0):
    """What Prometheus does, more often than it usually does."""
    import urllib.request

    while True:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
        time.sleep(every)


def drain(huey, n, worker_type='thread', metrics=False):
    @huey.task()
    def add(a, b):
        return a + b

    if worker_type == 'process':
        return drain_processes(huey, n, add)

    done = threading.Event()
    completed = [0]
    lock = threading.Lock()

    @huey.signal(SIGNAL_COMPLETE)
    def count(signal, task):
        with lock:
            completed[0] += 1
            if completed[0] == n:
                done.set()

    t0 = time.perf_counter()
    results = [add(i, i) for i in range(n)]
    enqueue_time = time.perf_counter() - t0

    if metrics:  # imported at start-up, as huey_consumer does: not part of the drain
        import importlib

        importlib.import_module('prometheus_client')
        importlib.import_module('huey.metrics')

    t0 = time.perf_counter()
    consumer = start_consumer(huey, metrics=metrics)
    try:
        seen = -1
        while not done.wait(timeout=STALL_TIMEOUT):
            if completed[0] == seen:
                raise RuntimeError(f'stalled at {seen} of {n} tasks completed')
            seen = completed[0]
        drain_time = time.perf_counter() - t0
    finally:
        consumer.stop(graceful=True)
    total = sum(r.get() for r in results)
    return [
        metric('enqueue', n / enqueue_time, 'tasks/s'),
        metric('drain (4 threads)', n / drain_time, 'tasks/s'),
    ], {'sum': total}


def drain_processes(huey, n, add):
    t0 = time.perf_counter()
    for i in range(n):
        add(i, i)
    enqueue_time = time.perf_counter() - t0

    t0 = time.perf_counter()
    consumer = start_consumer(huey, 'process')
    try:
        seen, last_progress = -1, time.monotonic()
        while (done := huey.result_count()) < n:
            if done != seen:
                seen, last_progress = done, time.monotonic()
            elif time.monotonic() - last_progress > STALL_TIMEOUT:
                raise RuntimeError(f'stalled at {done} of {n} tasks completed')
            time.sleep(0.002)
        drain_time = time.perf_counter() - t0
    finally:
        consumer.stop(graceful=True)
    return [
        metric('enqueue', n / enqueue_time, 'tasks/s'),
        metric('drain (4 processes)', n / drain_time, 'tasks/s'),
    ], {'results': n}


def latency(huey, samples, pause):
    @huey.task()
    def echo(x):
        return x

    consumer = start_consumer(huey)
    try:
        times = []
        for i in range(samples):
            time.sleep(pause)
            t0 = time.perf_counter()
            value = echo(i).get(blocking=True, timeout=STALL_TIMEOUT)
            times.append(time.perf_counter() - t0)
            if value != i:
                raise RuntimeError(f'task {i} returned {value!r}')
    finally:
        consumer.stop(graceful=True)
    return [
        metric('latency p50', percentile(times, 50) * 1e3, 'ms', higher_is_better=False),
        metric('latency p99', percentile(times, 99) * 1e3, 'ms', higher_is_better=False),
    ], {}


def main():
    logging.getLogger('huey').setLevel(logging.WARNING)
    p = params()
    kwargs = dict(p.get('storage_kwargs', {}))
    if p.get('reliable') and IS_HUEY_RS:  # huey 3.5.4 has no reliable mode: its default
        kwargs['reliable'] = True
    huey = make_huey(p['storage'], p.get('redis_url'), p.get('pg_dsn'), **kwargs)
    if p['mode'] == 'drain':
        metrics, check = drain(
            huey, p['tasks'], p.get('worker_type', 'thread'), p.get('metrics', False)
        )
    else:
        metrics, check = latency(huey, p['samples'], p['pause'])
    emit(metrics, **check)


if __name__ == '__main__':
    main()
