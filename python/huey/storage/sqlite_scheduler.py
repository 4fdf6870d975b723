"""What the consumer's scheduler asks of SqliteStorage: claims (a key in ``huey_rs_claim``
held by one owner until it expires; periodic runs are claimed this way) and the move of due
tasks from ``schedule`` to ``task`` under a move lock, so that several schedulers on one
database neither double-run a periodic task nor move a due task twice.
"""

import time


def _marks(values):
    """``?, ?, ...``: one placeholder per value."""
    return ','.join('?' * len(values))


class SqliteScheduler:
    """Mixin of SqliteStorage (uses its ``_write``, ``_rows`` and ``_transaction``)."""

    # Claims ------------------------------------------------------------------------------

    _CLAIM_DDL = (
        'create table if not exists huey_rs_claim (queue text not null, key text not null, '
        'owner text not null, expires real not null, primary key (queue, key))'
    )
    _claims_ready = False

    def claim(self, key, owner, ttl):
        """One write transaction: lapsed claims of this queue go, ``key`` is inserted unless
        held, and the holder read back."""
        if not self._claims_ready:
            self._write(self._CLAIM_DDL, (), 'creating the claims table')
            self._claims_ready = True
        now = time.time()
        with self._transaction('claiming') as conn:
            conn.execute(
                'delete from huey_rs_claim where queue = ? and expires <= ?', (self.name, now)
            )
            conn.execute(
                'insert into huey_rs_claim (queue, key, owner, expires) values (?, ?, ?, ?) '
                'on conflict (queue, key) do nothing',
                (self.name, key, owner, now + ttl),
            )
            rows = conn.execute(
                'select owner from huey_rs_claim where queue = ? and key = ?', (self.name, key)
            ).fetchall()
        return rows[0][0] == owner

    # Moving due tasks to the queue -------------------------------------------------------
    #
    # The scheduler signals each due task before a worker can take it, without holding the
    # write lock while signal receivers run: under a move lock (a row in ``counter`` keyed
    # ``huey.schedule-lock`` holding its expiry in microseconds, so a killed scheduler's lock
    # lapses), it reads a batch of due rows, calls ``on_due`` for each, then moves those
    # still scheduled in one transaction (extending the lock). A row stays in ``schedule``
    # until that transaction commits, so a crash at any point loses nothing.

    schedule_move_lock = 10.0  # seconds a scheduler's move lock lasts unless renewed
    schedule_move_batch = 400  # due rows signalled and moved per transaction
    _SCHEDULE_LOCK = 'huey.schedule-lock'

    def move_due_to_queue(self, ts, on_due=None):
        """Move the rows due at ``ts`` into ``task``, calling ``on_due(data)`` (-> priority)
        for each before it is moved; returns the moved messages in due order. A scheduler
        that finds the move lock taken moves nothing this pass."""
        when = ts.timestamp()
        due_sql = 'select id, data from schedule where queue = ? and timestamp <= ? '
        if not self._rows(due_sql + 'limit 1', (self.name, when)):
            return []
        with self._transaction('taking the schedule lock') as conn:
            lock = self._lock_schedule(conn, None)
        if lock is None:
            return []  # another scheduler is moving them
        moved = []
        try:
            while True:
                rows = self._rows(
                    due_sql + 'order by timestamp, id limit ?',
                    (self.name, when, self.schedule_move_batch),
                )
                priorities = [(on_due(data) if on_due is not None else 0) or 0 for _, data in rows]
                if rows:
                    lock = self._move_rows(rows, priorities, lock, moved)
                if len(rows) < self.schedule_move_batch:
                    return moved
        finally:
            self._write(
                'delete from counter where queue = ? and key = ? and value = ?',
                (self.name, self._SCHEDULE_LOCK, lock),
                'releasing the schedule lock',
            )

    def _lock_schedule(self, conn, held):
        """In the transaction on ``conn``: take the move lock (``held`` None) or extend the
        one held; returns its new value, or None when another scheduler holds it."""
        now = time.time_ns() // 1000
        row = conn.execute(
            'select value from counter where queue = ? and key = ?',
            (self.name, self._SCHEDULE_LOCK),
        ).fetchone()
        if row is not None and row[0] != held and row[0] > now:
            return None
        until = now + int(self.schedule_move_lock * 1e6)
        conn.execute(
            'insert or replace into counter (queue, key, value) values (?, ?, ?)',
            (self.name, self._SCHEDULE_LOCK, until),
        )
        return until

    def _move_rows(self, rows, priorities, lock, moved):
        """One transaction: move those of ``rows`` (id, data) still scheduled into ``task``,
        appending their data to ``moved``, and extend the lock; returns its new value."""
        with self._transaction('moving due tasks to the queue') as conn:
            ids = [id for id, _ in rows]
            present = dict(
                conn.execute(f'select id, data from schedule where id in ({_marks(ids)})', ids)
            )
            # Only rows not taken meanwhile (a row id can be reused by a later schedule).
            batch = [
                (id, data, priority)
                for (id, data), priority in zip(rows, priorities)
                if present.get(id) == data
            ]
            if batch:
                ids = [id for id, _, _ in batch]
                conn.execute(f'delete from schedule where id in ({_marks(ids)})', ids)
                conn.executemany(
                    'insert into task (queue, data, priority) values (?, ?, ?)',
                    [(self.name, data, priority) for _, data, priority in batch],
                )
            lock = self._lock_schedule(conn, lock) or lock
        moved.extend(data for _, data, _ in batch)
        return lock
