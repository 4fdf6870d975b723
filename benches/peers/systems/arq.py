"""arq: ``create_pool`` / ``Worker`` with their defaults except ``poll_delay`` (asyncio tasks).

Per task: ``enqueue_job`` is one transaction (job key SET + ZADD to ``arq:queue``, after a
WATCH); a worker reads up to ``queue_read_limit`` ids per poll, claims each with an
in-progress key (WATCH/MULTI), runs the job, then one transaction stores the result (SET,
kept 1 h), deletes the job and ZREMs it from the queue; no ack beyond that. The worker sleeps
``poll_delay`` between polls even when busy: 0.5 s by default, 1 ms here (as for huey).
Workers: ``Worker(max_jobs=4)`` in one process (drain-threads, latency: up to 4 jobs at once on
one event loop) or 4 processes with ``max_jobs=1`` (drain-processes). Completion: N minus ZCARD
``arq:queue`` (a job leaves it when it finished). Latency: ``job.result(poll_delay=0.001)``,
which polls the result key every 1 ms. arq requires redis-py < 6 (with hiredis).
"""

import asyncio
import os

from arq import Worker, create_pool
from arq.connections import RedisSettings
from arq.worker import func
from redis import Redis

from systems._common import CONCURRENCY, System, main

POLL_DELAY = 0.001


async def noop(ctx, i):
    return i


class Arq(System):
    module = 'systems.arq'
    packages = ('arq', 'redis', 'hiredis')
    per_task = (
        'polled ZRANGEBYSCORE (1 ms), in-progress key via WATCH/MULTI, one transaction stores '
        'the result (1 h) and removes the job'
    )
    notes = {
        'drain-threads': 'asyncio: 1 process, max_jobs=4',
        'drain-processes': '4 processes, max_jobs=1',
        'latency': 'job.result() polls every 1 ms',
    }

    def __init__(self, params):
        super().__init__(params)
        self.loop = asyncio.new_event_loop()
        self.pool = self.loop.run_until_complete(create_pool(RedisSettings.from_dsn(self.url)))
        self.redis = Redis.from_url(self.url)

    def enqueue(self, n):
        async def run():
            enqueue_job = self.pool.enqueue_job
            for i in range(n):
                await enqueue_job('noop', i)

        self.loop.run_until_complete(run())

    def completed(self, n):
        return n - self.redis.zcard('arq:queue')

    def roundtrip(self, i, timeout):
        async def run():
            job = await self.pool.enqueue_job('noop', i)
            return await job.result(timeout=timeout, poll_delay=POLL_DELAY)

        return self.loop.run_until_complete(run())

    def worker_specs(self, kind):
        if kind == 'thread':
            return [{'max_jobs': CONCURRENCY}]
        return [{'max_jobs': 1}] * CONCURRENCY

    def close(self):
        self.loop.run_until_complete(self.pool.aclose())
        self.loop.close()
        self.redis.close()

    @classmethod
    def worker(cls, params):
        Worker(
            functions=[func(noop, name='noop')],
            redis_settings=RedisSettings.from_dsn(os.environ['PEERS_REDIS_URL']),
            max_jobs=params['max_jobs'],
            poll_delay=POLL_DELAY,
        ).run()


if __name__ == '__main__':
    main(Arq)
