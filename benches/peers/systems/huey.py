"""huey (huey-rs or huey 3.5.4, whichever the interpreter imports): ``RedisHuey`` defaults.

Per task: the message is LPUSHed; a worker takes it with BRPOP (``blocking=True``, the
default), runs it and HSETs the return value into the results hash; no ack. The consumer is
``huey.create_consumer(workers=4, worker_type=..., initial_delay=0.001, max_delay=0.001)``
started in the worker process (as benches/workloads/consumer.py does). Completion:
``huey.result_count()`` (HLEN of the results hash). Latency: ``result.get(blocking=True,
max_delay=0.001)``, which polls the results hash every 1 ms.
"""

import importlib.metadata
import logging

import huey

from systems._common import System, main, wait_for_sigterm


def is_huey_rs():
    try:
        importlib.metadata.version('huey-rs')
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def noop(i):
    return i


def make_huey(url):
    """A RedisHuey and its ``noop`` task."""
    h = huey.RedisHuey('peers', url=url)
    return h, h.task(name='noop')(noop)


class Huey(System):
    module = 'systems.huey'
    packages = ('huey', 'huey-rs', 'redis')
    bulk_api = 'task.map()'
    per_task = (
        'a batch pop of up to workers + 1 (prefetch; BRPOP when idle), one script stores the '
        "result and reads the next task's revocation flags, no ack"
        if is_huey_rs()
        else 'BRPOP, HMGET of its revocation flags, result HSET into one hash, no ack'
    )
    notes = {
        'bulk-enqueue': 'task.map(): one LPUSH of all messages'
        if is_huey_rs()
        else 'task.map(): one enqueue() per task'
    }

    def __init__(self, params):
        super().__init__(params)
        self.huey, self.noop = make_huey(self.url)

    def enqueue(self, n):
        noop = self.noop
        for i in range(n):
            noop(i)

    def bulk_enqueue(self, n):
        self.noop.map(range(n))

    def completed(self, n):
        return self.huey.result_count()

    def roundtrip(self, i, timeout):
        return self.noop(i).get(blocking=True, timeout=timeout, max_delay=0.001)

    @classmethod
    def worker(cls, params):
        logging.getLogger('huey').setLevel(logging.WARNING)
        h, _ = make_huey(params['redis_url'])
        consumer = h.create_consumer(
            workers=params['concurrency'],
            worker_type=params['kind'],
            initial_delay=0.001,
            max_delay=0.001,
            periodic=False,
            check_worker_health=False,
        )
        consumer.start()
        wait_for_sigterm()
        consumer.stop(graceful=True)


if __name__ == '__main__':
    main(Huey)
