"""Reliable delivery (``Huey(reliable=True)``, see ``huey.reliable``) for the Redis storages.

A mixin of ``RedisStorage``; its keys (huey 3.5.4 never reads them)::

    huey.inflight.{name}       HASH   delivery token -> queue member being run
    huey.inflight_meta.{name}  HASH   token -> "deliveries score consumer" (deliveries
                                      charged: this one counts once its task starts)
    huey.lease.{name}          ZSET   token, score = lease end (unix time)
    huey.redelivery.{name}     HASH   member -> deliveries so far (after a recovery)
    huey.staging.{name}.{tok}  LIST   one message a blocking pop moved (BRPOPLPUSH) and
                                      has not adopted into the in-flight hash yet

A dequeue is one script (queue -> in flight); an idle list-queue consumer blocks in
BRPOPLPUSH into its staging list, under a lease, so recovery finds what a crash left there.
"""

import logging
import time

from huey.storage.base import over_cap_reason

logger = logging.getLogger('huey.storage.redis')


def _text(key):
    return key.decode('utf8') if isinstance(key, bytes) else key


class RedisReliableDelivery:
    """In-flight hash, leases and recovery; the storage supplies the keys and scripts."""

    reliable_poll_max = 0.05  # Longest sleep between pops while waiting for a message.
    recover_batch = 1000  # Expired leases recovered per call.

    def _reliable_keys(self):
        return [
            self.queue_key,
            self.inflight_key,
            self.lease_key,
            self.inflight_meta_key,
            self.redelivery_key,
        ]

    batch_reliable = True  # dequeue_reliable_many: one script for the batch

    def dequeue_reliable(self, consumer, token, lease, timeout=None):
        taken = self.dequeue_reliable_many(consumer, [token], lease, timeout)
        return taken[0][1:] if taken else None

    def dequeue_reliable_many(self, consumer, tokens, lease, timeout=None):
        """Move up to one message per token into the in-flight hash (one script); returns
        ``[(token, data, deliveries)]``, [] when the queue stayed empty. When the queue is
        empty, waits up to ``timeout`` seconds for one: blocking on the server for list
        queues (``_wait_reliable``), polling (1 ms growing to ``reliable_poll_max``) for
        sorted sets, which have no blocking move."""
        tokens = list(tokens)
        deadline = time.monotonic() + (timeout or 0)
        delay = 0.001
        while True:
            got = self._scripts.reliable_pop(
                keys=self._reliable_keys(),
                args=[time.time() + lease, consumer, '1' if self._queue_is_zset else '0', *tokens],
                client=self.conn,
            )
            if got:
                taken = [
                    (token, *entry)
                    for token, reply in zip(tokens, got)
                    for entry in [self._taken(token, reply, self._member_offset)]
                    if entry
                ]
                if taken:
                    return taken
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if not self._queue_is_zset:
                got = self._wait_reliable(consumer, tokens[0], lease, remaining)
                taken = got and self._taken(tokens[0], got, 0)
                if taken:
                    return [(tokens[0], *taken)]
                if not got and deadline - time.monotonic() <= 0:
                    return []
                continue
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, self.reliable_poll_max)

    def _taken(self, token, got, offset):
        """``(data, deliveries)`` from a take script's reply; None when the message's
        redelivery count was unreadable: then it is set aside and its entry removed."""
        data = bytes(got[0][offset:])
        if len(got) == 2:
            return data, int(got[1])
        reason = f'unusable redelivery count {got[2]!r} for a queued message'
        letter_id = self.put_dead_letter(data, reason, 0)
        self.ack(token)
        logger.error('%s; set aside as dead letter %s.', reason, letter_id)
        return None

    def _staging_key(self, token):
        return f'{self.staging_prefix}{token}'

    def _wait_reliable(self, consumer, token, lease, timeout):
        """Block up to ``timeout`` seconds for a message: a lease is registered for
        ``token`` first, so if this process dies once BRPOPLPUSH has moved a message into
        the token's staging list, recovery puts it back; then the adopt script makes it in
        flight. Returns what the adoption returned, or None."""
        staging = self._staging_key(token)
        wait = self._server_timeout(timeout)
        self.conn.zadd(self.lease_key, {token: time.time() + lease + wait})
        moved = self._block(self.conn.brpoplpush, self.queue_key, staging, timeout=wait)
        if moved is None:
            self.conn.zrem(self.lease_key, token)
            return None
        return self._scripts.reliable_adopt(
            keys=[
                staging,
                self.inflight_key,
                self.lease_key,
                self.inflight_meta_key,
                self.redelivery_key,
            ],
            args=[token, time.time() + lease, consumer],
            client=self.conn,
        )

    def renew_leases(self, tokens, lease):
        """Extend the leases of ``tokens`` (one ZADD XX per 500); returns how many are
        still in flight."""
        tokens = list(tokens)
        until = time.time() + lease
        renewed = 0
        for i in range(0, len(tokens), 500):
            mapping = dict.fromkeys(tokens[i : i + 500], until)
            renewed += self.conn.zadd(self.lease_key, mapping, xx=True, ch=True)
        return renewed

    def _ack_start_keys(self):
        return [self.lease_key, self.inflight_key, self.inflight_meta_key, self.result_key]

    def mark_started(self, token):
        """Charge the in-flight entry ``token`` its delivery; False when it is gone."""
        reply = self._scripts.reliable_start(
            keys=self._ack_start_keys(), args=[token], client=self.conn
        )
        return bool(int(reply[0]))

    def start_and_peek(self, token, peek_keys):
        """One script: the delivery charged, then (when still in flight) the fields of
        ``peek_keys`` read from the results hash."""
        peek_keys = list(peek_keys)
        reply = self._scripts.reliable_start(
            keys=self._ack_start_keys(), args=[token, *peek_keys], client=self.conn
        )
        return _started(peek_keys, reply)

    def ack_and_start(self, ack_token, start_token, peek_keys):
        """One script: ``ack(ack_token)``, then ``start_and_peek(start_token, peek_keys)``."""
        peek_keys = list(peek_keys)
        reply = self._scripts.reliable_ack_start(
            keys=self._ack_start_keys(),
            args=[ack_token, start_token, *peek_keys],
            client=self.conn,
        )
        return (bool(int(reply[0])), *_started(peek_keys, reply[1:]))

    def renew_delete_and_put(self, token, lease, delete_key, key, value):
        """One script: the lease renewed and the result written only while the delivery is
        still in flight."""
        put = key is not None
        return bool(
            self._scripts.reliable_finish(
                keys=[
                    self.result_key,
                    self.notify_prefix + (_text(key) if put else ''),
                    self.lease_key,
                ],
                args=[
                    delete_key,
                    '1' if put else '0',
                    key if put else '',
                    value if put else b'',
                    self._notify_ttl(True),
                    token,
                    time.time() + lease,
                ],
                client=self.conn,
            )
        )

    def ack(self, token):
        """Remove the in-flight entry ``token``; False when it was already recovered."""
        return bool(
            self._scripts.reliable_ack(keys=self._ack_start_keys(), args=[token], client=self.conn)
        )

    def recover_expired(self, max_deliveries, now=None):
        """Put in-flight entries whose lease expired back in the queue (up to
        ``recover_batch`` per call: one read of the expired tokens, then one script over
        them); at ``max_deliveries`` the same script moves them into the dead-letter queue.
        Returns ``(requeued, [(None, deliveries, letter_id)])``."""
        now = time.time() if now is None else now
        tokens = self.conn.zrangebyscore(
            self.lease_key, '-inf', f'({now!r}', start=0, num=self.recover_batch
        )
        return self._recover([_text(token) for token in tokens], now, max_deliveries)

    def release_inflight(self, tokens, max_deliveries):
        """The recovery script on ``tokens`` whatever their lease: back at the front of the
        queue in their order (a list queue takes from its tail, so they go newest first)."""
        tokens = list(tokens)[::-1]
        return self._recover(tokens, time.time() + 10**9, max_deliveries)

    def _recover(self, tokens, now, max_deliveries):
        """The recovery script over ``tokens``: those whose lease ended before ``now``."""
        if not tokens:
            return 0, []
        moved, dead, bad = self._scripts.reliable_recover(
            keys=[
                self.lease_key,
                self.inflight_key,
                self.inflight_meta_key,
                self.queue_key,
                self.redelivery_key,
                self.dead_seq_key,
                self.dead_key,
                self.dead_index_key,
                *(self._staging_key(token) for token in tokens),
            ],
            args=[
                now,
                max_deliveries,
                '1' if self._queue_is_zset else '0',
                self._member_offset,
                over_cap_reason('%d', max_deliveries),
                time.time(),
                *tokens,
            ],
            client=self.conn,
        )
        for i in range(0, len(bad), 2):
            logger.error('%s; set aside as dead letter %s.', _text(bad[i + 1]), bad[i])
        return int(moved), [(None, int(dead[i + 1]), str(dead[i])) for i in range(0, len(dead), 2)]

    def inflight_items(self):
        """``[(token, consumer, deliveries, lease_until, data)]``; a message a blocking
        pop moved into a staging list but has not adopted yet is listed with 0 deliveries
        and consumer ``'?'``."""
        leases = self.conn.zrange(self.lease_key, 0, -1, withscores=True)
        pipe = self.conn.pipeline(transaction=False)
        for token, _ in leases:
            pipe.hget(self.inflight_key, token)
            pipe.hget(self.inflight_meta_key, token)
            pipe.lindex(self._staging_key(_text(token)), -1)
        replies = pipe.execute()
        items = []
        for i, (token, until) in enumerate(leases):
            member, meta, staged = replies[3 * i : 3 * i + 3]
            if member is not None:
                meta = (meta or b'1 0 ?').split(b' ', 2)
                if len(meta) < 3 or not meta[0].isdigit():  # unreadable: recovery sets it aside
                    meta = [b'0', b'0', b'?']
                deliveries, _, consumer = meta
                items.append(
                    (
                        _text(token),
                        _text(consumer),
                        int(deliveries),
                        until,
                        member[self._member_offset :],
                    )
                )
            elif staged is not None:
                items.append((_text(token), '?', 0, until, staged))
        return items


def _started(peek_keys, reply):
    """``start_and_peek``'s pair from the start script's reply."""
    if not int(reply[0]):
        return False, {}
    return True, {k: v for k, v in zip(peek_keys, reply[1:]) if v is not None}
