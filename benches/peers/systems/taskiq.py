"""taskiq: ``RedisStreamBroker`` (taskiq-redis's README broker, with acks) on db 0 and
``RedisAsyncResultBackend`` on db 1, asyncio tasks.

Per task: ``kiq()`` XADDs the message to the ``taskiq`` stream; a worker reads batches with
XREADGROUP (and runs XAUTOCLAIM for stale messages after each batch), runs the task, SETs the
result and XACKs. Workers: the ``taskiq worker`` CLI, ``--workers 1 --max-async-tasks 4``
(drain-threads, latency: up to 4 tasks at once on one event loop) or ``--workers 4
--max-async-tasks 1`` (drain-processes); the CLI's supervisor process counts in the RSS.
Completion: DBSIZE of the result db. Latency: ``task.wait_result(check_interval=0.001)``,
which polls the result key every 1 ms.
"""

import asyncio
import os
import sys

from redis import Redis
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from systems._common import CONCURRENCY, System, main

URL = os.environ['PEERS_REDIS_URL']
RESULTS_URL = URL.rsplit('/', 1)[0] + '/1'

broker = RedisStreamBroker(url=URL).with_result_backend(
    RedisAsyncResultBackend(redis_url=RESULTS_URL)
)


@broker.task(task_name='noop')
async def noop(i: int) -> int:
    return i


class Taskiq(System):
    module = 'systems.taskiq'
    packages = ('taskiq', 'taskiq-redis', 'redis')
    per_task = 'XREADGROUP batch, result SET (db 1), XACK after the task'
    notes = {
        'drain-threads': 'asyncio: 1 worker process, --max-async-tasks 4; rss includes the '
        "CLI's supervisor process",
        'drain-processes': '--workers 4 --max-async-tasks 1',
        'latency': 'wait_result() polls every 1 ms',
    }

    def __init__(self, params):
        super().__init__(params)
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(broker.startup())  # also creates the consumer group
        self.results = Redis.from_url(RESULTS_URL)

    def enqueue(self, n):
        async def run():
            kiq = noop.kiq
            for i in range(n):
                await kiq(i)

        self.loop.run_until_complete(run())

    def completed(self, n):
        return self.results.dbsize()

    def roundtrip(self, i, timeout):
        async def run():
            task = await noop.kiq(i)
            result = await task.wait_result(check_interval=0.001, timeout=timeout)
            return result.return_value

        return self.loop.run_until_complete(run())

    def worker_specs(self, kind):
        if kind == 'thread':
            return [{'workers': 1, 'max_async_tasks': CONCURRENCY}]
        return [{'workers': CONCURRENCY, 'max_async_tasks': 1}]

    def worker_argv(self, spec):
        return [
            *(sys.executable, '-m', 'taskiq', 'worker', f'{self.module}:broker'),
            *('--workers', str(spec['workers'])),
            *('--max-async-tasks', str(spec['max_async_tasks'])),
            *('--log-level', 'WARNING'),
        ]

    def close(self):
        self.loop.run_until_complete(broker.shutdown())
        self.loop.close()
        self.results.close()


if __name__ == '__main__':
    main(Taskiq)
