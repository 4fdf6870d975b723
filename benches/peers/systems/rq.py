"""rq: ``Queue('default')`` with its defaults.

Per task: the job hash is written and its id RPUSHed; a worker takes ids with BLMOVE into an
intermediate list, moves the job through the started registry, runs it, then stores the result
(a Result stream entry, ``result_ttl`` 500 s), the job's status and a finished-registry entry.
rq has no thread pool: drain-threads and latency run one ``SimpleWorker`` (runs jobs in its own
process); drain-processes runs ``WorkerPool(num_workers=4)`` of default ``Worker``s, which fork
a work horse per job. Completion: ZCARD of the finished-job registry. Latency:
``job.latest_result(timeout=...)``, a blocking XREAD on the result stream.
"""

from redis import Redis
from rq import Queue, SimpleWorker
from rq.worker_pool import WorkerPool

from systems._common import System, main

TASK = 'systems.rq.noop'  # enqueued by name: the worker imports this module to run it


def noop(i):
    return i


class Rq(System):
    module = 'systems.rq'
    packages = ('rq', 'redis')
    bulk_api = 'Queue.enqueue_many()'
    per_task = (
        'BLMOVE, job hash and started/finished registries updated, result in a stream (500 s TTL)'
    )
    notes = {
        'bulk-enqueue': 'Queue.enqueue_many(): one pipeline',
        'drain-threads': 'rq has no threads: one SimpleWorker process, one job at a time',
        'drain-processes': 'WorkerPool of 4 Workers, each forks a work horse per job',
        'latency': 'one SimpleWorker',
    }

    def __init__(self, params):
        super().__init__(params)
        self.conn = Redis.from_url(self.url)
        self.queue = Queue('default', connection=self.conn)

    def enqueue(self, n):
        enqueue = self.queue.enqueue
        for i in range(n):
            enqueue(TASK, i)

    def bulk_enqueue(self, n):
        self.queue.enqueue_many([Queue.prepare_data(TASK, (i,)) for i in range(n)])

    def completed(self, n):
        return self.queue.finished_job_registry.get_job_count(cleanup=False)

    def roundtrip(self, i, timeout):
        result = self.queue.enqueue(TASK, i).latest_result(timeout=timeout)
        return None if result is None else result.return_value

    def close(self):
        self.conn.close()

    @classmethod
    def worker(cls, params):
        conn = Redis.from_url(params['redis_url'])
        if params['kind'] == 'thread':
            SimpleWorker([Queue('default', connection=conn)], connection=conn).work(
                logging_level='WARNING'
            )
        else:
            pool = WorkerPool(['default'], connection=conn, num_workers=params['concurrency'])
            pool.start(burst=False, logging_level='WARNING')


if __name__ == '__main__':
    main(Rq)
