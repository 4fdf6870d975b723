"""Periodic tasks with many consumers: which runs of which periodic tasks one consumer
enqueues for a minute, so that each due minute of each task is enqueued once however many
consumers run with periodic tasks enabled, and (opt-in, per task) minutes missed while no
consumer ran are caught up.

Every consumer checks every minute, as in huey. For each task due in that minute it claims
the minute in the storage (``BaseStorage.claim``): the consumer whose claim wins enqueues the
run, the others skip it. Claims lapse after ``CLAIM_TTL`` seconds and the storage removes them.
For a task with a catch-up policy the winner also stores the task's *mark*, the latest due
minute of its schedule that has been handled, in the key/value store (tasks left at huey's
``skip`` store nothing beside their claims)::

    claim  periodic.{task}@{YYYY-MM-DDTHH:MM}    owner: the consumer that enqueued that run
    mark   {huey name}.periodic.{task}            b'{YYYY-MM-DDTHH:MM} {owner}'

``{task}`` is the registered name (``module.function``); minutes are the naive datetimes the
Huey schedules with (UTC, or local time with ``utc=False``).

Catch-up (``@huey.periodic_task(crontab(...), catch_up='once')``): a consumer that did not
check the previous minute itself (it just started, it stalled, or the storage failed) reads
the marks of its catch-up tasks and looks for due minutes after the mark that nobody claimed.
Claiming the newest of them decides which consumer catches up; it enqueues one run for the
whole gap (``once``) or one run per missed minute (``all``, the ``MAX_CATCH_UP_RUNS`` most
recent), looking back at most ``MAX_CATCH_UP_AGE``. A consumer that checked the previous
minute needs no look back: every minute it checked was claimed by someone.

The messages are huey's: a huey 3.5.4 consumer sharing the storage knows nothing of claims
and still enqueues its own copy of every run.
"""

import datetime
import logging
import os
import socket
import uuid

from huey.constants import EmptyData

logger = logging.getLogger('huey.periodic')

SKIP, ONCE, ALL = 'skip', 'once', 'all'
CATCH_UP_POLICIES = (SKIP, ONCE, ALL)

#: Seconds a claim on a due minute is kept: consumers whose clocks disagree by less than
#: this never enqueue one minute twice.
CLAIM_TTL = 3600
#: The most runs ``catch_up='all'`` enqueues for one gap (the most recent missed minutes).
MAX_CATCH_UP_RUNS = 100
#: How far back a catch-up looks for missed minutes.
MAX_CATCH_UP_AGE = datetime.timedelta(days=7)

_MINUTE = datetime.timedelta(minutes=1)
_CLAIM_SPAN = datetime.timedelta(seconds=CLAIM_TTL)
_MINUTE_FORMAT = '%Y-%m-%dT%H:%M'


def check_catch_up(catch_up):
    """``catch_up`` when it names a policy, else ``ValueError`` naming it."""
    if not isinstance(catch_up, str) or catch_up not in CATCH_UP_POLICIES:
        raise ValueError(f"catch_up must be one of 'skip', 'once' or 'all', got {catch_up!r}")
    return catch_up


def new_owner():
    """A name for one consumer, unique among the consumers sharing a storage, that tells an
    operator where it runs: ``host:pid:random``."""
    return f'{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}'


def parse_mark(value):
    """``(minute, owner)`` from a stored mark, or None when there is none (or it is not one)."""
    if value is EmptyData or not isinstance(value, (bytes, bytearray, memoryview)):
        return None
    minute, _, owner = bytes(value).decode('utf8', 'replace').partition(' ')
    try:
        return datetime.datetime.strptime(minute, _MINUTE_FORMAT), owner
    except ValueError:
        return None


