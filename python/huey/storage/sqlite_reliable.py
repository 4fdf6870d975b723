"""SqliteStorage's dead letters and reliable delivery: tables of huey-rs's own beside huey
3.5.4's, which huey 3.5.4 neither reads nor minds.

    dead_letter(id, queue, data, reason, time, deliveries)   messages set aside
    huey_rs_inflight, huey_rs_redelivery                      in-flight messages (see below)
"""

import logging
import math
import time

from huey.storage.base import check_limit, dead_letter, over_cap_reason

logger = logging.getLogger('huey')

# Bound parameters per statement stay below sqlite's historical limit of 999.
CHUNK = 500


def _is_count(value):
    return type(value) is int and value >= 0


def _as_bytes(data):
    if isinstance(data, bytes):
        return data
    return b'' if data is None else str(data).encode()


def _unusable_inflight(data, priority, deliveries, lease_until):
    """Why an in-flight row cannot be recovered, or None when it can."""
    if not isinstance(data, bytes):
        return f'its data is {type(data).__name__}, not bytes'
    if not _is_count(deliveries):
        return f'its delivery count {deliveries!r} is not a count'
    if type(priority) not in (int, float) or not math.isfinite(priority):
        return f'its priority {priority!r} is not a number'
    if type(lease_until) not in (int, float):
        return f'its lease end {lease_until!r} is not a time'
    return None


