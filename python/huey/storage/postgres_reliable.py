"""PostgresStorage's dead letters, reliable delivery and consumer heartbeats: tables of
huey-rs's own, created on first use. huey 3.5.4 neither reads nor minds them; the ``_rs_``
keeps them apart from huey's contrib.stats tables ``huey_event`` and ``huey_inflight``, which
may live in the same database::

    {p}_rs_dead_letter(id bigserial primary key, queue, data bytea, reason bytea (UTF-8: text
                       refuses NUL), time double precision, deliveries integer)
        index {p}_rs_dead_letter_queue_id (queue, id)        messages set aside
    {p}_rs_inflight(token text primary key, queue, consumer, data bytea, priority,
                    deliveries integer, lease_until double precision)
        index {p}_rs_inflight_queue_lease (queue, lease_until)
                                     reliable mode: one row per delivery being run
    {p}_rs_redelivery(queue, task_id bigint, data bytea, deliveries integer,
                      primary key (queue, task_id))
                                     the delivery count of a message that recovery put back
                                     in {p}_task (joined by row id and data)
    {p}_rs_heartbeat(queue, consumer, data bytea, primary key (queue, consumer))
                                     one row per consumer (operators' view)

Leases are measured on the server's clock (``clock_timestamp()``), so consumers on hosts
whose clocks disagree still agree on when a lease ends.
"""

import math
import time

from huey.storage.base import check_limit, dead_letter, over_cap_reason
from huey.storage.postgres_connection import driver
from huey.storage.postgres_sql import own_ddl


def _check_lease(lease):
    # A NaN lease would never expire (nothing compares less than NaN), an infinite one
    # neither: the message would stay in flight for good.
    if isinstance(lease, bool) or not isinstance(lease, (int, float)):
        raise TypeError(f'lease must be a number of seconds, got {lease!r}')
    if not 0 < lease < math.inf:
        raise ValueError(f'lease must be a finite number of seconds > 0, got {lease!r}')


