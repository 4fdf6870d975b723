"""What Redis itself costs: raw redis-py LPUSH / BRPOP with the payloads the storages carry.

Both packages run this with the same redis-py, so its ratio shows the run-to-run noise; the
absolute figures are the floor under any Redis-backed huey.
"""

import time

import redis

from workloads._common import emit, metric, params, payload, rate


def main():
    p = params()
    conn = redis.Redis.from_url(p['redis_url'])
    conn.flushdb()
    n = p['items']
    items = [payload(i) for i in range(n)]
    t0 = time.perf_counter()
    for data in items:
        conn.lpush('floor', data)
    push_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        conn.brpop('floor', timeout=1)
    pop_time = time.perf_counter() - t0

    data = items[0]

    def pair():
        conn.lpush('floor', data)
        conn.brpop('floor', timeout=1)

    per_pair = 1 / rate(pair, p['min_time'])
    emit(
        [
            metric('LPUSH', n / push_time, 'ops/s'),
            metric('BRPOP', n / pop_time, 'ops/s'),
            metric('LPUSH+BRPOP pair', per_pair * 1e6, 'us', higher_is_better=False),
        ]
    )


if __name__ == '__main__':
    main()