class SqliteReliableDelivery:
    """SqliteStorage's dead-letter queue and reliable delivery (a mixin: it runs its
    statements through SqliteStorage's connection and statement helpers)."""

    # Dead letters ------------------------------------------------------------------------

    _LETTER_COLUMNS = 'id, data, reason, time, deliveries'

    @staticmethod
    def _letter(row):
        id, data, reason, when, deliveries = row
        return dead_letter(str(id), bytes(data), reason, when, deliveries)

    def put_dead_letter(self, data, reason, deliveries=1):
        cursor = self._write(
            'insert into dead_letter (queue, data, reason, time, deliveries) '
            'values (?, ?, ?, ?, ?)',
            (self.name, data, str(reason), time.time(), int(deliveries)),
            'setting a message aside',
        )
        return str(cursor.lastrowid)

    def dead_letters(self, limit=None):
        limit = check_limit(limit)
        rows = self._rows(
            f'select {self._LETTER_COLUMNS} from dead_letter where queue = ? order by id limit ?',
            (self.name, -1 if limit is None else limit),
        )
        return [self._letter(row) for row in rows]

    def pop_dead_letter(self, id):
        try:
            rowid = int(id)
        except (TypeError, ValueError):
            return None
        rows = self._delete_returning(
            'dead_letter',
            'queue = ? and id = ?',
            (self.name, rowid),
            self._LETTER_COLUMNS,
            'popping a dead letter',
        )
        return self._letter(rows[0]) if rows else None

    def flush_dead_letters(self):
        self._write(
            'delete from dead_letter where queue = ?', (self.name,), 'flushing dead letters'
        )

    def dead_letter_count(self):
        return self._rows('select count(*) from dead_letter where queue = ?', (self.name,))[0][0]

    # Reliable delivery (opt-in, ``Huey(reliable=True)``) -----------------------------------
    #
    # Two side tables, created on first use; huey 3.5.4's tables are untouched (and its name
    # huey_inflight, which huey.contrib.stats uses, is left to it):
    #     huey_rs_inflight(token text primary key, queue, consumer, data, priority,
    #                   deliveries, lease_until real)  one row per message being run
    #     huey_rs_redelivery(queue, task_id, data, deliveries)   how often a message that
    #                   went back to ``task`` was delivered before (joined by row id + data)

    _RELIABLE_DDL = (
        'create table if not exists huey_rs_inflight (token text not null primary key, '
        'queue text not null, consumer text not null, data blob not null, '
        'priority real not null default 0.0, deliveries integer not null, '
        'lease_until real not null)',
        'create index if not exists huey_rs_inflight_queue_lease on huey_rs_inflight '
        '(queue, lease_until)',
        'create table if not exists huey_rs_redelivery (queue text not null, '
        'task_id integer not null, data blob not null, deliveries integer not null, '
        'primary key (queue, task_id))',
    )
    _reliable_ready = False

    def _ensure_reliable_tables(self):
        if not self._reliable_ready:
            with self._transaction('creating the in-flight tables') as conn:
                for sql in self._RELIABLE_DDL:
                    conn.execute(sql)
            self._reliable_ready = True

    def dequeue_reliable(self, consumer, token, lease, timeout=None):
        """Move the next message into ``huey_rs_inflight`` under ``token`` (one transaction);
        returns ``(data, deliveries)`` or None. ``timeout`` waits as ``dequeue_wait``. The
        row keeps the deliveries charged so far until ``mark_started``. A message whose
        redelivery count is unreadable is set aside as a dead letter (in the same
        transaction) and the next one is taken."""
        self._ensure_reliable_tables()

        def pop(conn):
            with self._transaction('dequeueing a task') as conn:
                while True:
                    rows = self._delete_in(
                        conn,
                        'task',
                        'id = (select id from task where queue = ? '
                        'order by priority desc, id limit 1)',
                        (self.name,),
                        'id, data, priority',
                    )
                    if not rows:
                        return None
                    task_id, data, priority = rows[0]
                    before = self._delete_in(
                        conn,
                        'huey_rs_redelivery',
                        'queue = ? and task_id = ? and data = ?',
                        (self.name, task_id, data),
                        'deliveries',
                    )
                    charged = before[0][0] if before else 0
                    if not _is_count(charged):
                        why = f'its redelivery count {charged!r} is not a count'
                        self._set_aside(conn, data, f'task {task_id}', why)
                        continue
                    conn.execute(
                        'insert into huey_rs_inflight (token, queue, consumer, data, priority, '
                        'deliveries, lease_until) values (?, ?, ?, ?, ?, ?, ?)',
                        (token, self.name, consumer, data, priority, charged, time.time() + lease),
                    )
                    return data, charged + 1

        return self._wait_using(lambda: self._dequeue_using(pop), timeout)

    def mark_started(self, token):
        """Charge the in-flight entry ``token`` its delivery; False when it is gone."""
        self._ensure_reliable_tables()
        return (
            self._write(
                'update huey_rs_inflight set deliveries = deliveries + 1 '
                'where queue = ? and token = ?',
                (self.name, token),
                'starting a task',
            ).rowcount
            > 0
        )

    def renew_leases(self, tokens, lease):
        """Extend the lease of every in-flight entry in ``tokens`` (one statement per 500);
        returns how many are still in flight."""
        self._ensure_reliable_tables()
        tokens = list(tokens)
        until = time.time() + lease
        renewed = 0
        for i in range(0, len(tokens), CHUNK):
            chunk = tokens[i : i + CHUNK]
            renewed += self._write(
                f'update huey_rs_inflight set lease_until = ? where queue = ? and token in '
                f'({",".join("?" * len(chunk))})',
                (until, self.name, *chunk),
                'renewing leases',
            ).rowcount
        return renewed

    def renew_delete_and_put(self, token, lease, delete_key, key, value):
        """One transaction: the lease renewed, and only then the flag deleted and the result
        stored."""
        self._ensure_reliable_tables()
        with self._transaction('storing a result') as conn:
            renewed = conn.execute(
                'update huey_rs_inflight set lease_until = ? where queue = ? and token = ?',
                (time.time() + lease, self.name, token),
            ).rowcount
            if renewed != 1:
                return False
            conn.execute('delete from kv where queue = ? and key = ?', (self.name, delete_key))
            if key is not None:
                conn.execute(
                    'insert or replace into kv (queue, key, value) values (?, ?, ?)',
                    (self.name, key, value),
                )
        return True

    def ack(self, token):
        """Remove the in-flight entry ``token``; False when it is no longer there (it was
        recovered after its lease expired)."""
        self._ensure_reliable_tables()
        return (
            self._write(
                'delete from huey_rs_inflight where queue = ? and token = ?',
                (self.name, token),
                'acknowledging a task',
            ).rowcount
            > 0
        )

    def recover_expired(self, max_deliveries, now=None):
        """In one transaction, put every in-flight entry whose lease expired back in the
        queue, except those delivered ``max_deliveries`` times already: those move into the
        dead-letter queue, returned as ``[(data, deliveries, letter_id)]``. A row with an
        unusable field (a lease, count or priority that is not a number, data that is not
        bytes) is set aside too, logged, and not listed."""
        self._ensure_reliable_tables()
        now = time.time() if now is None else now
        dead = []
        requeued = 0
        with self._transaction('recovering expired leases') as conn:
            rows = self._delete_in(
                conn,
                'huey_rs_inflight',
                'queue = ? and (lease_until < ? or '
                "typeof(lease_until) not in ('integer', 'real'))",
                (self.name, now),
                'token, data, priority, deliveries, lease_until',
            )
            for token, data, priority, deliveries, lease_until in rows:
                why = _unusable_inflight(data, priority, deliveries, lease_until)
                if why is not None:
                    self._set_aside(conn, data, f'in-flight entry {token!r}', why)
                    continue
                if deliveries >= max_deliveries:
                    reason = over_cap_reason(deliveries, max_deliveries)
                    letter_id = self._insert_letter(conn, data, reason, deliveries)
                    dead.append((data, deliveries, letter_id))
                    continue
                task_id = conn.execute(
                    'insert into task (queue, data, priority) values (?, ?, ?)',
                    (self.name, data, priority),
                ).lastrowid
                conn.execute(
                    'insert or replace into huey_rs_redelivery (queue, task_id, data, deliveries)'
                    ' values (?, ?, ?, ?)',
                    (self.name, task_id, data, deliveries),
                )
                requeued += 1
        return requeued, dead

    def _insert_letter(self, conn, data, reason, deliveries):
        return str(
            conn.execute(
                'insert into dead_letter (queue, data, reason, time, deliveries) '
                'values (?, ?, ?, ?, ?)',
                (self.name, data, reason, time.time(), deliveries),
            ).lastrowid
        )

    def _set_aside(self, conn, data, what, why):
        """Dead-letter a message whose reliable-delivery bookkeeping is unusable (inside the
        caller's transaction), and log it."""
        reason = f'unusable {what}: {why}'
        letter_id = self._insert_letter(conn, _as_bytes(data), reason, 0)
        logger.error('%s; set aside as dead letter %s.', reason, letter_id)

    def inflight_items(self):
        """``[(token, consumer, deliveries, lease_until, data)]`` for this queue."""
        self._ensure_reliable_tables()
        return self._rows(
            'select token, consumer, deliveries, lease_until, data from '
            'huey_rs_inflight where queue = ? order by lease_until',
            (self.name,),
        )
