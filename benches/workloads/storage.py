"""Storage-level operations, called on ``huey.storage`` (and ``huey.put``/``huey.get``).

``mode=schedule``: add N payloads to the schedule with increasing timestamps, then read them
all back with one ``read_schedule``. ``mode=depth``: prefill the queue to each depth, then time
``enqueue`` + ``dequeue`` pairs (the depth stays constant). ``mode=results``: ``huey.put`` N
values, then ``huey.get`` them all. ``mode=map``: ``TaskWrapper.map`` of ``calls`` argument
tuples, repeated for ``min_time``; the queue is flushed between batches (not timed).
"""

import datetime
import time

from workloads._common import emit, make_huey, metric, params, payload, rate


def schedule(storage, n):
    base = datetime.datetime(2024, 3, 1)
    items = [(payload(i), base + datetime.timedelta(seconds=i)) for i in range(n)]
    t0 = time.perf_counter()
    for data, ts in items:
        storage.add_to_schedule(data, ts)
    add_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    due = storage.read_schedule(base + datetime.timedelta(seconds=n))
    read_time = time.perf_counter() - t0
    if len(due) != n:
        raise RuntimeError(f'read_schedule returned {len(due)} of {n} items')
    return [
        metric('add_to_schedule', n / add_time, 'items/s'),
        metric(f'read_schedule ({n:,} due)', n / read_time, 'items/s'),
    ]


def depth(storage, depths, min_time):
    metrics = []
    filled = 0
    data = payload(0)
    for target in depths:
        for i in range(filled, target):
            storage.enqueue(payload(i))
        filled = target

        def pair():
            storage.enqueue(data)
            storage.dequeue()

        per_pair = 1 / rate(pair, min_time)
        metrics.append(
            metric(
                f'enqueue+dequeue @ depth {target:,}', per_pair * 1e6, 'us', higher_is_better=False
            )
        )
    return metrics


def results(huey, n):
    keys = [f'result-{i}' for i in range(n)]
    value = {'status': 'ok', 'rows': list(range(10))}
    t0 = time.perf_counter()
    for key in keys:
        huey.put(key, value)
    put_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    for key in keys:
        if huey.get(key) != value:
            raise RuntimeError(f'huey.get({key!r}) lost the value')
    get_time = time.perf_counter() - t0
    return [metric('put', n / put_time, 'ops/s'), metric('get', n / get_time, 'ops/s')]


def map_calls(huey, calls, min_time):
    @huey.task()
    def add(a, b):
        return a + b

    args = [(i, i) for i in range(calls)]
    batches, elapsed = 0, 0.0
    while elapsed < min_time:
        t0 = time.perf_counter()
        group = add.map(args)
        elapsed += time.perf_counter() - t0
        batches += 1
        if len(group) != calls or huey.pending_count() != calls:
            raise RuntimeError(f'map enqueued {huey.pending_count()} of {calls} tasks')
        huey.flush()
    return [metric(f'map of {calls:,} calls', batches * calls / elapsed, 'tasks/s')]


def main():
    p = params()
    huey = make_huey(p['storage'], p.get('redis_url'))
    if p['mode'] == 'schedule':
        metrics = schedule(huey.storage, p['items'])
    elif p['mode'] == 'depth':
        metrics = depth(huey.storage, p['depths'], p['min_time'])
    elif p['mode'] == 'map':
        metrics = map_calls(huey, p['calls'], p['min_time'])
    else:
        metrics = results(huey, p['items'])
    emit(metrics)


if __name__ == '__main__':
    main()
