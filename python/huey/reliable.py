"""At-least-once delivery for ``Huey(reliable=True)``, and the crash-point test hook.

huey pops a message before running it, so a consumer killed mid-task loses it. In reliable
mode a dequeue instead *moves* the message, atomically, into an in-flight area of the
storage under a fresh delivery token with a lease (Sqlite: the ``huey_inflight`` table,
File: ``inflight/{token}`` files, Redis: ``huey.inflight.*`` / ``huey.lease.*`` keys; see
each storage). Then:

- every process running tasks keeps one ``Deliveries`` object: the tokens it holds and a
  daemon thread renewing all their leases in one storage call every ``lease / 3`` seconds;
- the run ends with an ack (the in-flight entry is deleted) after its result, continuation
  (pipeline / chord / on_error) and retry re-enqueue were written;
- any consumer's scheduler puts entries whose lease expired back in the queue with their
  delivery count, or, once delivered ``max_deliveries`` times, hands them to the
  dead-letter queue, inside the same storage step as the recovery.

Fencing: before writing anything after the task body returns, the run renews its own lease
(``renew_leases([token]) == 1``). A run whose entry was already recovered (lease expired,
message redelivered or dead-lettered) therefore stores no result, enqueues no continuation
or retry, reports nothing to its chord and its ack returns False. What is *not* fenced: the
task body's own side effects (delivery is at-least-once), and the finishing writes of a run
that passed the check but then stalled for longer than a whole lease before its ack.
Leases use each host's wall clock: consumers on several hosts need synchronised clocks.
"""

import logging
import os
import socket
import threading
import uuid

logger = logging.getLogger('huey.reliable')

_CRASHPOINT = os.environ.get('HUEY_CRASHPOINT') or None
CRASH_EXIT_CODE = 137


def crashpoint(name):
    """Test hook: exit the process at once (``os._exit(137)``, no cleanup, like SIGKILL)
    when ``$HUEY_CRASHPOINT`` names this point. Points: ``after_dequeue``, ``mid_task``
    (after the task body returned, before anything is recorded), ``after_result_before_ack``
    and ``mid_schedule_move``. With ``$HUEY_CRASHPOINT_FILE`` set, the pid and point are
    appended to that file first. Costs one comparison when the variable is unset."""
    if _CRASHPOINT is not None and _CRASHPOINT == name:
        marker = os.environ.get('HUEY_CRASHPOINT_FILE')
        if marker:
            with open(marker, 'a') as fh:
                fh.write(f'{os.getpid()} {name}\n')
        os._exit(CRASH_EXIT_CODE)


class Deliveries:
    """The in-flight deliveries of one process, and the thread renewing their leases."""

    def __init__(self, storage, lease):
        self.storage = storage
        self.lease = lease
        self.pid = os.getpid()
        self.consumer = f'{socket.gethostname()}:{self.pid}:{uuid.uuid4().hex[:8]}'
        self.tokens = set()
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()

    def new_token(self):
        return uuid.uuid4().hex

    def hold(self, token):
        self.tokens.add(token)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                                    name='huey-lease-renewal')
                    self._thread.start()

    def release(self, token):
        """Stop renewing ``token`` (after its ack, or to let it expire and be redelivered)."""
        self.tokens.discard(token)

    def still_ours(self, token):
        """Renew ``token``'s lease; False when its entry was recovered by someone else."""
        return self.storage.renew_leases([token], self.lease) == 1

    def _renew_loop(self):
        interval = max(self.lease / 3, 0.05)
        while not self._stop.wait(interval):
            tokens = list(self.tokens)
            if not tokens:
                continue
            try:
                self.storage.renew_leases(tokens, self.lease)
            except Exception:
                logger.exception('Renewing %d lease(s) failed', len(tokens))

    def stop(self):
        self._stop.set()
