"""The consumer: worker threads/processes/greenlets that execute tasks, a scheduler that
moves due tasks to the queue and enqueues periodic tasks, health checks and signal handling.

Workers wait for work the cheapest way the storage allows: storages that block on their own
(``storage.blocking``, e.g. Redis BRPOP) or that can be woken when work arrives
(``storage.wakeup``, e.g. the Rust MemoryStorage's condition variable) are asked to wait;
others are polled with exponential backoff, as huey does.
"""

import atexit
import logging
import os
import random
import signal
import sys
import time

from huey._implementation import IMPLEMENTATION
from huey.constants import WORKER_THREAD, WORKER_TYPES
from huey.environments import (
    MAX_STORAGE_WAIT,
    WORKER_TO_ENVIRONMENT,
    GreenletEnvironment,
    ThreadEnvironment,
)
from huey.exceptions import ConfigurationError
from huey.monitor import Monitor
from huey.periodic import PeriodicPlanner
from huey.prefetch import Prefetch

# Re-exported: huey 3.5.4 defined these here.
from huey.constants import WORKER_GREENLET, WORKER_PROCESS  # noqa: F401
from huey.environments import Environment, ForkSafeFlag, ProcessEnvironment  # noqa: F401
from huey.exceptions import TaskTimeout  # noqa: F401
from huey.utils import noop_context  # noqa: F401

logger = logging.getLogger('huey.consumer')


class ConsumerStopped(Exception):
    pass


class WorkerRecycle(Exception):
    pass


class BaseProcess:
    """Something the consumer runs in a loop until the stop flag is set."""

    process_name = 'BaseProcess'

    def __init__(self, huey, stop_flag):
        self.huey = huey
        self.stop_flag = stop_flag
        self._logger = self.create_logger()

    def create_logger(self):
        return logging.getLogger(f'huey.consumer.{self.process_name}')

    def initialize(self):
        pass

    def sleep_for_interval(self, start_ts, nseconds):
        """Sleep until ``start_ts + nseconds`` (monotonic), waking early on stop."""
        remaining = nseconds - (time.monotonic() - start_ts)
        if remaining > 0:
            self.stop_flag.wait(remaining)

    def loop(self, now=None):
        raise NotImplementedError

    def shutdown(self):
        pass


class Worker(BaseProcess):
    """Takes tasks from the queue and executes them (future tasks go to the schedule)."""

    process_name = 'Worker'

    def __init__(self, huey, stop_flag, default_delay, max_delay, backoff, max_tasks=None):
        self.delay = self.default_delay = default_delay
        self.max_delay = max_delay
        self.backoff = backoff
        self.max_tasks = max_tasks
        self.task_count = 0
        self.read_failures = 0  # consecutive failed reads: one outage is logged once
        # Whether to let a waking storage block this worker (not for greenlets: a native
        # wait would block every greenlet in the process).
        self.storage_wait = True
        # The consumer's shared huey.prefetch.Prefetch, or None: one message per fetch.
        self.prefetch = None
        super().__init__(huey, stop_flag)

    def _run_hooks(self, hooks, kind):
        for name, hook in hooks.items():
            self._logger.debug('calling %s hook "%s"', kind, name)
            try:
                hook()
            except Exception:
                self._logger.exception('%s hook "%s" failed', kind, name)

    def initialize(self):
        self._run_hooks(self.huey._startup, 'startup')

    def shutdown(self):
        # A worker replaced while the consumer runs (max_tasks, an error) leaves the buffer
        # to the other workers and its successor; a stopping consumer puts it back.
        if self.prefetch is not None:
            self.prefetch.give_back_ahead()
            if self.stop_flag.is_set():
                self.prefetch.release()
        self._run_hooks(self.huey._shutdown, 'shutdown')

    def _waits_in_storage(self):
        storage = self.huey.storage
        return self.storage_wait and storage.wakeup and not storage.blocking

    def loop(self, now=None):
        fetch = self.huey.dequeue if self.prefetch is None else self.prefetch.next
        try:
            if self._waits_in_storage():
                task = fetch(timeout=min(self.max_delay, MAX_STORAGE_WAIT))
            else:
                task = fetch()
        except Exception:
            self.read_failures += 1
            if self.read_failures == 1:
                self._logger.exception('Error reading from queue')
            else:
                self._logger.debug('Queue still unreachable (%d attempts).', self.read_failures)
            self.sleep(jitter=True)
            return
        if self.read_failures:
            self._logger.info(
                'Queue reachable again after %d failed attempt(s).', self.read_failures
            )
            self.read_failures = 0
        if task is None:
            if not self.huey.storage.blocking and not self._waits_in_storage():
                self.sleep()
            return
        self.delay = self.default_delay
        self.task_count += 1
        started = time.monotonic()
        try:
            self.huey.execute(task, now)
        except Exception:
            self._logger.exception('Unhandled error during execution of task %s.', task.id)
        if self.prefetch is not None:
            self.prefetch.ran(time.monotonic() - started)
        if self.max_tasks and self.task_count >= self.max_tasks:
            self._logger.info('Worker reached max tasks (%d), exiting.', self.max_tasks)
            raise WorkerRecycle()

    def sleep(self, jitter=False):
        """Back off before polling again; ``jitter`` spreads the retries of many workers
        after an outage so they do not reconnect in lockstep."""
        self.delay = min(self.delay, self.max_delay)
        self.stop_flag.wait(self.delay * random.uniform(0.5, 1.5) if jitter else self.delay)
        self.delay *= self.backoff


