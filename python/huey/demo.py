"""``make demo``: a short tour of what huey-rs does (``python -m huey.demo``).

It writes a small app module into a temporary directory, enqueues work into a SqliteHuey
there, runs a real ``huey_consumer`` subprocess on it, prints results as they arrive and
stops the consumer with SIGINT (a graceful stop). A few seconds from start to finish. It
prints the app module first, and needs nothing beyond huey-rs itself: it runs the same from an
installed wheel as from a checkout.
"""

import datetime
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time

from huey import crontab, group
from huey.serializer import SignedSerializer

APP = '''\
"""The demo's tasks, imported by the demo and by the huey_consumer it starts."""
import os

from huey import SqliteHuey

huey = SqliteHuey('demo', filename=os.path.join(os.path.dirname(__file__), 'demo.db'))


@huey.task()
def add(a, b):
    return a + b


@huey.task()
def square(n):
    return n * n


@huey.task()
def total(numbers):
    return sum(numbers)


@huey.task()
def greet(name):
    return f'hello, {name} (from consumer pid {os.getpid()})'
'''


def next_matches(validate, start, count):
    found, t = [], start.replace(second=0, microsecond=0)
    while len(found) < count:
        t += datetime.timedelta(minutes=1)
        if validate(t):
            found.append(t)
    return found


def crontab_and_serializer_tour():
    start = datetime.datetime.now()
    spec = crontab(minute='*/15', hour='9-17', day_of_week='1-5')
    print(f'{spec!r} next matches after {start:%Y-%m-%d %H:%M}:')
    for t in next_matches(spec, start, 5):
        print('   ', t.strftime('%a %Y-%m-%d %H:%M'))

    serializer = SignedSerializer(secret='demo secret', compression=True)
    message = {'task': 'demo.add', 'args': (1, 2), 'kwargs': {}}
    framed = serializer.serialize(message)
    print(
        f'signed + gzipped message: {len(framed)} bytes, round trip ->',
        serializer.deserialize(framed),
    )


def import_app(directory):
    sys.path.insert(0, directory)
    sys.modules.pop('app', None)
    return importlib.import_module('app')


def is_ready(handle):
    """Whether a Result, a ResultGroup (pipeline, group) or a ChordResult has finished."""
    if hasattr(handle, 'callback'):  # ChordResult: done when its callback is
        return is_ready(handle.callback)
    if hasattr(handle, 'is_ready'):
        return handle.is_ready()
    return all(result.is_ready() for result in handle)


def print_results_as_they_arrive(pending, started, timeout=20):
    deadline = time.monotonic() + timeout
    while pending:
        for label, handle in list(pending):
            if is_ready(handle):
                print(f'  +{time.monotonic() - started:4.1f}s  {label:<42} -> {handle.get()!r}')
                pending.remove((label, handle))
        if pending and time.monotonic() > deadline:
            raise SystemExit(f'gave up waiting for: {", ".join(name for name, _ in pending)}')
        time.sleep(0.05)


def consumer_tour():
    with tempfile.TemporaryDirectory(prefix='huey-demo-') as directory:
        with open(os.path.join(directory, 'app.py'), 'w') as f:
            f.write(APP)
        app = import_app(directory)
        log_path = os.path.join(directory, 'consumer.log')
        command = [sys.executable, '-m', 'huey.bin.huey_consumer', 'app.huey', '-w', '2']
        print(f'\nstarting: {" ".join(command[1:])}  (in {directory})')
        with open(log_path, 'w') as log:
            consumer = subprocess.Popen(
                command, cwd=directory, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        started = time.monotonic()
        try:
            pending = [
                ('add(1, 2)', app.add(1, 2)),
                ('greet("huey-rs")', app.greet('huey-rs')),
                ('add(20, 22) scheduled 1.5 s ahead', app.add.schedule((20, 22), delay=1.5)),
                (
                    'pipeline add(1, 2) -> add(_, 3) -> square',
                    app.huey.enqueue(app.add.s(1, 2).then(app.add, 3).then(app.square)),
                ),
                (
                    'group square(0..4)',
                    app.huey.enqueue(group([app.square.s(n) for n in range(5)])),
                ),
                (
                    'chord square(1..4) -> total',
                    app.huey.enqueue(
                        group([app.square.s(n) for n in range(1, 5)]).then(app.total)
                    ),
                ),
            ]
            print(f'enqueued {len(pending)} items; results as they arrive:')
            print_results_as_they_arrive(pending, started)
            consumer.send_signal(signal.SIGINT)
            code = consumer.wait(timeout=10)
        finally:
            if consumer.poll() is None:
                consumer.kill()
                consumer.wait()
            app.huey.storage.close()
            sys.path.remove(directory)
            sys.modules.pop('app', None)
        with open(log_path) as log:
            lines = log.readlines()
        executed = sum('executed in' in line for line in lines)
        if lines:
            print(f"consumer's first log line: {lines[0].rstrip()}")
        print(
            f'consumer stopped gracefully on SIGINT (exit code {code}) after executing '
            f'{executed} tasks, {time.monotonic() - started:.1f}s after it started'
        )
        if code != 0:
            with open(log_path) as log:
                sys.stderr.write(log.read())
            raise SystemExit(code)


def show_app():
    print('The app this demo runs (app.py, written to a temporary directory):\n')
    print(''.join(f'    {line}' if line.strip() else line for line in APP.splitlines(True)))


def main():
    show_app()
    crontab_and_serializer_tour()
    consumer_tour()


if __name__ == '__main__':
    main()
