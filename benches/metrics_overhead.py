"""The cost of ``huey_consumer --metrics``: drain with 4 thread workers on Memory and Redis,
metrics off and on (the endpoint scraped every second meanwhile), huey-rs only.

Each configuration runs in a fresh subprocess, off and on alternating for several rounds;
the table gives the medians and on/off as a ratio (1.00 = no cost). Usage:

    .venv/bin/python benches/metrics_overhead.py [--rounds N] [--quick]
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile

from run import RESULTS, RedisServer, Workload, run_once

TASKS = {'memory': (20_000, 2_000), 'redis': (20_000, 2_000)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--quick', action='store_true', help='fewer tasks, 2 rounds')
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}
    rates = {(s, m): [] for s in TASKS for m in (False, True)}
    with tempfile.TemporaryDirectory(prefix='huey-bench-') as tmp:
        os.environ['TMPDIR'] = tmp
        redis = RedisServer(tmp)
        if redis.error:
            sys.exit(redis.error)
        try:
            for rnd in range(rounds):
                for storage, (full, quick) in TASKS.items():
                    for metrics in (False, True):
                        params = {
                            'storage': storage,
                            'mode': 'drain',
                            'tasks': quick if args.quick else full,
                            'metrics': metrics,
                            'redis_url': redis.url,
                        }
                        workload = Workload(f'drain-{storage}', 'consumer', params, params)
                        result = run_once(sys.executable, workload, params, env, 600)
                        if isinstance(result, str):
                            sys.exit(f'drain-{storage} metrics={metrics}: {result}')
                        (rate,) = [
                            m['value'] for m in result['metrics'] if m['name'].startswith('drain')
                        ]
                        rates[(storage, metrics)].append(rate)
                        print(
                            f'[{rnd + 1}/{rounds}] drain-{storage:<7} metrics '
                            f'{"on " if metrics else "off"} {rate:9.0f} tasks/s',
                            file=sys.stderr,
                        )
        finally:
            redis.stop()
    lines = [
        '| workload | metrics off | metrics on | on / off | runs (off; on) |',
        '|---|---|---|---|---|',
    ]
    for storage in TASKS:
        off, on = rates[(storage, False)], rates[(storage, True)]
        ratio = statistics.median(on) / statistics.median(off)
        runs = ', '.join(f'{r:.0f}' for r in off) + '; ' + ', '.join(f'{r:.0f}' for r in on)
        lines.append(
            f'| drain-{storage} (4 threads) | {statistics.median(off):.0f}/s | '
            f'{statistics.median(on):.0f}/s | {ratio:.2f} | {runs} |'
        )
    started = datetime.datetime.now()
    title = (
        f'huey_consumer --metrics on vs off, {rounds} rounds, medians, '
        f'{started:%Y-%m-%d %H:%M} on {platform.node()} (Python {platform.python_version()})'
    )
    text = '\n'.join(lines)
    print(f'\n{title}\n\n{text}')
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f'{started:%Y%m%d-%H%M%S}-metrics.md'
    path.write_text(f'# {title}\n\n{text}\n')
    print(f'\nwrote {path}')


if __name__ == '__main__':
    main()