class Scheduler(BaseProcess):
    """Every ``interval`` seconds moves due tasks to the queue; in the first pass of each
    minute (of ``huey._get_timestamp()``, the clock tests replace) enqueues the periodic task
    runs its ``periodic_planner`` wins: each due minute once across consumers."""

    periodic_task_seconds = 60
    process_name = 'Scheduler'
    monitor = None  # the consumer's huey.monitor.Monitor: heartbeats, off the task path
    prefetch = None  # the consumer's huey.prefetch.Prefetch: stale messages go back

    def __init__(self, huey, stop_flag, interval, periodic):
        super().__init__(huey, stop_flag)
        self.interval = max(min(interval, 60), 1)
        self.periodic = periodic
        self._next_loop = time.monotonic()
        self._next_periodic = time.monotonic()
        self._last_periodic_minute = None
        # The Consumer replaces it with the one all its schedulers share.
        self.periodic_planner = PeriodicPlanner(huey)

    def loop(self, now=None):
        current = self._next_loop
        self._next_loop += self.interval
        if self._next_loop < time.monotonic():
            self._logger.debug('scheduler skipping iteration to avoid race.')
            self._next_loop = time.monotonic()
            return
        if self.huey.reliable:
            try:
                self.huey.recover_expired()
            except Exception:
                self._logger.exception('Error recovering expired leases.')
        if now is None:
            now = self.huey._get_timestamp()  # one reading of the clock per pass
        self.move_due_tasks(now)
        if self.periodic:
            self.check_periodic(now)
        if self.monitor is not None:
            self.monitor.tick()
        if self.prefetch is not None:
            self.prefetch.return_stale()
        self.sleep_for_interval(current, self.interval)

    def shutdown(self):
        if self.monitor is not None:
            self.monitor.final_beat()

    def move_due_tasks(self, now=None):
        """Move due scheduled tasks to the queue (``Huey.move_due_to_queue``: each task's
        SIGNAL_ENQUEUED goes out before a worker can take it; crash-safe where the storage
        can)."""
        try:
            moved = self.huey.move_due_to_queue(now)
        except Exception:
            self._logger.exception('Error moving due tasks to the queue.')
            return
        for task in moved:
            self._logger.debug('Enqueued %s', task)

    def check_periodic(self, now=None):
        """Enqueue this minute's periodic tasks, unless this minute was already checked.

        The clock's minute decides, not the time since the last check: every consumer checks
        right after each minute begins, so their claims on it meet while they are fresh, and
        a slewed clock or loop jitter can neither check one minute twice nor skip one.
        """
        if now is None:
            now = self.huey._get_timestamp()
        minute = now.replace(second=0, microsecond=0)
        if minute == self._last_periodic_minute:
            return
        self._last_periodic_minute = minute
        # When the next check is due at the latest; kept for code written against huey 3.5.4
        # that reads it. After a stall the missed checks are not made one by one: the planner
        # catches up the tasks that ask for it.
        while self._next_periodic <= time.monotonic():
            self._next_periodic += self.periodic_task_seconds
        self.enqueue_periodic_tasks(now)

    def _enqueue(self, task, error_message):
        self._logger.debug('Enqueueing %s', task)
        try:
            self.huey.enqueue(task)
        except Exception:
            self._logger.exception(error_message, task)

    def enqueue_periodic_tasks(self, now):
        self._logger.debug('Checking periodic tasks')
        for task in self.periodic_planner.due(now):
            self._logger.info('Enqueueing periodic task %s.', task)
            self._enqueue(task, 'Error enqueueing periodic task %s.')


