"""FileStorage micro-benchmark, run unchanged under huey-rs and under huey 3.5.4.

    .venv/bin/python benches/file_storage.py            # huey-rs
    /work/ref-venv/bin/python benches/file_storage.py   # huey 3.5.4

Prints one JSON object: microseconds per enqueue+dequeue pair at several queue depths, per
enqueue and per dequeue when filling and draining, and per add_to_schedule / per message
returned by read_schedule.
"""

import datetime
import json
import random
import shutil
import sys
import tempfile
import time

from huey.storage import FileStorage

MESSAGE = b'x' * 200


def fresh(base):
    return FileStorage('bench', tempfile.mkdtemp(dir=base))


def pair_cost(storage, depth, budget=2.0, max_pairs=5000):
    for _ in range(depth):
        storage.enqueue(MESSAGE)
    pairs, started = 0, time.perf_counter()
    while pairs < max_pairs and time.perf_counter() - started < budget:
        storage.enqueue(MESSAGE)
        storage.dequeue()
        pairs += 1
    return (time.perf_counter() - started) / pairs * 1e6


def fill_and_drain(storage, count):
    started = time.perf_counter()
    for _ in range(count):
        storage.enqueue(MESSAGE)
    filled = time.perf_counter()
    while storage.dequeue() is not None:
        pass
    drained = time.perf_counter()
    return (filled - started) / count * 1e6, (drained - filled) / count * 1e6


def schedule_cost(storage, count):
    now = datetime.datetime.now()
    stamps = [now - datetime.timedelta(seconds=random.random() * 3600) for _ in range(count)]
    started = time.perf_counter()
    for ts in stamps:
        storage.add_to_schedule(MESSAGE, ts)
    added = time.perf_counter()
    got = storage.read_schedule(now)
    read = time.perf_counter()
    assert len(got) == count, len(got)
    return (added - started) / count * 1e6, (read - added) / count * 1e6


def main():
    depths = [int(d) for d in sys.argv[1:]] or [10, 10_000, 100_000]
    base = tempfile.mkdtemp(prefix='bench-file-')
    try:
        result = {'implementation': FileStorage.__module__}
        for depth in depths:
            result[f'pair_us_depth_{depth}'] = round(pair_cost(fresh(base), depth), 1)
        enqueue, dequeue = fill_and_drain(fresh(base), 5000)
        result['enqueue_us'], result['drain_us_per_message'] = round(enqueue, 1), round(dequeue, 1)
        add, read = schedule_cost(fresh(base), 2000)
        result['add_to_schedule_us'], result['read_schedule_us_per_message'] = (
            round(add, 1),
            round(read, 1),
        )
        print(json.dumps(result))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == '__main__':
    main()