class PeriodicPlanner:
    """Decides which periodic task runs one consumer enqueues, minute by minute.

    A Consumer keeps one for all the schedulers it starts (so a scheduler it restarts keeps
    its name). ``owner`` names the consumer in claims and marks.
    """

    def __init__(self, huey, owner=None):
        self.huey = huey
        self.owner = owner or new_owner()
        self._checked = None  # the latest minute this planner checked
        self._intact = False  # ...and whether that check reached the storage for every task
        self._rewound = False  # the clock went back: minutes up to _checked are skipped
        self._warned_unclaimable = False

    def mark_key(self, name):
        return f'{self.huey.name}.periodic.{name}'

    @staticmethod
    def claim_key(name, minute):
        return f'periodic.{name}@{minute.strftime(_MINUTE_FORMAT)}'

    def marks(self):
        """``{task name: (minute, owner)}``: when each periodic task with a catch-up policy
        last ran, and where."""
        names = [self._name(task) for task in self.huey._registry.periodic_tasks]
        stored = self.huey.storage.peek_many([self.mark_key(name) for name in names])
        found = {name: parse_mark(stored.get(self.mark_key(name), EmptyData)) for name in names}
        return {name: mark for name, mark in found.items() if mark is not None}

    def due(self, now):
        """The task instances to enqueue for the minute of ``now`` (a naive datetime): catch-up
        runs first, oldest first, then this minute's runs this consumer won."""
        minute = now.replace(second=0, microsecond=0)
        checked = self._checked
        if (
            checked is not None
            and checked - _CLAIM_SPAN < minute <= checked
            and (minute < checked or self._rewound)
        ):
            # The clock went back: this consumer checked these minutes already. (Further
            # back than claims last, the clock was wrong before: start afresh.)
            if not self._rewound:
                logger.info('Clock went back to %s; %s was checked already.', minute, checked)
            self._rewound = True
            return []
        self._rewound = False
        continuous = (
            self._intact
            and checked is not None
            and datetime.timedelta(0) <= minute - checked <= _MINUTE
        )
        self._checked, self._intact = minute, True
        runs = []
        new_marks = {}
        if not continuous:
            runs.extend(self._catch_up(self.huey._registry.periodic_tasks, minute, new_marks))
        storage = self.huey.storage
        # Through read_periodic, as huey's scheduler, so that a Huey subclass overriding it
        # still decides which tasks are due.
        for task in self.huey.read_periodic(now):
            name = self._name(task)
            try:
                won = storage.claim(self.claim_key(name, minute), self.owner, CLAIM_TTL)
            except NotImplementedError:
                # A storage written for huey 3.5.4 without put_if_empty: enqueue as huey did.
                if not self._warned_unclaimable:
                    self._warned_unclaimable = True
                    logger.warning(
                        '%s cannot take claims: every consumer enqueues every periodic run.',
                        type(storage).__name__,
                    )
                won = True
            except Exception:
                self._intact = False
                logger.exception('Error claiming periodic task %s for %s.', name, minute)
                continue
            if won:
                runs.append(task)
                if _policy(task) != SKIP:
                    new_marks[name] = minute
        self._store_marks(new_marks)
        return runs

    def _catch_up(self, tasks, minute, new_marks):
        tasks = [task for task in tasks if _policy(task) != SKIP]
        if not tasks:
            return []
        names = [self._name(task) for task in tasks]
        try:
            stored = self.huey.storage.peek_many([self.mark_key(name) for name in names])
        except Exception:
            self._intact = False
            logger.exception('Error reading periodic task marks; no catch-up at %s.', minute)
            return []
        runs = []
        for task, name in zip(tasks, names):
            mark = parse_mark(stored.get(self.mark_key(name), EmptyData))
            if mark is None:
                # Tracked from now on: nothing to catch up yet.
                new_marks[name] = minute - _MINUTE
                continue
            try:
                caught = self._catch_up_task(task, name, mark[0], minute)
            except Exception:
                self._intact = False
                logger.exception('Error catching up periodic task %s.', name)
                continue
            if caught:
                runs.extend(caught)
                new_marks[name] = minute - _MINUTE
        return runs

    def _catch_up_task(self, task, name, mark, minute):
        policy = _policy(task)
        limit = 1 if policy == ONCE else MAX_CATCH_UP_RUNS
        missed = []  # newest first
        at = minute - _MINUTE
        oldest = max(mark + _MINUTE, minute - MAX_CATCH_UP_AGE)
        while at >= oldest and len(missed) < limit:
            if task.validate_datetime(at):
                missed.append(at)
            at -= _MINUTE
        storage = self.huey.storage
        # Consumers catching up the same gap all claim its newest minute first; the one that
        # wins it catches up the gap, the others leave it (as they do when it ran after all).
        if not missed or not storage.claim(self.claim_key(name, missed[0]), self.owner, CLAIM_TTL):
            return []
        won = missed[:1]
        if policy == ALL:
            won += [
                m
                for m in missed[1:]
                if storage.claim(self.claim_key(name, m), self.owner, CLAIM_TTL)
            ]
        if len(missed) == MAX_CATCH_UP_RUNS and at >= oldest:
            logger.warning(
                'Periodic task %s: catching up only the %d most recent runs missed since %s.',
                name,
                MAX_CATCH_UP_RUNS,
                mark,
            )
        logger.info(
            'Catching up periodic task %s (%s): %d run(s) for the minutes missed since %s.',
            name,
            policy,
            1 if policy == ONCE else len(won),
            mark,
        )
        # Fresh instances: ``task`` may also be this minute's run, and each run has its id.
        return [type(task)() for _ in (won[:1] if policy == ONCE else won)]

    def _store_marks(self, new_marks):
        storage = self.huey.storage
        for name, minute in new_marks.items():
            value = f'{minute.strftime(_MINUTE_FORMAT)} {self.owner}'.encode()
            try:
                storage.put_data(self.mark_key(name), value)
            except Exception:
                self._intact = False
                logger.exception('Error storing the mark of periodic task %s.', name)

    def _name(self, task):
        return self.huey._registry.task_to_string(type(task))


def _policy(task):
    # Tasks registered by huey's periodic_task carry their policy; a hand-made task class
    # with a validate_datetime (which huey's registry also treats as periodic) does not.
    return getattr(task, 'catch_up', SKIP)