def default_prefetch(workers, worker_type):
    """``HUEY_PREFETCH`` where set; else a buffer per process holding at most as many
    messages as run: one more than the workers, and 1 for process workers."""
    value = os.environ.get('HUEY_PREFETCH', '').strip()
    if not value:
        return 1 if worker_type == WORKER_PROCESS else workers + 1
    if not value.isdigit() or int(value) < 1:
        raise ConfigurationError(f'HUEY_PREFETCH must be a positive integer, got {value!r}')
    return int(value)


class Consumer:
    """Runs the workers and the scheduler for a Huey instance and handles OS signals:
    the graceful signal (SIGINT, or SIGTERM with ``graceful_signal='TERM'``) lets running
    tasks finish, the other interrupts them, SIGHUP restarts the consumer. ``prefetch``:
    the most messages one fetch takes (see ``huey.prefetch``); default the environment
    variable ``HUEY_PREFETCH`` where set (``HUEY_PREFETCH=1`` turns prefetching off without
    touching code), else one more than the number of workers, so at most as many wait as
    run, and 1 for process workers."""

    worker_class = Worker
    scheduler_class = Scheduler

    def __init__(
        self,
        huey,
        workers=1,
        periodic=True,
        initial_delay=0.1,
        backoff=1.15,
        max_delay=10.0,
        scheduler_interval=1,
        worker_type=WORKER_THREAD,
        check_worker_health=True,
        health_check_interval=10,
        flush_locks=False,
        extra_locks=None,
        max_tasks=None,
        shutdown_timeout=None,
        graceful_signal='INT',
        metrics=None,
        prefetch=None,
    ):
        self._logger = logging.getLogger('huey.consumer')
        if huey.immediate:
            self._logger.warning(
                'Consumer initialized with Huey instance that has '
                '"immediate" mode enabled. This must be disabled before '
                'the consumer can be run.'
            )
        if not isinstance(workers, int) or workers < 1:
            raise ConfigurationError(f'workers must be a positive integer, got {workers!r}')
        if graceful_signal not in ('INT', 'TERM'):
            raise ConfigurationError(
                f"graceful_signal must be 'INT' or 'TERM', got {graceful_signal!r}"
            )
        if prefetch is None:
            prefetch = default_prefetch(workers, worker_type)
        if not isinstance(prefetch, int) or prefetch < 1:
            raise ConfigurationError(f'prefetch must be a positive integer, got {prefetch!r}')
        if max_tasks and not check_worker_health:
            raise ConfigurationError('max_tasks requires check_worker_health be enabled.')
        self.huey = huey
        self.workers = workers
        self.periodic = periodic
        self.default_delay = initial_delay
        self.backoff = backoff
        self.max_delay = max_delay
        self.max_tasks = max_tasks
        self.shutdown_timeout = shutdown_timeout
        self.graceful_signal = graceful_signal

        self.scheduler_interval = max(min(scheduler_interval, 60), 1)
        if 60 % self.scheduler_interval != 0:
            raise ConfigurationError(
                'Scheduler interval must be a factor of 60, e.g. 1, 2, 3, 4, 5, 6, 10, 12...'
            )
        self.worker_type = worker_type
        self._stop_flag_timeout = 0.1
        self._health_check = check_worker_health
        self._health_check_interval = float(health_check_interval)

        # signal -> (restart, graceful)
        if graceful_signal == 'TERM':
            self._graceful_sig, self._interrupt_sig = signal.SIGTERM, signal.SIGINT
        else:
            self._graceful_sig, self._interrupt_sig = signal.SIGINT, signal.SIGTERM
        self._signal_actions = {
            self._interrupt_sig: (False, False),
            self._graceful_sig: (False, True),
        }
        if hasattr(signal, 'SIGHUP'):
            self._signal_actions[signal.SIGHUP] = (True, True)
        self._signum = None
        self._restart = False
        self._graceful = True

        self.environment = self.get_environment(worker_type)
        self.huey._timeout_handler = self.environment.timeout
        self.stop_flag = self.environment.get_stop_flag()
        self.prefetch = Prefetch(huey, prefetch, self.stop_flag)
        # Outcome tally and heartbeats for operators; ``metrics``: 'host:port' to serve
        # OpenMetrics on (huey.metrics).
        self.metrics = metrics
        self.monitor = Monitor(
            huey, workers, worker_type, periodic, self.scheduler_interval, self.environment.forks
        )

        # The name this consumer claims periodic runs under, whichever scheduler it starts.
        self.periodic_planner = PeriodicPlanner(huey)

        # A consumer killed while a task held a lock would leave it held forever.
        if flush_locks or extra_locks:
            self.flush_locks(*(extra_locks.split(',') if extra_locks else ()))

        self.scheduler = self._create_process(self._create_scheduler(), 'Scheduler')
        # [(worker object, thread/process/greenlet), ...]
        self.worker_threads = []
        for i in range(workers):
            worker = self._create_worker()
            self.worker_threads.append((worker, self._create_process(worker, f'Worker-{i + 1}')))

    def flush_locks(self, *names):
        self._logger.debug('Flushing locks before starting up.')
        flushed = self.huey.flush_locks(*names)
        if flushed:
            self._logger.warning('Found stale locks: %s', ', '.join(flushed))

    def get_environment(self, worker_type):
        if worker_type not in WORKER_TO_ENVIRONMENT:
            raise ValueError(
                f'worker_type must be one of {", ".join(WORKER_TYPES)}, got {worker_type!r}.'
            )
        return WORKER_TO_ENVIRONMENT[worker_type](self._graceful_sig, self._interrupt_sig)

    def _create_worker(self):
        worker = self.worker_class(
            huey=self.huey,
            stop_flag=self.stop_flag,
            default_delay=self.default_delay,
            max_delay=self.max_delay,
            backoff=self.backoff,
            max_tasks=self.max_tasks,
        )
        worker.storage_wait = not isinstance(self.environment, GreenletEnvironment)
        worker.prefetch = self.prefetch
        return worker

    def _create_scheduler(self):
        scheduler = self.scheduler_class(
            huey=self.huey,
            stop_flag=self.stop_flag,
            interval=self.scheduler_interval,
            periodic=self.periodic,
        )
        scheduler.monitor = self.monitor
        scheduler.prefetch = self.prefetch
        scheduler.periodic_planner = self.periodic_planner
        return scheduler

    def _create_process(self, process, name):
        """Wrap ``process`` so that its loop runs until stop; an exception ends it (and
        the health check replaces it)."""

        def run():
            self.environment.init_child(process)
            self.monitor.worker_started()
            try:
                process.initialize()
                while not self.stop_flag.is_set():
                    process.loop()
            except KeyboardInterrupt:
                pass
            except WorkerRecycle:
                self._logger.info('Process %s restarting (max tasks).', name)
            except BaseException:
                self._logger.exception('Process %s died!', name)
            finally:
                try:
                    process.shutdown()
                except KeyboardInterrupt:
                    pass
                self.monitor.worker_stopped()

        return self.environment.create_process(run, name)

    def start(self):
        """Start the scheduler and workers and install the signal handlers."""
        if self.huey.immediate:
            raise ConfigurationError(
                'Consumer cannot be run with Huey instances where '
                'immediate is enabled. Please check your configuration '
                'and ensure that "huey.immediate = False".'
            )
        self._logger.info(
            'Huey consumer started with %s %s, PID %s at %s (%s %s, reliable mode %s, '
            'prefetch %s)',
            self.workers,
            self.worker_type,
            os.getpid(),
            self.huey._get_timestamp(),
            *IMPLEMENTATION,
            'on' if self.huey.reliable else 'off',
            self.prefetch.per_fetch,
        )
        self._logger.info('Scheduler runs every %s second(s).', self.scheduler_interval)
        if self.periodic:
            self._logger.info(
                'Periodic tasks are enabled (claimed as %s).', self.periodic_planner.owner
            )
        else:
            self._logger.info('Periodic tasks are disabled.')
        commands = ['The following commands are available:']
        commands.extend(f'+ {name}' for name in self.huey._registry._registry)
        self._logger.info('\n'.join(commands))

        self.monitor.start()
        if self.environment.forks:
            self.huey.storage.close()  # children must not share the parent's connection
        # Before any worker runs: a signal sent while they start (an on_startup hook, a
        # quick Ctrl-C) is then handled by run()'s loop instead of raising in start().
        # Forked workers replace these handlers with their own in init_child().
        self._set_signal_handlers()
        self.scheduler.start()
        for _, process in self.worker_threads:
            process.start()
        if self.metrics:
            server = self.monitor.serve_metrics(self.metrics)
            self._logger.info('Serving OpenMetrics at %s', server.url)
        if isinstance(self.environment, ThreadEnvironment):
            atexit.register(self._join_at_exit)

    def _join_at_exit(self):
        procs = [p for _, p in self.worker_threads] + [self.scheduler]
        self.environment.join_at_exit(procs, self.stop_flag)

    def stop(self, graceful=False):
        """Set the stop flag; with ``graceful`` wait for running tasks to finish (at most
        ``shutdown_timeout`` seconds), then interrupt whatever still runs."""
        self.stop_flag.set()
        if graceful:
            self._logger.info('Shutting down gracefully...')
            try:
                finished = self._join_workers()
            except KeyboardInterrupt:
                self._logger.info('Received request to shut down now.')
                self._restart = False
                self._interrupt_workers()
                return
            if finished:
                self._logger.info('All workers have stopped.')
                return
            self._logger.warning(
                'Shutdown timeout of %ss elapsed, interrupting workers.', self.shutdown_timeout
            )
        self._interrupt_workers()
        self._logger.info('Shutting down')

    def _interrupt_workers(self):
        self.environment.interrupt_workers([p for _, p in self.worker_threads])

    def _join_workers(self):
        deadline = None
        if self.shutdown_timeout is not None:
            deadline = time.monotonic() + self.shutdown_timeout
        procs = [p for _, p in self.worker_threads] + [self.scheduler]
        for proc in procs:
            proc.join(None if deadline is None else max(deadline - time.monotonic(), 0))
        return not any(self.environment.is_alive(p) for p in procs)

    def run(self):
        """Start, then supervise until a signal stops (or restarts) the consumer."""
        self.start()
        health_check_ts = time.monotonic()
        while True:
            try:
                health_check_ts = self.loop(health_check_ts)
            except ConsumerStopped:
                break
        self.huey.notify_interrupted_tasks()
        self.monitor.close()
        if self._restart:
            self._logger.info('Consumer will restart.')
            os.execl(sys.executable, sys.executable, *sys.argv)
        else:
            self._logger.info('Consumer exiting.')

    def loop(self, health_check_ts=None):
        try:
            stopped = self.stop_flag.wait(timeout=self._stop_flag_timeout)
        except KeyboardInterrupt:
            self._logger.info('Received SIGINT')
            self.stop(graceful=True)
            stopped = True
        except Exception:
            self._logger.exception('Error in consumer.')
            self.stop()
            stopped = True
        else:
            if self._signum is not None:
                self._logger.info('Received %s', signal.Signals(self._signum).name)
                self.stop(graceful=self._graceful)
                stopped = True
        if stopped:
            raise ConsumerStopped
        if self._health_check and health_check_ts:
            now = time.monotonic()
            if now >= health_check_ts + self._health_check_interval:
                health_check_ts = now
                self.check_worker_health()
        return health_check_ts

    def check_worker_health(self):
        """Replace dead workers (and a dead scheduler); True when all were alive."""
        self._logger.debug('Checking worker health.')
        restarted = False
        for i, (worker, process) in enumerate(self.worker_threads):
            if not self.environment.is_alive(process):
                self._logger.warning('Worker %d died, restarting.', i + 1)
                worker = self._create_worker()
                process = self._create_process(worker, f'Worker-{i + 1}')
                process.start()
                self.worker_threads[i] = (worker, process)
                restarted = True
        if not restarted:
            self._logger.debug('Workers are up and running.')
        if not self.environment.is_alive(self.scheduler):
            self._logger.warning('Scheduler died, restarting.')
            self.scheduler = self._create_process(self._create_scheduler(), 'Scheduler')
            self.scheduler.start()
        else:
            self._logger.debug('Scheduler is up and running.')
        return not restarted

    def _set_signal_handlers(self):
        for signum in self._signal_actions:
            signal.signal(signum, self._handle_signal)

    def _handle_signal(self, signum, frame):
        self._signum = signum
        self._restart, self._graceful = self._signal_actions[signum]
        if self._graceful and not self._restart:
            # A second graceful signal interrupts the graceful shutdown.
            signal.signal(signum, signal.default_int_handler)
