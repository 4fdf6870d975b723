"""Soak test: many tasks through several real ``huey_consumer`` processes, then a full audit.

    python benches/soak.py --storage redis --tasks 200000 --consumers 4

Starts its own redis-server (free loopback port) or sqlite file in a temp directory, enqueues
``--tasks`` tasks in batches, runs ``--consumers`` consumer processes (2 worker threads
each), waits for every result, and prints throughput, the number of results verified, how
many tasks were lost or ran twice, and each consumer's RSS at start and end. Exits non-zero
if anything was lost. Run by ``make soak`` (not part of ``make test``).
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

APP = textwrap.dedent("""
    import os
    from huey import RedisHuey, SqliteHuey

    if os.environ['SOAK_STORAGE'] == 'redis':
        huey = RedisHuey('soak', port=int(os.environ['SOAK_REDIS_PORT']))
    else:
        huey = SqliteHuey('soak', filename=os.environ['SOAK_SQLITE'])

    @huey.task()
    def record(i):
        # One run per task: a second run of the same task shows up as a count of 2.
        huey.storage.incr('runs:%d' % i)
        return i
""")


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def rss_kib(pid):
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--storage', choices=('redis', 'sqlite'), default='redis')
    parser.add_argument('--tasks', type=int, default=200_000)
    parser.add_argument('--consumers', type=int, default=4)
    parser.add_argument('--timeout', type=float, default=1800)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix='huey-soak-')
    with open(os.path.join(workdir, 'soak_app.py'), 'w') as f:
        f.write(APP)
    env = dict(
        os.environ,
        SOAK_STORAGE=args.storage,
        PYTHONPATH=workdir,
        SOAK_SQLITE=os.path.join(workdir, 'soak.db'),
    )
    redis_proc = None
    if args.storage == 'redis':
        port = free_port()
        env['SOAK_REDIS_PORT'] = str(port)
        redis_proc = subprocess.Popen(
            [
                'redis-server',
                '--port',
                str(port),
                '--bind',
                '127.0.0.1',
                '--save',
                '',
                '--appendonly',
                'no',
                '--dir',
                workdir,
            ],
            stdout=subprocess.DEVNULL,
        )
    os.environ.update(env)
    sys.path.insert(0, workdir)
    consumers = []
    try:
        import soak_app

        huey = soak_app.huey
        for _ in range(100):
            try:
                huey.storage.flush_all()
                break
            except Exception:
                time.sleep(0.05)  # redis-server still starting

        start = time.perf_counter()
        batch = 1000
        for first in range(0, args.tasks, batch):
            soak_app.record.map(range(first, min(first + batch, args.tasks)))
        enqueued_in = time.perf_counter() - start

        command = [
            sys.executable,
            '-m',
            'huey.bin.huey_consumer',
            'soak_app.huey',
            '-w',
            '2',
            '-q',
            '-d',
            '0.01',
            '-m',
            '0.5',
        ]
        for _ in range(args.consumers):
            consumers.append(subprocess.Popen(command, env=env, cwd=workdir))
        time.sleep(1)
        rss_start = [rss_kib(p.pid) for p in consumers]

        drain_start = time.perf_counter()
        deadline = drain_start + args.timeout
        while huey.result_count() < args.tasks and time.perf_counter() < deadline:
            if any(p.poll() is not None for p in consumers):
                break
            time.sleep(0.5)
        drained_in = time.perf_counter() - drain_start
        rss_end = [rss_kib(p.pid) for p in consumers]
        for p in consumers:
            p.send_signal(signal.SIGINT)
        for p in consumers:
            p.wait(timeout=60)

        values = [
            huey.serializer.deserialize(v)
            for k, v in huey.all_results().items()
            if not str(k).startswith('runs:')
        ]
        verified = len(set(values) & set(range(args.tasks)))
        runs = [huey.storage.incr(f'runs:{i}', 0) for i in range(args.tasks)]
        lost = sum(1 for r in runs if r == 0)
        twice = sum(1 for r in runs if r > 1)
        print(f'storage            {args.storage}')
        print(f'tasks              {args.tasks}')
        print(f'consumers          {args.consumers} processes x 2 threads')
        print(f'enqueue            {args.tasks / enqueued_in:,.0f} tasks/s')
        print(f'drain              {args.tasks / drained_in:,.0f} tasks/s')
        print(f'results verified   {verified}')
        print(f'lost               {lost}')
        print(f'ran more than once {twice}')
        print(f'consumer RSS start {", ".join(f"{k / 1024:.1f} MiB" for k in rss_start)}')
        print(f'consumer RSS end   {", ".join(f"{k / 1024:.1f} MiB" for k in rss_end)}')
        return 0 if lost == 0 and verified == args.tasks else 1
    finally:
        for p in consumers:
            if p.poll() is None:
                p.kill()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
