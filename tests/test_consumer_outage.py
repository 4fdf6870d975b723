"""A consumer on Redis outlives a Redis outage: logged once, retried with backoff, resumed."""

import logging
import signal
import time

from huey import RedisHuey


def wait_until(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, 'condition not reached in time'
        time.sleep(0.01)


def test_worker_logs_an_outage_once_and_resumes(redis_db, caplog):
    huey = RedisHuey('outage', host=redis_db.host, port=redis_db.port, read_timeout=0.2)

    @huey.task()
    def double(x):
        return 2 * x

    assert double(1).get(blocking=False) is None  # enqueued while the server is up
    consumer = huey.create_consumer(workers=1, initial_delay=0.01, max_delay=0.05,
                                    periodic=False, check_worker_health=False)
    worker = consumer.worker_threads[0][0]
    caplog.set_level(logging.DEBUG, logger='huey.consumer')
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {signum: signal.getsignal(signum) for signum in handled}
    consumer.start()
    try:
        wait_until(lambda: huey.result_count() == 1)  # the first task ran
        redis_db.stop()
        wait_until(lambda: worker.read_failures >= 5)
        errors = [r for r in caplog.records if r.getMessage() == 'Error reading from queue']
        assert len(errors) == 1  # one outage, one error with its traceback
        redis_db.start()
        assert double(21).get(blocking=True, timeout=10) == 42
        assert worker.read_failures == 0
        assert any('reachable again' in r.getMessage() for r in caplog.records)
    finally:
        consumer.stop(graceful=True)
        for signum, handler in saved.items():
            signal.signal(signum, handler)
