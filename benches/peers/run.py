"""Python task queues side by side on one private Redis: huey-rs, huey 3.5.4, rq, dramatiq,
celery, taskiq and arq, the same workloads for each.

Usage: ``.venv/bin/python benches/peers/run.py [--quick] [--only SYSTEM,...]``

huey-rs runs from the interpreter that starts this script (the project's ``.venv``); every
other system from a venv of its own, ``benches/peers/.venv-<system>``, created on first use
from the exact versions in ``PINS`` (huey 3.5.4 reuses ``benches/.venv-huey354`` when that one
has the same versions). Each workload runs in a fresh process of the system's adapter
(``systems/<name>.py``, the workloads are described in ``systems/_common.py``), after a
FLUSHALL. Rounds are interleaved: for each workload, every system once, then again in a
rotated order. The table (medians, [min-max], huey-rs against the best other system) is printed
and written to ``benches/results/<time>-peers.md``, every sample to the ``.json`` beside it.
"""

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEERS = Path(__file__).resolve().parent
BENCHES = PEERS.parent
RESULTS = BENCHES / 'results'

REDIS_PY = '8.1.0'  # the redis-py of the project's .venv; every system that allows it uses it
# and hiredis, redis-py's C parser, which huey-rs's redis extra installs: every system gets it
HIREDIS = '3.5.0'
# Exact versions per system (requirement name -> version), installed with pip from PyPI.
PINS = {
    'huey 3.5.4': {'huey': '3.5.4', 'redis': REDIS_PY, 'hiredis': HIREDIS},
    'rq': {'rq': '3.0.0', 'redis': REDIS_PY, 'hiredis': HIREDIS},
    'dramatiq': {'dramatiq[redis]': '2.2.1', 'redis': REDIS_PY, 'hiredis': HIREDIS},
    'celery': {'celery[redis]': '5.7.0', 'kombu': '5.7.0', 'redis': REDIS_PY, 'hiredis': HIREDIS},
    'taskiq': {'taskiq': '0.13.0', 'taskiq-redis': '1.2.4', 'redis': REDIS_PY, 'hiredis': HIREDIS},
    # arq 0.28.0 requires redis[hiredis]>=4.2,<6: the newest 5.x.
    'arq': {'arq': '0.28.0', 'redis[hiredis]': '5.3.1', 'hiredis': HIREDIS},
}
PIN_REASONS = {'arq': 'arq 0.28.0 requires redis[hiredis]>=4.2,<6'}
RS = 'huey-rs'
SYSTEMS = [RS, *PINS]
ADAPTERS = {RS: 'huey', 'huey 3.5.4': 'huey'}  # others: the system's name
VENV_NAMES = {'huey 3.5.4': 'huey354'}

# (workload, full parameters, quick parameters)
WORKLOADS = [
    ('enqueue', {'tasks': 10_000}, {'tasks': 500}),
    ('bulk-enqueue', {'tasks': 10_000}, {'tasks': 500}),
    ('drain-threads', {'tasks': 10_000}, {'tasks': 500}),
    ('drain-processes', {'tasks': 10_000}, {'tasks': 500}),
    ('latency', {'samples': 200}, {'samples': 20}),
]
# Table rows: (value name, workload it comes from, unit, higher is better)
ROWS = [
    ('enqueue', 'enqueue', 'tasks/s', True),
    ('bulk-enqueue', 'bulk-enqueue', 'tasks/s', True),
    ('drain-threads', 'drain-threads', 'tasks/s', True),
    ('drain-processes', 'drain-processes', 'tasks/s', True),
    ('latency-p50', 'latency', 'ms', False),
    ('latency-p99', 'latency', 'ms', False),
    ('rss', 'drain-threads', 'MB', False),
]


