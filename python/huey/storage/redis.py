"""RedisStorage, the base of the Redis storages (RedisExpireStorage in ``redis_expire``, the
priority variants in ``redis_priority``).

The keys and data structures are huey 3.5.4's, so huey 3.5.4 and huey-rs processes can share
one Redis. ``{name}`` is the storage name with everything but ``[A-Za-z0-9_]`` removed
(unless ``clean_name=False``)::

    huey.redis.{name}        LIST   queue: LPUSH to enqueue, BRPOP/RPOP to dequeue
                             ZSET   (priority storages, ``huey.storage.redis_priority``):
                                    member = 8-byte big-endian enqueue time
                                    in microseconds + data, score = -priority; BZPOPMIN/ZPOPMIN
    huey.schedule.{name}     ZSET   member = data, score = eta as a unix timestamp
                                    (``time.mktime`` of the naive datetime + microseconds)
    huey.schedule_lock.{name} STRING the token of the scheduler moving due entries (huey-rs)
    huey.results.{name}      HASH   key -> value                (RedisStorage)
    huey.counters.{name}     HASH   key -> integer              (RedisStorage)
    huey.r.{name}.{key}      STRING value, TTL for results       (RedisExpireStorage)
    huey.c.{name}.{key}      STRING integer, TTL expire_time     (RedisExpireStorage)
    huey.notify.{name}.{key} LIST   one b'1' pushed when a result is stored (notify_result)
    huey.dead.{name}         HASH   dead letter id -> struct ``>dII`` (time, deliveries,
                                    reason length) + reason (UTF-8) + the original message
    huey.dead.index.{name}   ZSET   dead letter ids, score = id (oldest first)
    huey.dead.seq.{name}     STRING last dead letter id handed out (INCR)
    huey.claim.{name}.{key}  STRING owner of a claim, TTL the claim's (``claim``: each
                                    periodic run enqueued once, see huey.periodic)
    huey.heartbeats.{name}   HASH   consumer -> heartbeat record (huey.monitor)

plus the reliable-delivery keys listed in ``huey.storage.redis_reliable``. The ``huey.dead.*``
and reliable keys are huey-rs's own; huey 3.5.4 neither reads nor touches them.

On Redis Cluster (``cluster=...``, and only there) ``{name}`` is written with its braces,
a hash tag: ``huey.redis.{app}``, ``huey.results.{app}``, ... all hash to the slot of ``app``,
so every multi-key script and pipeline stays on one node.

Every command goes through a redis-py client (``self.conn``, see ``huey.storage.redis_client``
for how it connects: host and port, URL, TLS, a caller's pool, Sentinel or Cluster): single
commands, pipelines where one step needs several, and the scripts of
``huey.storage.redis_scripts`` where a step must be atomic or saves a round trip. Messages
are opaque bytes here: nothing reads inside them.
"""

import logging
import math
import re
import struct
import time
import uuid
from functools import cached_property

from huey.constants import EmptyData
from huey.exceptions import ConfigurationError
from huey.storage.base import BaseStorage, check_batch, check_limit, dead_letter
from huey.storage.redis_client import FailoverAwareRedis, ThreadClients, connect, describe
from huey.storage.redis_reliable import RedisReliableDelivery
from huey.storage.redis_scripts import Scripts

try:
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # The Redis storages are optional; huey works without redis-py.
    Redis = None
    RedisConnectionError = RedisTimeoutError = ResponseError = None

logger = logging.getLogger('huey.storage.redis')

_DEAD_HEADER = struct.Struct('>dII')

# Backoff between reconnection attempts in dequeue_wait while the server is unreachable.
_RETRY_MIN = 0.05
_RETRY_MAX = 2.0


def _text(key):
    return key.decode('utf8') if isinstance(key, bytes) else key


def _hash_tag(name):
    if not name or '{' in name or '}' in name:
        raise ConfigurationError(
            f'{name!r} cannot make a Redis Cluster hash tag ({{name}} in every key): the name '
            'must be non-empty, without braces'
        )
    return f'{{{name}}}'


def _glob_escape(prefix):
    return re.sub(rb'([*?\[\]\\])', rb'\\\1', prefix)


