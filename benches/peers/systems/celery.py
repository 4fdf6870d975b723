"""celery: the Redis transport (kombu) on db 0 and the Redis result backend on db 1, defaults.

Per task: ``delay()`` publishes the message with LPUSH and subscribes the producer to the
task's result channel; a worker takes messages with BRPOP (prefetch multiplier 4), keeps them
in kombu's ``unacked`` hash until the ack right after delivery (``acks_late`` off), runs the
task and stores the result with SET + PUBLISH. Workers: ``app.worker_main()`` with ``-P
threads -c 4`` (drain-threads, latency) or ``-P prefork -c 4`` (drain-processes).
Completion: DBSIZE of the result db (one key per finished task). Latency: ``result.get()``,
which waits on the result channel.
"""

import os

from celery import Celery, group
from redis import Redis

from systems._common import System, main

URL = os.environ['PEERS_REDIS_URL']
RESULTS_URL = URL.rsplit('/', 1)[0] + '/1'

app = Celery('peers', broker=URL, backend=RESULTS_URL)


@app.task(name='noop')
def noop(i):
    return i


class CelerySystem(System):
    module = 'systems.celery'
    packages = ('celery', 'kombu', 'redis')
    bulk_api = 'group().apply_async()'
    per_task = (
        'BRPOP, kept in the unacked hash until the early ack, result SET + PUBLISH (db 1); '
        'delay() also subscribes the producer to the result channel'
    )
    notes = {'bulk-enqueue': 'group(signatures).apply_async(): one publish per task'}

    def __init__(self, params):
        super().__init__(params)
        self.results = Redis.from_url(RESULTS_URL)

    def enqueue(self, n):
        delay = noop.delay
        for i in range(n):
            delay(i)

    def bulk_enqueue(self, n):
        group(noop.s(i) for i in range(n)).apply_async()

    def completed(self, n):
        return self.results.dbsize()

    def roundtrip(self, i, timeout):
        return noop.delay(i).get(timeout=timeout)

    def close(self):
        self.results.close()

    @classmethod
    def worker(cls, params):
        pool = 'threads' if params['kind'] == 'thread' else 'prefork'
        app.worker_main(
            ['worker', '-P', pool, '-c', str(params['concurrency']), '--loglevel', 'WARNING']
        )


if __name__ == '__main__':
    main(CelerySystem)