def venv_python(system):
    """The interpreter for ``system``, creating its venv when missing or not as pinned;
    or an error string."""
    if system == RS:
        return sys.executable
    pins = PINS[system]
    wanted = {name.split('[')[0]: version for name, version in pins.items()}
    probe = (
        'import importlib.metadata as m, json, sys\n'
        'want = json.loads(sys.argv[1])\n'
        'sys.exit(any(m.version(k) != v for k, v in want.items()))'
    )
    own = PEERS / f'.venv-{VENV_NAMES.get(system, system)}'
    candidates = [own] if system != 'huey 3.5.4' else [BENCHES / '.venv-huey354', own]
    for venv in candidates:
        python = venv / 'bin' / 'python'
        if python.exists():
            check = subprocess.run([python, '-c', probe, json.dumps(wanted)], capture_output=True)
            if check.returncode == 0:
                return str(python)
    requirements = [f'{name}=={version}' for name, version in pins.items()]
    print(f'creating {own}: {" ".join(requirements)}', file=sys.stderr)
    base = shutil.which('python3.11') or sys.executable
    python = own / 'bin' / 'python'
    steps = [
        [base, '-m', 'venv', '--clear', own],
        [python, '-m', 'pip', 'install', '-q', '--disable-pip-version-check', *requirements],
        [python, '-c', probe, json.dumps(wanted)],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return f'venv: {lines[-1] if lines else "exit status " + str(proc.returncode)}'
    return str(python)


def redis_server_class():
    """benches/run.py's RedisServer: a throwaway redis-server on a free port, not 6379."""
    spec = importlib.util.spec_from_file_location('huey_benches_run', BENCHES / 'run.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.RedisServer


def session_pids(sid):
    """Live processes in session ``sid`` (an adapter and every worker it started)."""
    pids = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            data = Path(f'/proc/{name}/stat').read_text()
        except OSError:
            continue
        if int(data[data.rindex(')') + 2 :].split()[3]) == sid:
            pids.append(int(name))
    return pids


def run_adapter(python, adapter, params, env, timeout):
    """One workload in a fresh adapter process: its JSON line (a dict with ``error`` when it
    failed). The adapter leads a session of its own: whatever is left of it is killed."""
    proc = subprocess.Popen(
        [python, '-m', f'systems.{adapter}', json.dumps(params)],
        cwd=PEERS,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = '', f'timed out after {timeout}s'
    finally:
        for pid in session_pids(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    lines = stdout.strip().splitlines()
    if lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    err = [line for line in stderr.strip().splitlines() if line.strip()]
    return {'error': err[-1].strip() if err else f'exit status {proc.returncode}'}


def measure(systems, pythons, quick, redis_url):
    """Every workload, ``rounds`` times per system, interleaved; the raw outcomes."""
    import redis

    rounds = 1 if quick else 3
    timeout = 180 if quick else 900
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}
    env['PEERS_REDIS_URL'] = redis_url
    client = redis.Redis.from_url(redis_url)
    outcomes = {
        w: {s: {'runs': [], 'error': None, 'na': None} for s in systems} for w, *_ in WORKLOADS
    }
    for workload, full, small in WORKLOADS:
        params = {'workload': workload, 'redis_url': redis_url, **(small if quick else full)}
        for rnd in range(rounds):
            order = systems[rnd % len(systems) :] + systems[: rnd % len(systems)]
            for system in order:
                out = outcomes[workload][system]
                if out['error'] or out['na']:
                    continue  # deterministic enough: don't pay for it again
                if pythons[system].startswith('venv:'):
                    out['error'] = pythons[system]
                    continue
                client.flushall()
                t0 = time.monotonic()
                result = run_adapter(
                    pythons[system], ADAPTERS.get(system, system), params, env, timeout
                )
                took = time.monotonic() - t0
                if 'error' in result:
                    out['error'] = result['error']
                elif result.get('extra', {}).get('na'):
                    out['na'] = result['extra']['na']
                else:
                    out['runs'].append(result)
                status = result.get('error') and f'error: {result["error"]}' or 'ok'
                print(
                    f'[{rnd + 1}/{rounds}] {workload:<16} {system:<11} {took:6.1f}s  {status}',
                    file=sys.stderr,
                )
    client.flushall()
    client.close()
    return outcomes, rounds


def summarize(systems, outcomes):
    """Per row and system: median, min, max and samples (or the reason there are none)."""
    rows = []
    for name, workload, unit, higher in ROWS:
        row = {'row': name, 'workload': workload, 'unit': unit, 'higher_is_better': higher}
        for system in systems:
            out = outcomes[workload][system]
            values = [run['values'][name] for run in out['runs'] if name in run['values']]
            row[system] = {
                'median': statistics.median(values) if values else None,
                'min': min(values, default=None),
                'max': max(values, default=None),
                'samples': values,
                'error': out['error'],
                'na': out['na'],
            }
        others = [s for s in systems if s != RS and row[s]['median'] is not None]
        row['ratio'] = row['best_other'] = None
        if RS in systems and row[RS]['median'] and others:
            pick = max if higher else min
            best = pick(others, key=lambda s: row[s]['median'])
            rs, other = row[RS]['median'], row[best]['median']
            row['best_other'] = best
            row['ratio'] = rs / other if higher else other / rs
        rows.append(row)
    return rows


def fmt(value):
    if value >= 1e6:
        return f'{value / 1e6:.2f}M'
    if value >= 1e4:
        return f'{value / 1e3:.1f}k'
    if value >= 100:
        return f'{value:.0f}'
    return f'{value:.3g}'


def cell(entry):
    if entry['median'] is None:
        if entry['na']:
            return f'n/a ({entry["na"]})'
        return f'n/a (error: {(entry["error"] or "no result")[:70]})'
    text = fmt(entry['median'])
    if len(entry['samples']) > 1:
        text += f' [{fmt(entry["min"])}–{fmt(entry["max"])}]'
    return text


def render(systems, rows, notes):
    header = ['workload', *systems]
    if RS in systems:
        header.append('huey-rs vs best other')
    table = []
    for r in rows:
        line = [f'{r["row"]} ({r["unit"]})', *(cell(r[s]) for s in systems)]
        if RS in systems:
            line.append(f'{r["ratio"]:.2f}x ({r["best_other"]})' if r['ratio'] else '-')
        table.append(line)
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
    lines = [
        '| ' + ' | '.join(c.ljust(w) for c, w in zip(line, widths)) + ' |'
        for line in [header, *table]
    ]
    lines.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    text = '\n'.join(lines)
    text += (
        '\n\nMedian [min–max] over the rounds. "huey-rs vs best other": huey-rs / the best other '
        'system for tasks/s, the best other / huey-rs for ms and MB; > 1 means huey-rs is '
        'better. drain rates leave worker start-up out (timed from the first completed task). '
        'rss: peak RSS of the drain-threads worker processes, summed.'
    )
    if notes:
        text += '\n\nNotes:\n' + '\n'.join(f'- {note}' for note in notes)
    return text


def collect(systems, outcomes):
    """Installed versions per system and the adapters' notes, from the JSON lines."""
    versions, notes = {}, []
    for system in systems:
        found, per_task = {}, None
        for workload, *_ in WORKLOADS:
            for run in outcomes[workload][system]['runs']:
                versions.setdefault(system, run.get('versions', {}))
                per_task = per_task or run.get('per_task')
                if run.get('note'):
                    found[workload] = run['note']
        parts = [f'per task: {per_task}'] if per_task else []
        redis_py = versions.get(system, {}).get('redis')
        if redis_py and redis_py != REDIS_PY:
            parts.append(f'redis-py {redis_py}: {PIN_REASONS.get(system, "pinned")}')
        parts += [f'{w}: {n}' for w, n in found.items()]
        if parts:
            notes.append(f'{system}: ' + '; '.join(parts))
    return versions, notes


def version_line(systems, versions):
    parts = []
    for system in systems:
        found = dict(versions.get(system, {}))
        if not found:
            parts.append(f'{system} (no run)')
            continue
        main_pkg = {RS: 'huey-rs', 'huey 3.5.4': 'huey'}.get(system, system)
        version = found.pop(main_pkg, '?')
        label = system if system.endswith(version) else f'{system} {version}'
        parts.append(f'{label} ({", ".join(f"{k} {v}" for k, v in found.items())})')
    return '; '.join(parts)


def choose(only):
    if not only:
        return SYSTEMS
    chosen = [s.strip() for s in only.split(',') if s.strip()]
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown:
        sys.exit(f'--only: unknown {", ".join(unknown)}; systems: {", ".join(SYSTEMS)}')
    return [s for s in SYSTEMS if s in chosen]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='N=500, 20 latency samples, 1 round')
    parser.add_argument('--only', help=f'comma-separated systems: {",".join(SYSTEMS)}')
    args = parser.parse_args()
    systems = choose(args.only)

    pythons = {system: venv_python(system) for system in systems}
    started = datetime.datetime.now()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='huey-peers-') as tmp:
        redis = redis_server_class()(tmp)
        try:
            if redis.error:
                sys.exit(redis.error)
            os.environ['TMPDIR'] = tmp  # worker logs go there, and with it
            outcomes, rounds = measure(systems, pythons, args.quick, redis.url)
        finally:
            redis.stop()
    rows = summarize(systems, outcomes)
    versions, notes = collect(systems, outcomes)
    local_redis = importlib.metadata.version('redis')
    if local_redis != REDIS_PY:
        notes.insert(0, f'the project .venv has redis-py {local_redis}, the peers {REDIS_PY}')
    elapsed = time.monotonic() - t0

    mode = 'quick' if args.quick else 'full'
    sizes = dict(WORKLOADS[0][2 if args.quick else 1], **WORKLOADS[-1][2 if args.quick else 1])
    title = (
        f'Python task queues on one Redis, {mode} run, {rounds} round(s), '
        f'N={sizes["tasks"]:,} tasks per enqueue/drain, {sizes["samples"]} latency samples, '
        f'{started:%Y-%m-%d %H:%M} on {platform.node()} ({platform.machine()}, '
        f'{os.cpu_count()} CPUs, Python {platform.python_version()}), {elapsed:.0f}s'
    )
    header = f'{title}\n\nVersions: {version_line(systems, versions)}.'
    text = render(systems, rows, notes)
    print(f'\n{header}\n\n{text}')

    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f'{started:%Y%m%d-%H%M%S}-peers'
    stem.with_suffix('.md').write_text(f'# {header}\n\n{text}\n')
    stem.with_suffix('.json').write_text(
        json.dumps(
            {
                'title': title,
                'mode': mode,
                'rounds': rounds,
                'started': started.isoformat(),
                'pins': PINS,
                'interpreters': pythons,
                'versions': versions,
                'workloads': {w: (q if args.quick else f) for w, f, q in WORKLOADS},
                'outcomes': outcomes,
                'rows': rows,
                'notes': notes,
            },
            indent=1,
        )
    )
    print(f'\nwrote {stem}.md and {stem}.json')


if __name__ == '__main__':
    main()
