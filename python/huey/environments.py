"""Worker environments: how the consumer creates, checks, times out and interrupts its workers
for each worker type (threads, forked processes, gevent greenlets), and the stop flag they
share. ``huey.consumer`` re-exports every name, as huey 3.5.4 defined them there.
"""

import contextlib
import logging
import multiprocessing
import os
import select
import sys
import signal
import threading
import time

try:
    import gevent
    from gevent import Greenlet, monkey
    from gevent.event import Event as GreenEvent
except Exception:  # not installed, or broken (a gevent built for another greenlet): only
    # greenlet workers need it, and they say so when it is missing.
    gevent = Greenlet = GreenEvent = monkey = None

from huey.constants import WORKER_GREENLET, WORKER_PROCESS, WORKER_THREAD
from huey.exceptions import ConfigurationError, TaskTimeout
from huey.utils import noop_context

logger = logging.getLogger('huey.consumer')

# The longest a worker waits inside the storage before looking at the stop flag again.
MAX_STORAGE_WAIT = 0.5


class ForkSafeFlag:
    """A stop flag forked workers can share: a pipe that becomes readable once set
    (a multiprocessing.Event can be left locked by a killed process)."""

    def __init__(self):
        self._r, self._w = os.pipe()

    def set(self):
        if not self.is_set():
            os.write(self._w, b'x')

    def is_set(self):
        return self.wait(0)

    def wait(self, timeout=None):
        poller = select.poll()
        poller.register(self._r, select.POLLIN)
        return bool(poller.poll(None if timeout is None else timeout * 1000))


class Environment:
    """How workers are created, checked, timed out and interrupted for one worker type."""

    forks = False

    def __init__(self, graceful=signal.SIGINT, interrupt=signal.SIGTERM):
        self.graceful = graceful
        self.interrupt = interrupt

    def get_stop_flag(self):
        raise NotImplementedError

    def create_process(self, runnable, name):
        raise NotImplementedError

    def init_child(self, process):
        pass

    def is_alive(self, proc):
        raise NotImplementedError

    def timeout(self, seconds):
        return noop_context()

    def interrupt_workers(self, procs):
        pass


class ThreadEnvironment(Environment):
    """Threads: timeouts are cooperative (``task.check_timeout()``)."""

    def get_stop_flag(self):
        return threading.Event()

    def create_process(self, runnable, name):
        return threading.Thread(target=runnable, name=name, daemon=True)

    def is_alive(self, proc):
        return proc.is_alive()

    def join_at_exit(self, procs, stop_flag):
        """Stop idle workers before the interpreter finalizes: a daemon thread still
        waiting inside native code when Python shuts down would abort the process."""
        stop_flag.set()
        deadline = time.monotonic() + 2 * MAX_STORAGE_WAIT
        for proc in procs:
            proc.join(max(deadline - time.monotonic(), 0))


class GreenletEnvironment(Environment):
    """gevent greenlets: timeouts enforced with ``gevent.Timeout``."""

    def __init__(self, *args):
        if Greenlet is None:
            raise ConfigurationError('The "greenlet" worker type needs gevent: pip install gevent')
        if not monkey.is_module_patched('socket'):
            logger.warning(
                'Gevent monkey-patch has not been applied, this may result in '
                'incorrect or unpredictable behavior.'
            )
        super().__init__(*args)

    def get_stop_flag(self):
        return GreenEvent()

    def create_process(self, runnable, name):
        def run():
            try:
                gevent.sleep()
                runnable()
            except KeyboardInterrupt:
                pass

        return Greenlet(run=run)

    def is_alive(self, proc):
        return not proc.dead

    @contextlib.contextmanager
    def timeout(self, seconds):
        timer = gevent.Timeout(seconds, TaskTimeout(f'timeout ({seconds}s)'))
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def interrupt_workers(self, procs):
        gevent.killall(procs, KeyboardInterrupt)


class ProcessEnvironment(Environment):
    """Forked processes: timeouts enforced with SIGALRM."""

    forks = True

    def __init__(self, *args):
        super().__init__(*args)
        if not hasattr(os, 'fork'):  # Windows; macOS has it
            raise ConfigurationError(
                f'The "process" worker type needs fork(), which {sys.platform} does not '
                'have: use thread (-k thread) or greenlet (-k greenlet) workers.'
            )
        self.mp = multiprocessing.get_context('fork')

    def get_stop_flag(self):
        return ForkSafeFlag()

    def create_process(self, runnable, name):
        return self.mp.Process(target=runnable, name=name, daemon=True)

    def init_child(self, process):
        def interrupt(signum, frame):
            # Only a running task is interrupted; an idle worker exits via the stop flag.
            if process.huey._tasks_in_flight:
                raise KeyboardInterrupt

        signal.signal(self.graceful, signal.SIG_IGN)
        signal.signal(self.interrupt, interrupt)
        if hasattr(signal, 'SIGHUP'):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def is_alive(self, proc):
        return proc.is_alive()

    @contextlib.contextmanager
    def timeout(self, seconds):
        def on_alarm(signum, frame):
            raise TaskTimeout(f'timeout ({seconds}s)')

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def interrupt_workers(self, procs):
        for proc in procs:
            if proc.is_alive():
                try:
                    os.kill(proc.pid, self.interrupt)
                except OSError:
                    pass
        deadline = time.monotonic() + 1
        for proc in procs:
            proc.join(max(deadline - time.monotonic(), 0))


WORKER_TO_ENVIRONMENT = {
    WORKER_THREAD: ThreadEnvironment,
    WORKER_GREENLET: GreenletEnvironment,
    'gevent': GreenletEnvironment,
    WORKER_PROCESS: ProcessEnvironment,
}
