"""dramatiq: ``RedisBroker`` with the default middleware (no Results middleware).

Per task: enqueue is one Lua call (HSET the message into ``dramatiq:default.msgs``, RPUSH its
id); a worker's consumer fetches (prefetches) ids with a Lua call, a worker thread runs the
actor and the ack HDELs the message (stores nothing: results need the optional Results
middleware). Workers are ``dramatiq.Worker(broker, worker_threads=T, worker_timeout=1)``, what
``dramatiq --processes P --threads T`` runs in each of its processes, created here so that the
idle poll can be 1 ms as for huey (the CLI keeps the 1 s default, backing off from 5 ms):
drain-threads is 1 process x 4 threads, drain-processes 4 processes x 1 thread.
Completion: N minus HLEN of ``dramatiq:default.msgs`` (acked messages leave it). Latency: the
``ping`` actor RPUSHes its argument to a key that the producer waits on with BLPOP.
"""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from systems._common import CONCURRENCY, System, main, wait_for_sigterm

broker = RedisBroker(url=os.environ['PEERS_REDIS_URL'])
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name='noop')
def noop(i):
    return i


@dramatiq.actor(actor_name='ping')
def ping(i):
    broker.client.rpush(f'peers:ping:{i}', i)


class Dramatiq(System):
    module = 'systems.dramatiq'
    packages = ('dramatiq', 'redis')
    bulk_api = 'group().run()'
    per_task = 'Lua fetch (prefetch), ack = HDEL from the .msgs hash, no result stored'
    notes = {
        'bulk-enqueue': 'group(messages).run(): one enqueue per message',
        'drain-processes': '4 processes x 1 thread',
        'latency': 'no result store: the task RPUSHes, the producer BLPOPs',
    }

    def enqueue(self, n):
        send = noop.send
        for i in range(n):
            send(i)

    def bulk_enqueue(self, n):
        dramatiq.group(noop.message(i) for i in range(n)).run()

    def completed(self, n):
        return n - broker.client.hlen('dramatiq:default.msgs')

    def roundtrip(self, i, timeout):
        ping.send(i)
        popped = broker.client.blpop(f'peers:ping:{i}', timeout=timeout)
        return None if popped is None else int(popped[1])

    def worker_specs(self, kind):
        if kind == 'thread':
            return [{'threads': CONCURRENCY}]
        return [{'threads': 1}] * CONCURRENCY

    @classmethod
    def worker(cls, params):
        worker = dramatiq.Worker(broker, worker_threads=params['threads'], worker_timeout=1)
        worker.start()
        wait_for_sigterm()
        worker.stop()


if __name__ == '__main__':
    main(Dramatiq)
