"""Side-by-side benchmarks: huey-rs (the interpreter running this script) against huey 3.5.4
(installed from PyPI into benches/.venv-huey354, created on first use).

Every workload runs in a fresh subprocess of each interpreter, alternating huey-rs and
huey 3.5.4 for several rounds; the table shows medians and their ratio. Usage:

    .venv/bin/python benches/run.py [--quick] [--only NAME[,NAME...]]

NAME is a workload name (``drain-redis``), a family (``drain``) or a glob (``*-file``).
"""

import argparse
import datetime
import fnmatch
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
REF_VENV = BENCHES / '.venv-huey354'
RESULTS = BENCHES / 'results'
RS, REF = 'huey-rs', 'huey 3.5.4'


@dataclass
class Workload:
    name: str
    module: str  # benches/workloads/<module>.py
    full: dict  # parameters for a full run
    quick: dict  # parameters for --quick

    @property
    def needs_redis(self):
        return 'redis' in self.name

    @property
    def needs_postgres(self):
        return 'postgres' in self.name


def workloads():
    ws = [
        Workload(
            'crontab',
            'crontab',
            {'expressions': 200, 'stride': 1},
            {'expressions': 200, 'stride': 61},
        ),
        Workload('serializer', 'serializer', {'min_time': 0.5}, {'min_time': 0.1}),
    ]
    # Task counts per storage (full, quick): the slow storages get fewer.
    drain = {
        'memory': (20_000, 2_000),
        'file': (5_000, 500),
        'sqlite': (2_000, 300),
        'redis': (20_000, 1_000),
        'priority-redis': (20_000, 1_000),
        'postgres': (5_000, 500),
    }
    for storage, (full, quick) in drain.items():
        ws.append(
            Workload(
                f'drain-{storage}',
                'consumer',
                {'storage': storage, 'mode': 'drain', 'tasks': full},
                {'storage': storage, 'mode': 'drain', 'tasks': quick},
            )
        )
    for storage in ('file', 'sqlite', 'redis', 'postgres'):
        full, quick = drain[storage]
        ws.append(
            Workload(
                f'drain-{storage}-processes',
                'consumer',
                {'storage': storage, 'mode': 'drain', 'tasks': full, 'worker_type': 'process'},
                {'storage': storage, 'mode': 'drain', 'tasks': quick, 'worker_type': 'process'},
            )
        )
    # huey-rs in at-least-once mode (reliable=True); huey 3.5.4 has no such mode, so its
    # column is its only one: this row's ratio is what at-least-once costs against huey's
    # at-most-once, and drain-redis's huey-rs cell is the same run's default mode.
    ws.append(
        Workload(
            'drain-redis-reliable',
            'consumer',
            {'storage': 'redis', 'mode': 'drain', 'tasks': 20_000, 'reliable': True},
            {'storage': 'redis', 'mode': 'drain', 'tasks': 1_000, 'reliable': True},
        )
    )
    for storage in drain:
        ws.append(
            Workload(
                f'latency-{storage}',
                'consumer',
                {'storage': storage, 'mode': 'latency', 'samples': 200, 'pause': 0.005},
                {'storage': storage, 'mode': 'latency', 'samples': 20, 'pause': 0.005},
            )
        )
    ws.append(
        Workload(
            'latency-redis-notify',
            'consumer',
            {
                'storage': 'redis',
                'mode': 'latency',
                'samples': 200,
                'pause': 0.005,
                'storage_kwargs': {'notify_result': True},
            },
            {
                'storage': 'redis',
                'mode': 'latency',
                'samples': 20,
                'pause': 0.005,
                'storage_kwargs': {'notify_result': True},
            },
        )
    )
    ws.append(
        Workload(
            'map-redis',
            'storage',
            {'storage': 'redis', 'mode': 'map', 'calls': 1_000, 'min_time': 1.0},
            {'storage': 'redis', 'mode': 'map', 'calls': 1_000, 'min_time': 0.2},
        )
    )
    for storage, (full, quick) in {'memory': (100_000, 50_000), 'file': (100_000, 5_000)}.items():
        ws.append(
            Workload(
                f'schedule-{storage}',
                'storage',
                {'storage': storage, 'mode': 'schedule', 'items': full},
                {'storage': storage, 'mode': 'schedule', 'items': quick},
            )
        )
    results = {
        'memory': (100_000, 20_000),
        'file': (2_000, 300),
        'sqlite': (2_000, 300),
        'redis': (20_000, 2_000),
    }
    for storage, (full, quick) in results.items():
        ws.append(
            Workload(
                f'results-{storage}',
                'storage',
                {'storage': storage, 'mode': 'results', 'items': full},
                {'storage': storage, 'mode': 'results', 'items': quick},
            )
        )
    for storage in ('memory', 'file', 'sqlite', 'redis'):
        ws.append(
            Workload(
                f'depth-{storage}',
                'storage',
                {
                    'storage': storage,
                    'mode': 'depth',
                    'depths': [10, 10_000, 100_000],
                    'min_time': 0.5,
                },
                {'storage': storage, 'mode': 'depth', 'depths': [10, 100, 2_000], 'min_time': 0.1},
            )
        )
    ws.append(
        Workload(
            'redis-floor',
            'redis_floor',
            {'items': 20_000, 'min_time': 0.5},
            {'items': 2_000, 'min_time': 0.1},
        )
    )
    ws.append(Workload('rss', 'memory', {'tasks': 100_000}, {'tasks': 30_000}))
    return ws