class RedisStorage(RedisReliableDelivery, BaseStorage):
    """Queue in a Redis list, results and counters in two hashes, schedule in a sorted set."""

    priority = False  # PriorityRedisStorage supports priorities (Redis >= 5).
    redis_client = FailoverAwareRedis
    reliable_delivery = True  # dequeue_reliable, renew_leases, ack, recover_expired
    batch_dequeue = True  # dequeue_many: one script (ZPOPMIN on a sorted-set queue)
    _queue_is_zset = False
    _member_offset = 0  # Bytes of queue-member prefix before the message data.

    def __init__(
        self,
        name='huey',
        blocking=True,
        read_timeout=1,
        connection_pool=None,
        url=None,
        client_name=None,
        notify_result=False,
        notify_result_ttl=60,
        clean_name=True,
        sentinel=None,
        service_name=None,
        sentinel_kwargs=None,
        cluster=False,
        **connection_params,
    ):
        if Redis is None:
            raise ConfigurationError(
                '"redis" python module not found, cannot use Redis '
                'storage backend. Run "pip install redis" to install.'
            )
        for param in ('host', 'port', 'db'):
            if param in connection_params and connection_params[param] is None:
                del connection_params[param]
        self.name = self.clean_name(name) if clean_name else name
        # The name as keys carry it: on a cluster a hash tag, so every key is in one slot.
        self.key_name = _hash_tag(self.name) if cluster else self.name
        self._clients = connect(
            self.redis_client,
            url=url,
            connection_pool=connection_pool,
            client_name=client_name,
            sentinel=sentinel,
            service_name=service_name,
            sentinel_kwargs=sentinel_kwargs,
            cluster=cluster,
            **connection_params,
        )
        self.pool = self._clients.pool
        self.connection_params = connection_params
        self._scripts = Scripts(self._clients.shared)

        self.queue_key = f'huey.redis.{self.key_name}'
        self.schedule_key = f'huey.schedule.{self.key_name}'
        self.schedule_lock_key = f'huey.schedule_lock.{self.key_name}'
        self.result_key = f'huey.results.{self.key_name}'
        self.counter_key = f'huey.counters.{self.key_name}'
        self.notify_prefix = f'huey.notify.{self.key_name}.'
        self.dead_key = f'huey.dead.{self.key_name}'
        self.dead_index_key = f'huey.dead.index.{self.key_name}'
        self.dead_seq_key = f'huey.dead.seq.{self.key_name}'
        self.inflight_key = f'huey.inflight.{self.key_name}'
        self.lease_key = f'huey.lease.{self.key_name}'
        self.inflight_meta_key = f'huey.inflight_meta.{self.key_name}'
        self.redelivery_key = f'huey.redelivery.{self.key_name}'
        self.staging_prefix = f'huey.staging.{self.key_name}.'
        self.notify_result = notify_result
        self.notify_result_ttl = notify_result_ttl
        self.blocking = blocking
        self.read_timeout = read_timeout
        self._integer_timeouts = False  # Set when the server rejects fractional timeouts.
        self._failures = 0  # Consecutive connection failures seen by dequeue_wait.

        if client_name is not None and not cluster:  # (a cluster client names its own)
            self.conn.client_setname(client_name)  # connects now, as huey does

    @property
    def conn(self):
        """The redis-py client for the calling thread (see ``huey.storage.redis_client``)."""
        return self._clients.get()

    @conn.setter
    def conn(self, client):
        # A client assigned by the caller is used as is, by every thread.
        self._clients = ThreadClients(client)
        self.pool = self._clients.pool

    def clean_name(self, name):
        return re.sub('[^A-Za-z0-9_]', '', name)

    def convert_ts(self, ts):
        return time.mktime(ts.timetuple()) + ts.microsecond * 1e-6

    @cached_property
    def supports_hash_ttl(self):
        # HEXPIRE arrived in redis 7.4 and valkey 9 (which reports redis_version 7.2).
        if not hasattr(self.conn, 'hexpire'):
            return False
        info = self.conn.info('server')
        if 'redis_version' not in info:  # a cluster client answers per node
            info = next(iter(info.values()), {})
        for field, minimum in (('redis_version', (7, 4)), ('valkey_version', (9,))):
            try:
                version = tuple(int(part) for part in str(info[field]).split('.')[:2])
            except (KeyError, ValueError):
                continue
            if version >= minimum:
                return True
        return False

    @property
    def server_address(self):
        """Where this storage connects (``host:port``, a socket path, a Sentinel service or
        a cluster node), for messages."""
        return describe(self._clients)

    def close(self):
        # Idle connections only: a forked worker must not share sockets with its parent.
        # (A cluster client's node pools check the pid themselves.)
        if self.pool is not None:
            self.pool.disconnect(inuse_connections=False)

    @staticmethod
    def _block(command, *args, **kwargs):
        """A blocking command's reply; None when the socket timed out first (a
        ``socket_timeout`` shorter than the wait: nothing arrived)."""
        try:
            return command(*args, **kwargs)
        except RedisTimeoutError:
            return None

    def _server_timeout(self, seconds):
        if self._integer_timeouts:
            return max(1, math.ceil(seconds))
        # 0 means "forever" to Redis, so never round a short wait down to it.
        return max(round(seconds, 3), 0.001)

    # Queue -------------------------------------------------------------------------------

    def enqueue(self, data, priority=None):
        if priority:
            raise NotImplementedError('Task priorities are not supported by this storage.')
        self.conn.lpush(self.queue_key, data)

    def enqueue_many(self, items):
        """Enqueue ``(data, priority)`` pairs in order, with one LPUSH."""
        if any(priority for _, priority in items):
            raise NotImplementedError('Task priorities are not supported by this storage.')
        if items:
            self.conn.lpush(self.queue_key, *(data for data, _ in items))

    def dequeue(self):
        # Connection errors propagate (as in huey): the worker logs them and backs off.
        # One BRPOP, as huey's; the consumer's dequeue_wait tries a plain pop first.
        if self.blocking:
            return self._pop_blocking(self.read_timeout)
        return self._pop_now()

    def dequeue_many(self, n, timeout=None):
        """Up to ``n`` queued messages with one command while the queue has some (the
        consumer's prefetch); when it is empty, one message waited for as ``dequeue()``
        (or ``dequeue_wait(timeout)``) waits."""
        if check_batch(n) > 1:
            items = self._pop_many(n)
            if items:
                return items
        return super().dequeue_many(1, timeout)

    def _pop_many(self, n):
        return self._scripts.queue_pop_many(keys=[self.queue_key], args=[n], client=self.conn)

    def _pop(self, timeout):
        """The next message, waited for up to ``timeout`` seconds. A plain pop first: while
        messages are queued it is the cheaper command (a blocking pop's reply carries the
        key too); only an empty queue waits on the server."""
        data = self._pop_now()
        return self._pop_blocking(timeout) if data is None else data

    def _pop_blocking(self, timeout):
        """One blocking pop of up to ``timeout`` seconds; None when nothing arrived."""
        item = self._block(self.conn.brpop, self.queue_key, timeout=timeout)
        return None if item is None else item[1]

    def _pop_now(self):
        return self.conn.rpop(self.queue_key)

    def dequeue_wait(self, timeout):
        """Pop the next message, blocking on the server for up to ``timeout`` seconds.

        Connection errors are logged and retried with exponential backoff until the
        timeout passes (then None is returned), so a Redis restart does not crash a worker.
        """
        deadline = time.monotonic() + (timeout or 0)
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    data = self._pop_now()
                else:
                    data = self._pop(self._server_timeout(remaining))
            except RedisConnectionError as exc:
                self._failures += 1
                delay = min(_RETRY_MIN * 2 ** (self._failures - 1), _RETRY_MAX)
                logger.warning(
                    'Redis at %s unreachable while dequeueing (attempt %d): %s; retrying in %.2fs',
                    self.server_address,
                    self._failures,
                    exc,
                    delay,
                )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                time.sleep(min(delay, remaining))
                continue
            except ResponseError as exc:
                if self._integer_timeouts or 'timeout' not in str(exc):
                    raise
                self._integer_timeouts = True  # Redis < 6 takes whole seconds only.
                continue
            if self._failures:
                logger.info('Redis at %s reachable again', self.server_address)
                self._failures = 0
            return data

    def queue_size(self):
        return self.conn.llen(self.queue_key)

    def enqueued_items(self, limit=None):
        if limit:
            # The next ``limit`` messages to be dequeued sit at the list's tail.
            return self.conn.lrange(self.queue_key, -limit, -1)[::-1]
        return self.conn.lrange(self.queue_key, 0, -1)[::-1]

    def flush_queue(self):
        self.conn.delete(self.queue_key)

    # Schedule ----------------------------------------------------------------------------

    def add_to_schedule(self, data, ts):
        self.conn.zadd(self.schedule_key, {data: self.convert_ts(ts)})

    def read_schedule(self, ts):
        due = self._scripts.schedule_pop(
            keys=[self.schedule_key], args=[self.convert_ts(ts)], client=self.conn
        )
        return [] if due is None else due

    schedule_move_lock = 10.0  # seconds a scheduler's move lock lasts unless renewed
    schedule_move_batch = 100  # due entries signalled and moved per script call

    def move_due_to_queue(self, ts, on_due=None):
        """Move the schedule entries due at ``ts`` into the queue, calling ``on_due(data)``
        (-> priority) for each before it is moved, so its signal goes out before any worker
        can take it. Under a move lock (``huey.schedule_lock.{name}``, SET NX with a
        ``schedule_move_lock`` expiry, extended by every batch) so two huey-rs schedulers
        never signal the same entry: a scheduler that finds the lock taken moves nothing
        this pass. Each batch is read, signalled, then moved by one script that skips
        entries taken meanwhile; an entry stays in the schedule until that script moves it,
        so a crash at any point loses nothing (its lock then lapses after its expiry).
        Returns the moved messages in due order."""
        score = self.convert_ts(ts)
        if not self.conn.zrangebyscore(self.schedule_key, '-inf', score, start=0, num=1):
            return []
        token = uuid.uuid4().hex
        ttl = int(self.schedule_move_lock * 1000)
        if not self.conn.set(self.schedule_lock_key, token, nx=True, px=ttl):
            return []  # another scheduler is moving them
        keys = [self.schedule_key, self.queue_key, self.schedule_lock_key]
        moved = []
        try:
            while True:
                due = self.conn.zrangebyscore(
                    self.schedule_key, '-inf', score, start=0, num=self.schedule_move_batch
                )
                args = [token, ttl, '1' if self._queue_is_zset else '0']
                for data in due:
                    priority = (on_due(data) if on_due is not None else 0) or 0
                    member = self._member(data) if self._queue_is_zset else data
                    args.extend((data, member, -priority))
                if due:
                    moved.extend(
                        self._scripts.schedule_move(keys=keys, args=args, client=self.conn)
                    )
                if len(due) < self.schedule_move_batch:
                    return moved
        finally:
            self._scripts.schedule_unlock(keys=keys[2:], args=[token], client=self.conn)

    def schedule_size(self):
        return self.conn.zcard(self.schedule_key)

    def scheduled_items(self, limit=None):
        return self.conn.zrange(self.schedule_key, 0, limit - 1 if limit else -1)

    def flush_schedule(self):
        self.conn.delete(self.schedule_key)

    # Results -----------------------------------------------------------------------------

    def _queue_notify(self, pipe, key):
        notify_key = self.notify_prefix + _text(key)
        pipe.lpush(notify_key, b'1')
        pipe.expire(notify_key, self.notify_result_ttl)

    def put_data(self, key, value, is_result=False):
        if is_result and self.notify_result:
            pipe = self.conn.pipeline(transaction=False)
            pipe.hset(self.result_key, key, value)
            self._queue_notify(pipe, key)
            pipe.execute()
        else:
            self.conn.hset(self.result_key, key, value)

    def _notify_ttl(self, is_result):
        return self.notify_result_ttl if is_result and self.notify_result else 0

    def delete_and_put(self, delete_key, key, value, is_result=False):
        self._hash_replace(delete_key, key, value, self._notify_ttl(is_result), [])

    def delete_put_and_peek(self, delete_key, key, value, peek_keys):
        """One script: the result written, then the fields of ``peek_keys`` read."""
        peek_keys = list(peek_keys)
        ttl = self._notify_ttl(True)
        return _found(peek_keys, self._hash_replace(delete_key, key, value, ttl, peek_keys))

    def _hash_replace(self, delete_key, key, value, notify_ttl, peek_keys):
        put = key is not None
        return self._scripts.hash_replace(
            keys=[self.result_key, self.notify_prefix + (_text(key) if put else '')],
            args=[
                delete_key,
                '1' if put else '0',
                key if put else '',
                value if put else b'',
                notify_ttl,
                *peek_keys,
            ],
            client=self.conn,
        )

    def peek_data(self, key):
        value = self.conn.hget(self.result_key, key)
        return EmptyData if value is None else value

    def peek_many(self, keys):
        keys = list(keys)
        if not keys:
            return {}
        return _found(keys, self.conn.hmget(self.result_key, keys))

    def pop_data(self, key):
        value = self._scripts.hash_pop(keys=[self.result_key], args=[key], client=self.conn)
        return EmptyData if value is None else value

    def delete_data(self, key):
        return self.conn.hdel(self.result_key, key) != 0

    def has_data_for_key(self, key):
        return bool(self.conn.hexists(self.result_key, key))

    def wait_result(self, key, timeout=None, backoff=1.15, max_delay=1.0):
        """With ``notify_result`` block on the key's notify list instead of polling."""
        if not self.notify_result:
            return super().wait_result(key, timeout, backoff, max_delay)
        if self.has_data_for_key(key):
            return True
        notify_key = self.notify_prefix + _text(key)
        try:
            woken = self.conn.blpop(notify_key, timeout=timeout or 0)
        except (RedisConnectionError, RedisTimeoutError):
            return False
        if woken is not None:
            # Notifications left over (a result stored twice) would wake the next waiter
            # on this key for nothing.
            self.conn.delete(notify_key)
            return True
        return self.has_data_for_key(key)

    def put_if_empty(self, key, value, ttl=None):
        if ttl is not None and not self.supports_hash_ttl:
            raise NotImplementedError(
                'ttl requires hash-field TTL support (redis 7.4+ or valkey 9+).'
            )
        if not self.conn.hsetnx(self.result_key, key, value):
            return False
        if ttl is not None:
            self.conn.hexpire(self.result_key, ttl, key)
        return True

    def result_store_size(self):
        return self.conn.hlen(self.result_key)

    def result_items(self):
        return {_text(k): v for k, v in self.conn.hgetall(self.result_key).items()}

    def flush_results(self):
        self.conn.delete(self.result_key)

    # Counters ----------------------------------------------------------------------------

    def incr(self, key, amount=1):
        return self.conn.hincrby(self.counter_key, key, amount)

    def delete_counter(self, key):
        self.conn.hdel(self.counter_key, key)

    def flush_counters(self):
        self.conn.delete(self.counter_key)

    # Dead letters (no TTL, in every Redis storage) ---------------------------------------

    def put_dead_letter(self, data, reason, deliveries=1):
        id = self._scripts.dead_put(
            keys=[self.dead_seq_key, self.dead_key, self.dead_index_key],
            args=[self._dead_record(data, reason, deliveries)],
            client=self.conn,
        )
        return str(id)

    @staticmethod
    def _dead_record(data, reason, deliveries):
        """A dead letter as stored in the ``huey.dead.*`` hash (``_letter`` reads it back)."""
        reason = str(reason).encode('utf8', 'replace')
        return _DEAD_HEADER.pack(time.time(), int(deliveries), len(reason)) + reason + data

    @staticmethod
    def _letter(id, record):
        when, deliveries, length = _DEAD_HEADER.unpack_from(record)
        start = _DEAD_HEADER.size
        reason = record[start : start + length].decode('utf8', 'replace')
        return dead_letter(_text(id), record[start + length :], reason, when, deliveries)

    def dead_letters(self, limit=None):
        limit = check_limit(limit)
        if limit == 0:
            return []
        ids = self.conn.zrange(self.dead_index_key, 0, -1 if limit is None else limit - 1)
        if not ids:
            return []
        records = self.conn.hmget(self.dead_key, ids)
        # A letter popped between the two reads is simply not listed.
        return [self._letter(id, record) for id, record in zip(ids, records) if record is not None]

    def pop_dead_letter(self, id):
        record = self._scripts.dead_pop(
            keys=[self.dead_key, self.dead_index_key], args=[str(id)], client=self.conn
        )
        return None if record is None else self._letter(str(id), record)

    def flush_dead_letters(self):
        self.conn.delete(self.dead_key, self.dead_index_key)

    def dead_letter_count(self):
        return self.conn.hlen(self.dead_key)

    # Claims (periodic runs enqueued once across consumers, see huey.periodic) -------------

    def claim(self, key, owner, ttl):
        # One key per claim, so Redis expires it and it never meets another key in a command.
        claim_key = f'huey.claim.{self.key_name}.{key}'
        if self.conn.set(claim_key, owner, nx=True, px=max(int(ttl * 1000), 1)):
            return True
        return _text(self.conn.get(claim_key)) == owner

    # Heartbeats (operators' view, see BaseStorage): the hash ``huey.heartbeats.{name}``,
    # consumer -> record (huey 3.5.4 never reads it).

    def put_heartbeat(self, consumer, data):
        self.conn.hset(f'huey.heartbeats.{self.key_name}', consumer, data)

    def heartbeats(self):
        records = self.conn.hgetall(f'huey.heartbeats.{self.key_name}')
        return {_text(consumer): data for consumer, data in records.items()}

    def delete_heartbeat(self, consumer):
        self.conn.hdel(f'huey.heartbeats.{self.key_name}', consumer)


def _found(keys, values):
    """``peek_many``'s dict: the keys whose value (in ``values``, in order) is set."""
    return {k: v for k, v in zip(keys, values) if v is not None}
