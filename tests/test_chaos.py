"""Chaos: a real ``huey_consumer`` under a steady load has its whole process group SIGKILLed
at random moments (no hook in the consumer: the kill lands wherever it lands, inside a
storage operation or a task) and is restarted each time; when the load and the kills are
over, a last consumer drains the storage and every task is checked against the history
the tasks and the dead-letter signal write (crash_app.py).

Per cell (storage x worker type x mode), counted from that history alone:
- reliable: nothing lost, nothing dead-lettered (the delivery cap is set above the number of
  kills, so no task can reach it honestly), no more duplicates than the kills could interrupt;
- default: at most what the killed consumer held lost per kill (its running tasks and its
  prefetch buffer, as the README says), nothing run twice, nothing dead-lettered.

``make test`` runs 3 kills per cell; ``make chaos`` runs 10 (``HUEY_CHAOS_KILLS``) and prints
the table. The kill moments come from one seed, printed with the table and in any failure
(``HUEY_CHAOS_SEED`` repeats a run's moments; the machine's timing still varies).
"""

import concurrent.futures
import os
import random
import threading
import time

import pytest
from crash_app import WORKERS, Cell, held, report, tally, write_app

KILLS = int(os.environ.get('HUEY_CHAOS_KILLS', '3'))
SEED = int(os.environ.get('HUEY_CHAOS_SEED', random.randrange(2**32)))
STORAGES = ['sqlite', 'file', 'redis', 'priority_redis', 'redis_expire', 'postgres']
WORKER_TYPES = ['thread', 'process', 'greenlet']
BATCH = 4  # tasks the producer adds every LOAD_EVERY seconds while the kills go on
LOAD_EVERY = 0.05
UP_FOR = (0.2, 1.2)  # how long a consumer lives before its kill, drawn per kill


@pytest.fixture(scope='module')
def app_dir(tmp_path_factory):
    return write_app(tmp_path_factory.mktemp('chaosapp'))


class Producer(threading.Thread):
    """Adds BATCH tasks every LOAD_EVERY seconds until stopped: most enqueued, every third
    batch scheduled a moment ahead, so kills also meet the scheduler's moves."""

    def __init__(self, app):
        super().__init__(daemon=True)
        self.app = app
        self.sent = set()
        self.stopped = threading.Event()
        self.error = None

    def run(self):
        batch = 0
        try:
            while not self.stopped.is_set():
                ids = range(batch * BATCH, (batch + 1) * BATCH)
                if batch % 3 == 2:
                    for i in ids:
                        self.app.record.schedule((i,), delay=0.1)
                else:
                    self.app.huey.enqueue_many([self.app.record.s(i) for i in ids])
                self.sent.update(str(i) for i in ids)
                batch += 1
                self.stopped.wait(LOAD_EVERY)
        except Exception as exc:  # reported by the cell, never swallowed
            self.error = exc


def run_cell(cell, rng):
    """Start, kill the process group at a random moment, restart, KILLS times under load;
    then drain with one last consumer. Returns the tasks the producer sent."""
    app = cell.huey()
    app.huey.storage.flush_all()
    producer = Producer(app)
    producer.start()
    try:
        for _ in range(KILLS):
            proc = cell.start()
            # The moment of the kill, not a wait for anything: whatever the consumer is
            # doing then is what the kill interrupts.
            time.sleep(rng.uniform(*UP_FOR))
            cell.kill(proc)
    finally:
        producer.stopped.set()
        producer.join(30)
    assert producer.error is None, f'{cell}: the producer failed: {producer.error!r}'
    proc = cell.start()
    try:
        cell.wait_until_drained(app.huey)
    finally:
        cell.stop(proc)
    return producer.sent


def broken(cell, r):
    """What a cell's books break of the README's promises."""
    if r['dead']:
        yield 'dead-lettered a task'
    if r['lost'] < 0:
        yield 'more tasks completed or dead-lettered than were enqueued'
    if cell.reliable:
        if r['lost']:
            yield 'lost tasks'
        if r['duplicated'] > KILLS * WORKERS:
            yield 'ran more tasks twice than the kills interrupted'
    else:
        if r['lost'] > KILLS * held(cell.worker):
            yield 'lost more than the tasks the killed processes held'
        if r['duplicated']:
            yield 'ran a task twice in default mode'


@pytest.mark.timeout(900)
def test_chaos(app_dir, redis_server, postgres_server, tmp_path_factory):
    seeds = random.Random(SEED)
    cells = [
        (
            Cell(
                app_dir,
                redis_server.port,
                storage,
                worker,
                'chaos',
                reliable,
                postgres_server.dsn,
                cap=KILLS + 2,
            ),
            random.Random(seeds.random()),
        )
        for storage in STORAGES
        for worker in WORKER_TYPES
        for reliable in (True, False)
    ]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = {pool.submit(run_cell, cell, rng): cell for cell, rng in cells}
        rows = [(futures[f], tally(futures[f], f.result())) for f in futures]
    title = f'chaos: {KILLS} kills per cell, seed {SEED}'
    report(rows, tmp_path_factory.getbasetemp() / 'chaos.txt', broken, title)