def select(all_workloads, only):
    if not only:
        return all_workloads
    patterns = [p.strip() for p in only.split(',') if p.strip()]
    chosen = [
        w
        for w in all_workloads
        if any(fnmatch.fnmatch(w.name, p) or w.name.startswith(p + '-') for p in patterns)
    ]
    if not chosen:
        sys.exit(
            f'--only {only!r} matches no workload; names: '
            + ', '.join(w.name for w in all_workloads)
        )
    return chosen


def ref_python():
    """The huey 3.5.4 interpreter, creating its venv from PyPI when missing or stale.

    redis-py (with hiredis, its C parser, which huey-rs's ``redis`` extra brings) and psycopg
    are pinned to the versions huey-rs runs with, so Redis and Postgres rows compare huey,
    not two database clients.
    """
    python = REF_VENV / 'bin' / 'python'
    pins = {}
    for package in ('redis', 'hiredis', 'psycopg', 'psycopg-binary'):
        try:
            pins[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            sys.exit(f'{package} is missing from this venv (make dev installs it)')
    probe = (
        'import huey, redis, hiredis, psycopg; '
        "assert huey.__version__ == '3.5.4', huey.__version__; "
        f"assert redis.__version__ == '{pins['redis']}', redis.__version__; "
        f"assert hiredis.__version__ == '{pins['hiredis']}', hiredis.__version__; "
        f"assert psycopg.__version__ == '{pins['psycopg']}', psycopg.__version__"
    )
    if (
        python.exists()
        and subprocess.run([python, '-c', probe], capture_output=True).returncode == 0
    ):
        return str(python)
    requirements = ['huey==3.5.4'] + [f'{package}=={v}' for package, v in pins.items()]
    print(f'creating {REF_VENV}: {" ".join(requirements)} from PyPI', file=sys.stderr)
    subprocess.run([sys.executable, '-m', 'venv', '--clear', REF_VENV], check=True)
    subprocess.run(
        [python, '-m', 'pip', 'install', '-q', '--disable-pip-version-check', *requirements],
        check=True,
    )
    subprocess.run([python, '-c', probe], check=True)
    return str(python)


def postgres_server():
    """A throwaway PostgreSQL server (tests/postgres_server.py), or an object whose ``error``
    says why there is none."""
    sys.path.insert(0, str(BENCHES.parent / 'tests'))
    from postgres_server import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        return type('NoServer', (), {'error': str(exc), 'cleanup': lambda self: None})()
    server.error = None
    return server


class RedisServer:
    """A throwaway redis-server on a free port (never 6379), no persistence."""

    def __init__(self, workdir):
        self.proc = None
        if shutil.which('redis-server') is None:
            self.error = 'redis-server not found (make redis-server)'
            return
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                'redis-server',
                '--port',
                str(self.port),
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
        self.url = f'redis://127.0.0.1:{self.port}/0'
        self.error = self._wait_ready()

    def _wait_ready(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(('127.0.0.1', self.port), timeout=1) as s:
                    s.sendall(b'PING\r\n')
                    if s.recv(16).startswith(b'+PONG'):
                        return None
            except OSError:
                time.sleep(0.05)
        return 'redis-server did not start'

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def run_once(python, workload, params, env, timeout):
    """One workload in a fresh process: its parsed JSON line, or an error string."""
    cmd = [python, '-m', f'workloads.{workload.module}', json.dumps(params)]
    try:
        proc = subprocess.run(
            cmd, cwd=BENCHES, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f'timed out after {timeout}s'
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        stderr = proc.stderr.strip().splitlines()
        return stderr[-1] if stderr else f'exit status {proc.returncode}'
    return json.loads(lines[-1])


def measure(selected, pythons, quick, redis, postgres):
    """Run every workload ``rounds`` times per package, alternating; collect raw outcomes."""
    rounds = 2 if quick else 5
    timeout = 60 if quick else 1800
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}
    outcomes = {w.name: {pkg: {'runs': [], 'error': None} for pkg in pythons} for w in selected}
    for rnd in range(rounds):
        for w in selected:
            params = dict(w.quick if quick else w.full)
            if w.needs_redis:
                params['redis_url'] = getattr(redis, 'url', None)
            if w.needs_postgres:
                params['pg_dsn'] = getattr(postgres, 'dsn', None)
            for pkg, python in pythons.items():
                out = outcomes[w.name][pkg]
                if out['error']:
                    continue  # failures are deterministic enough: don't pay for them twice
                if w.needs_redis and redis.error:
                    out['error'] = redis.error
                    continue
                if w.needs_postgres and postgres.error:
                    out['error'] = postgres.error
                    continue
                t0 = time.monotonic()
                result = run_once(python, w, params, env, timeout)
                took = time.monotonic() - t0
                if isinstance(result, str):
                    out['error'] = result
                else:
                    out['runs'].append(result)
                status = 'ok' if not isinstance(result, str) else f'error: {result}'
                print(
                    f'[{rnd + 1}/{rounds}] {w.name:<22} {pkg:<11} {took:6.1f}s  {status}',
                    file=sys.stderr,
                )
    return outcomes, rounds


def summarize(selected, outcomes):
    """One row per metric: medians per package and the ratio (> 1: huey-rs is better)."""
    rows, notes = [], []
    for w in selected:
        by_pkg = outcomes[w.name]
        template = next(
            (o['runs'][0]['metrics'] for o in by_pkg.values() if o['runs']),
            [{'name': '-', 'unit': '', 'higher_is_better': True}],
        )
        for m in template:
            row = {
                'workload': w.name,
                'metric': m['name'],
                'unit': m['unit'],
                'higher_is_better': m['higher_is_better'],
            }
            for pkg, out in by_pkg.items():
                values = [
                    x['value']
                    for run in out['runs']
                    for x in run['metrics']
                    if x['name'] == m['name']
                ]
                row[pkg] = {
                    'median': statistics.median(values) if values else None,
                    'samples': values,
                    'error': out['error'],
                }
            rs, ref = row[RS]['median'], row[REF]['median']
            row['ratio'] = None
            if rs and ref:
                row['ratio'] = rs / ref if m['higher_is_better'] else ref / rs
            rows.append(row)
        checks = {pkg: out['runs'][0]['check'] for pkg, out in by_pkg.items() if out['runs']}
        if len(checks) == 2 and checks[RS] != checks[REF]:
            notes.append(
                f'{w.name}: the packages disagree: {RS} {checks[RS]}, {REF} {checks[REF]}'
            )
    return rows, notes


def fmt(value, unit):
    if value >= 1e6:
        text = f'{value / 1e6:.2f}M'
    elif value >= 1e4:
        text = f'{value / 1e3:.1f}k'
    elif value >= 100:
        text = f'{value:.0f}'
    else:
        text = f'{value:.3g}'
    return f'{text} {unit}'


def cell(entry, unit):
    if entry['median'] is not None:
        return fmt(entry['median'], unit)
    error = entry['error'] or 'no result'
    return f'n/a (error: {error[:60]})'


def render(rows, notes):
    header = ['workload', 'metric', RS, REF, 'ratio (>1: huey-rs better)']
    table = [
        [
            r['workload'],
            r['metric'],
            cell(r[RS], r['unit']),
            cell(r[REF], r['unit']),
            f'{r["ratio"]:.2f}x' if r['ratio'] else '-',
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header] + table) for i in range(len(header))]
    lines = [
        '| ' + ' | '.join(c.ljust(wd) for c, wd in zip(line, widths)) + ' |'
        for line in [header] + table
    ]
    lines.insert(1, '|' + '|'.join('-' * (wd + 2) for wd in widths) + '|')
    text = '\n'.join(lines)
    text += (
        '\n\nratio = huey-rs / huey 3.5.4 for throughputs, huey 3.5.4 / huey-rs for '
        'latencies, per-operation times and RSS: > 1 means huey-rs is faster or smaller.'
    )
    for note in notes:
        text += f'\n\nnote: {note}'
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='small N, 2 rounds (< 3 min)')
    parser.add_argument('--only', help='comma-separated workload names, families or globs')
    args = parser.parse_args()

    selected = select(workloads(), args.only)
    pythons = {RS: sys.executable, REF: ref_python()}
    started = datetime.datetime.now()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='huey-bench-') as tmp:
        redis = RedisServer(tmp) if any(w.needs_redis for w in selected) else None
        postgres = postgres_server() if any(w.needs_postgres for w in selected) else None
        try:
            # Workloads put their files under TMPDIR, so everything goes when the run ends.
            os.environ['TMPDIR'] = tmp
            outcomes, rounds = measure(selected, pythons, args.quick, redis, postgres)
        finally:
            if redis is not None:
                redis.stop()
            if postgres is not None:
                postgres.cleanup()
    rows, notes = summarize(selected, outcomes)
    elapsed = time.monotonic() - t0

    mode = 'quick' if args.quick else 'full'
    title = (
        f'huey-rs vs huey 3.5.4, {mode} run, {rounds} rounds, medians, '
        f'{started:%Y-%m-%d %H:%M} on {platform.node()} ({platform.machine()}, '
        f'Python {platform.python_version()}), {elapsed:.0f}s'
    )
    text = render(rows, notes)
    print(f'\n{title}\n\n{text}')

    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f'{started:%Y%m%d-%H%M%S}-{mode}'
    stem.with_suffix('.md').write_text(f'# {title}\n\n{text}\n')
    huey_paths = {
        pkg: next((run['huey'] for o in outcomes.values() for run in o[pkg]['runs']), None)
        for pkg in pythons
    }
    stem.with_suffix('.json').write_text(
        json.dumps(
            {
                'title': title,
                'mode': mode,
                'rounds': rounds,
                'started': started.isoformat(),
                'interpreters': pythons,
                'huey': huey_paths,
                'params': {w.name: w.quick if args.quick else w.full for w in selected},
                'rows': rows,
                'notes': notes,
            },
            indent=1,
        )
    )
    print(f'\nwrote {stem}.md and {stem}.json')


if __name__ == '__main__':
    main()