class PostgresReliableDelivery:
    """PostgresStorage's dead-letter queue, reliable delivery and heartbeats (a mixin: it
    runs its statements through PostgresStorage's connection and statement helpers)."""

    def _ensure_own_tables(self):
        if not self._own_tables_ready:
            names = [
                self.table_dead_letter,
                self.table_inflight,
                self.table_redelivery,
                self.table_heartbeat,
            ]
            present = self.conn.execute(
                'select count(to_regclass(name)) from unnest(%s::text[]) as name', (names,)
            ).fetchone()[0]
            if present != len(names):
                self._create(own_ddl(self.table_prefix), self.table_inflight)
            self._own_tables_ready = True

    # Dead letters ------------------------------------------------------------------------

    @staticmethod
    def _letter(row):
        id, data, reason, when, deliveries = row
        reason = bytes(reason).decode('utf-8', 'surrogatepass')
        return dead_letter(str(id), bytes(data), reason, when, deliveries)

    @staticmethod
    def _reason(reason):
        return str(reason).encode('utf-8', 'surrogatepass')

    def put_dead_letter(self, data, reason, deliveries=1):
        self._ensure_own_tables()
        row = self._run(
            'put_dead_letter',
            (self.name, data, self._reason(reason), time.time(), int(deliveries)),
        ).fetchone()
        return str(row[0])

    def dead_letters(self, limit=None):
        self._ensure_own_tables()
        rows = self._rows('dead_letters', (self.name, check_limit(limit)), binary=True)
        return [self._letter(row) for row in rows]

    def pop_dead_letter(self, id):
        self._ensure_own_tables()
        try:
            number = int(id)
        except (TypeError, ValueError):
            return None
        if not -(2**63) <= number < 2**63:
            return None
        row = self._run('pop_dead_letter', (self.name, number), binary=True).fetchone()
        return None if row is None else self._letter(row)

    def flush_dead_letters(self):
        self._ensure_own_tables()
        self._run('flush_dead_letters', (self.name,))

    def dead_letter_count(self):
        self._ensure_own_tables()
        return self._scalar('dead_letter_count', (self.name,))

    # Reliable delivery (opt-in, ``Huey(reliable=True)``) -----------------------------------

    def dequeue_reliable(self, consumer, token, lease, timeout=None):
        """Move the next message into ``{p}_rs_inflight`` under ``token`` (one statement);
        returns ``(data, deliveries)`` or None. ``timeout`` waits as ``dequeue_wait``. The
        row keeps the deliveries charged so far until ``mark_started``."""
        _check_lease(lease)
        self._ensure_own_tables()
        params = {'queue': self.name, 'token': token, 'consumer': consumer, 'lease': lease}

        def pop():
            row = self._run('dequeue_reliable', params, binary=True).fetchone()
            return None if row is None else (row[0], row[1])

        return self._wait_using(pop, timeout)

    def mark_started(self, token):
        """Charge the in-flight entry ``token`` its delivery; False when it is gone."""
        self._ensure_own_tables()
        return self._run('mark_started', (self.name, token)).rowcount > 0

    def start_and_peek(self, token, peek_keys):
        """One statement: the delivery charged, then the flags of ``peek_keys`` read."""
        self._ensure_own_tables()
        keys = [self._key(key) for key in peek_keys]
        params = {'queue': self.name, 'token': token, 'keys': keys}
        rows = self._rows('start_and_peek', params, binary=True)
        if not rows[0][0]:
            return False, {}
        return True, {key: value for _, key, value in rows if key is not None}

    def renew_delete_and_put(self, token, lease, delete_key, key, value):
        """One statement: the lease renewed, and only then the flag deleted and the result
        stored."""
        _check_lease(lease)
        self._ensure_own_tables()
        delete_key = self._key(delete_key)
        key = None if key is None else self._key(key)
        if key is None:
            name = 'renew_and_delete'
        elif key == delete_key:  # one row: the upsert alone replaces it
            name = 'renew_and_put'
        else:
            name = 'renew_delete_and_put'
        params = {
            'lease': lease,
            'queue': self.name,
            'token': token,
            'delete_key': delete_key,
            'key': key,
            'value': value,
        }
        return self._scalar(name, params) == 1

    def renew_leases(self, tokens, lease):
        """Extend the lease of every in-flight entry in ``tokens`` (one statement); returns
        how many are still in flight."""
        _check_lease(lease)
        self._ensure_own_tables()
        tokens = list(tokens)
        if not tokens:
            return 0
        return self._run('renew_leases', (lease, self.name, tokens)).rowcount

    def ack(self, token):
        """Remove the in-flight entry ``token``; False when it is no longer there (it was
        recovered after its lease expired)."""
        self._ensure_own_tables()
        return self._run('ack', (self.name, token)).rowcount > 0

    def recover_expired(self, max_deliveries, now=None):
        """In one transaction, put every in-flight entry whose lease expired back in the
        queue, except those delivered ``max_deliveries`` times already: those move into the
        dead-letter queue, returned as ``[(data, deliveries, letter_id)]``. ``now`` (unix
        seconds) defaults to the server's clock."""
        self._ensure_own_tables()
        dead = []
        requeued = 0
        with self._transaction() as conn:
            rows = conn.execute(self._sql['expired'], (self.name, now), binary=True).fetchall()
            for data, priority, deliveries in rows:
                if deliveries >= max_deliveries:
                    letter_id = conn.execute(
                        self._sql['put_dead_letter'],
                        (
                            self.name,
                            data,
                            self._reason(over_cap_reason(deliveries, max_deliveries)),
                            time.time(),
                            deliveries,
                        ),
                    ).fetchone()[0]
                    dead.append((data, deliveries, str(letter_id)))
                    continue
                conn.execute(
                    self._sql['requeue'],
                    {
                        'queue': self.name,
                        'data': data,
                        'priority': priority,
                        'deliveries': deliveries,
                    },
                )
                requeued += 1
            if requeued:
                conn.execute(self._sql['notify'], (self.channel,))
        return requeued, dead

    def inflight_items(self):
        """``[(token, consumer, deliveries, lease_until, data)]`` for this queue."""
        self._ensure_own_tables()
        return self._rows('inflight_items', (self.name,), binary=True)

    # Heartbeats (operators' view, see BaseStorage): one row per consumer in
    # {p}_rs_heartbeat, created with huey-rs's other tables on the first write; reading
    # before then finds none and creates nothing.

    def put_heartbeat(self, consumer, data):
        self._ensure_own_tables()
        self.conn.execute(
            f'insert into {self.table_heartbeat} (queue, consumer, data) values (%s, %s, %s) '
            'on conflict (queue, consumer) do update set data = excluded.data',
            (self.name, consumer, bytes(data)),
        )

    def heartbeats(self):
        try:
            rows = self.conn.execute(
                f'select consumer, data from {self.table_heartbeat} where queue = %s',
                (self.name,),
                binary=True,
            ).fetchall()
        except driver().errors.UndefinedTable:
            return {}
        return {consumer: bytes(data) for consumer, data in rows}

    def delete_heartbeat(self, consumer):
        try:
            self.conn.execute(
                f'delete from {self.table_heartbeat} where queue = %s and consumer = %s',
                (self.name, consumer),
            )
        except driver().errors.UndefinedTable:
            pass
