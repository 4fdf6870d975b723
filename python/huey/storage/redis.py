"""Redis storages: RedisStorage, RedisExpireStorage and their priority-queue variants.

The keys and data structures are huey 3.5.4's, so huey 3.5.4 and huey-rs processes can share
one Redis. ``{name}`` is the storage name with everything but ``[A-Za-z0-9_]`` removed
(unless ``clean_name=False``)::

    huey.redis.{name}        LIST   queue: LPUSH to enqueue, BRPOP/RPOP to dequeue
                             ZSET   (priority storages) member = 8-byte big-endian enqueue time
                                    in microseconds + data, score = -priority; BZPOPMIN/ZPOPMIN
    huey.schedule.{name}     ZSET   member = data, score = eta as a unix timestamp
                                    (``time.mktime`` of the naive datetime + microseconds)
    huey.results.{name}      HASH   key -> value                (RedisStorage)
    huey.counters.{name}     HASH   key -> integer              (RedisStorage)
    huey.r.{name}.{key}      STRING value, TTL for results       (RedisExpireStorage)
    huey.c.{name}.{key}      STRING integer, TTL expire_time     (RedisExpireStorage)
    huey.notify.{name}.{key} LIST   one b'1' pushed when a result is stored (notify_result)
    huey.dead.{name}         HASH   dead letter id -> struct ``>dII`` (time, deliveries,
                                    reason length) + reason (UTF-8) + the original message
    huey.dead.index.{name}   ZSET   dead letter ids, score = id (oldest first)
    huey.dead.seq.{name}     STRING last dead letter id handed out (INCR)

With ``Huey(reliable=True)`` (at-least-once, see ``huey.reliable``)::

    huey.inflight.{name}       HASH   delivery token -> queue member being run
    huey.inflight_meta.{name}  HASH   token -> "deliveries score consumer"
    huey.lease.{name}          ZSET   token, score = lease end (unix time)
    huey.redelivery.{name}     HASH   member -> deliveries so far (after a recovery)
    huey.staging.{name}.{tok}  LIST   one message a blocking pop moved (BRPOPLPUSH) and
                                      has not adopted into the in-flight hash yet

A dequeue is one Lua script (queue -> in-flight); an idle list-queue consumer blocks in
BRPOPLPUSH into its staging list, under a lease, so recovery finds what a crash left there.

The ``huey.dead.*`` and reliable keys are huey-rs's own; huey 3.5.4 neither reads nor
touches them.

Every operation is one round trip; due schedule entries are popped atomically by a Lua script.
"""

import logging
import math
import re
import struct
import time
from functools import cached_property

from huey.constants import EmptyData
from huey.exceptions import ConfigurationError
from huey.storage.base import BaseStorage, check_limit, dead_letter, over_cap_reason

try:
    from redis import ConnectionPool, Redis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ReadOnlyError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.exceptions import NoScriptError

    from huey.storage.redis_wire import Wire, pack
except ImportError:  # The Redis storages are optional; huey works without redis-py.
    ConnectionPool = Redis = NoScriptError = Wire = pack = None
    RedisConnectionError = RedisTimeoutError = ReadOnlyError = ResponseError = None

logger = logging.getLogger('huey.storage.redis')

# Pops every schedule entry whose score is <= ARGV[1], in score order, in one atomic step.
SCHEDULE_POP_LUA = """\
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #due > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #due - 1)
end
return due
"""

# Sets a message aside under the next id: KEYS = seq, hash, index; ARGV = record.
DEAD_PUT_LUA = """\
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], id, ARGV[1])
redis.call('ZADD', KEYS[3], id, id)
return id
"""

# Removes and returns one dead letter's record (or false): KEYS = hash, index; ARGV = id.
DEAD_POP_LUA = """\
local record = redis.call('HGET', KEYS[1], ARGV[1])
if record then
    redis.call('HDEL', KEYS[1], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
end
return record
"""

_DEAD_HEADER = struct.Struct('>dII')

# Reliable delivery (``Huey(reliable=True)``): the next message moves into the in-flight
# hash under the caller's delivery token, with a lease and its delivery count, atomically.
# ARGV: token, lease_until, consumer, '1' for a sorted-set (priority) queue.
RELIABLE_POP_LUA = """\
local member, score
if ARGV[4] == '1' then
    local popped = redis.call('ZPOPMIN', KEYS[1])
    if #popped == 0 then return false end
    member, score = popped[1], popped[2]
else
    member = redis.call('RPOP', KEYS[1])
    if not member then return false end
    score = '0'
end
local before = redis.call('HGET', KEYS[5], member)
if before then redis.call('HDEL', KEYS[5], member) end
local deliveries = (tonumber(before) or 0) + 1
redis.call('HSET', KEYS[2], ARGV[1], member)
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], deliveries .. ' ' .. score .. ' ' .. ARGV[3])
return {member, deliveries}
"""

# Expired leases: back to the queue (where the next pop takes them) with their delivery
# count remembered, or, at the delivery cap, moved into the dead-letter queue in the same
# script (so no crash can leave a message in neither). A token with no in-flight entry may
# still hold a message in its staging list (its consumer died between the blocking move and
# the adoption, see RELIABLE_ADOPT_LUA): that message goes back to the queue's head, not
# counted as a delivery. KEYS: lease, inflight, meta, queue, redelivery, dead seq, dead hash,
# dead index. ARGV: now, cap, '1' for a sorted-set queue, staging key prefix, member prefix
# length, reason format (one %d), dead letter time. Returns {requeued, {id, deliveries, ...}}.
RELIABLE_RECOVER_LUA = """\
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
local dead, moved = {}, 0
for _, token in ipairs(expired) do
    local member = redis.call('HGET', KEYS[2], token)
    local meta = redis.call('HGET', KEYS[3], token) or '1 0'
    redis.call('ZREM', KEYS[1], token)
    redis.call('HDEL', KEYS[2], token)
    redis.call('HDEL', KEYS[3], token)
    if member then
        local count, score = string.match(meta, '^(%d+) (%S+)')
        count = tonumber(count)
        if count >= tonumber(ARGV[2]) then
            local reason = string.format(ARGV[6], count)
            local data = string.sub(member, tonumber(ARGV[5]) + 1)
            local id = redis.call('INCR', KEYS[6])
            redis.call('HSET', KEYS[7], id,
                       struct.pack('>dI4I4', tonumber(ARGV[7]), count, #reason) .. reason .. data)
            redis.call('ZADD', KEYS[8], id, id)
            table.insert(dead, id)
            table.insert(dead, count)
        else
            if ARGV[3] == '1' then
                redis.call('ZADD', KEYS[4], score, member)
            else
                redis.call('RPUSH', KEYS[4], member)
            end
            redis.call('HSET', KEYS[5], member, count)
            moved = moved + 1
        end
    elseif ARGV[3] ~= '1' then
        local staged = redis.call('RPOP', ARGV[4] .. token)
        if staged then
            redis.call('RPUSH', KEYS[4], staged)
            moved = moved + 1
        end
    end
end
return {moved, dead}
"""

# A blocking reliable pop (list queues): the consumer registers a lease for its token, then
# BRPOPLPUSH moves the next message into the token's staging list, then this script adopts
# it into the in-flight hash as RELIABLE_POP_LUA does. KEYS: staging list, inflight, lease,
# meta, redelivery. ARGV: token, lease_until, consumer.
RELIABLE_ADOPT_LUA = """\
local member = redis.call('RPOP', KEYS[1])
if not member then return false end
local before = redis.call('HGET', KEYS[5], member)
if before then redis.call('HDEL', KEYS[5], member) end
local deliveries = (tonumber(before) or 0) + 1
redis.call('HSET', KEYS[2], ARGV[1], member)
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], deliveries .. ' 0 ' .. ARGV[3])
return {member, deliveries}
"""

RELIABLE_ACK_LUA = """\
local owned = redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return owned
"""

# Due schedule entries into the list queue in one step (LPUSH in score order, as huey's
# scheduler enqueues them one by one).
SCHEDULE_MOVE_LUA = """\
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #due > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #due - 1)
    for i = 1, #due, 1000 do
        redis.call('LPUSH', KEYS[2], unpack(due, i, math.min(i + 999, #due)))
    end
end
return due
"""

# Sorted-set queues: move the given schedule entries (data, member, score triples) that are
# still scheduled; entries another scheduler moved meanwhile are skipped.
SCHEDULE_MOVE_PRIORITY_LUA = """\
local moved = {}
for i = 1, #ARGV, 3 do
    if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
        redis.call('ZADD', KEYS[2], ARGV[i + 2], ARGV[i + 1])
        table.insert(moved, ARGV[i])
    end
end
return moved
"""

# Pops the next message and reads the two revocation flags huey checks before running it
# (``r:{task id}`` and ``rt:{task name}``, from the results hash or as plain keys), saving the
# worker a round trip. The id and name are the first two fields of a plain pickled Message
# (protocol 4+: ``Message`` STACK_GLOBAL [MEMOIZE] MARK, then SHORT_BINUNICODE id MEMOIZE
# SHORT_BINUNICODE name; huey 3.5.4 writes the MEMOIZEs after the class, huey-rs does not);
# any other message (compressed, signed, long ids) comes back alone and is checked as usual.
# KEYS: queue, results hash. ARGV: '1' for a sorted-set queue, member prefix length, 'h'
# (hash) or 'k' (keys), key prefix for 'k'.
DEQUEUE_PEEK_LUA = """\
local member
if ARGV[1] == '1' then
    local popped = redis.call('ZPOPMIN', KEYS[1])
    if #popped == 0 then return false end
    member = popped[1]
else
    member = redis.call('RPOP', KEYS[1])
    if not member then return false end
end
local offset = tonumber(ARGV[2])
local at = string.find(member, '\\140\\007Message', offset + 1, true)
if not at or at > offset + 64 then return {member} end
local p = at + 9
if string.byte(member, p) == 148 then p = p + 1 end
if string.byte(member, p) ~= 147 then return {member} end
p = p + 1
if string.byte(member, p) == 148 then p = p + 1 end
if string.byte(member, p) ~= 40 then return {member} end
p = p + 1
if string.byte(member, p) ~= 140 then return {member} end
local n = string.byte(member, p + 1)
local id = string.sub(member, p + 2, p + 1 + n)
p = p + 2 + n
if string.byte(member, p) ~= 148 or string.byte(member, p + 1) ~= 140 then return {member} end
n = string.byte(member, p + 2)
local name = string.sub(member, p + 3, p + 2 + n)
if #name ~= n then return {member} end
local k1, k2 = 'r:' .. id, 'rt:' .. name
local v1, v2
if ARGV[3] == 'h' then
    v1 = redis.call('HGET', KEYS[2], k1)
    v2 = redis.call('HGET', KEYS[2], k2)
else
    v1 = redis.call('GET', ARGV[4] .. k1)
    v2 = redis.call('GET', ARGV[4] .. k2)
end
return {member, k1, v1, k2, v2}
"""

# Backoff between reconnection attempts in dequeue_wait while the server is unreachable.
_RETRY_MIN = 0.05
_RETRY_MAX = 2.0


def _text(key):
    return key.decode('utf8') if isinstance(key, bytes) else key


def _glob_escape(prefix):
    return re.sub(rb'([*?\[\]\\])', rb'\\\1', prefix)


if Redis is not None:
    class FailoverAwareRedis(Redis):
        """A client that drops its pool's connections on ``ReadOnlyError``: the server it
        talks to became a replica (a failover), so the next command connects afresh (to
        whatever the host name or proxy now points at) instead of reusing the socket."""

        def execute_command(self, *args, **options):
            try:
                return super().execute_command(*args, **options)
            except ReadOnlyError:
                self.connection_pool.disconnect()
                raise
else:
    FailoverAwareRedis = None


class RedisStorage(BaseStorage):
    """Queue in a Redis list, results and counters in two hashes, schedule in a sorted set."""

    priority = False  # PriorityRedisStorage supports priorities (Redis >= 5).
    redis_client = FailoverAwareRedis

    def __init__(self, name='huey', blocking=True, read_timeout=1, connection_pool=None,
                 url=None, client_name=None, notify_result=False, notify_result_ttl=60,
                 clean_name=True, **connection_params):
        if Redis is None:
            raise ConfigurationError('"redis" python module not found, cannot use Redis '
                                     'storage backend. Run "pip install redis" to install.')
        for param in ('host', 'port', 'db'):
            if param in connection_params and connection_params[param] is None:
                del connection_params[param]
        if sum(1 for given in (url, connection_pool, connection_params) if given) > 1:
            raise ConfigurationError(
                'The connection configuration is over-determined. Please specify only one '
                'of the following: "url", "connection_pool", or "connection_params"')
        if url:
            connection_pool = ConnectionPool.from_url(url)
        elif connection_pool is None:
            connection_pool = ConnectionPool(**connection_params)

        self.pool = connection_pool
        self.conn = self.redis_client(connection_pool=connection_pool)
        self._wire = Wire(connection_pool)
        self._wire_client = self.conn
        self._dequeue_peek = self.conn.register_script(DEQUEUE_PEEK_LUA)
        self.connection_params = connection_params
        self._pop = self.conn.register_script(SCHEDULE_POP_LUA)
        self._reliable_pop = self.conn.register_script(RELIABLE_POP_LUA)
        self._reliable_recover = self.conn.register_script(RELIABLE_RECOVER_LUA)
        self._reliable_ack = self.conn.register_script(RELIABLE_ACK_LUA)
        self._reliable_adopt = self.conn.register_script(RELIABLE_ADOPT_LUA)
        self._schedule_move = self.conn.register_script(SCHEDULE_MOVE_LUA)
        self._schedule_move_priority = self.conn.register_script(SCHEDULE_MOVE_PRIORITY_LUA)

        self.name = self.clean_name(name) if clean_name else name
        self.queue_key = f'huey.redis.{self.name}'
        self.schedule_key = f'huey.schedule.{self.name}'
        self.result_key = f'huey.results.{self.name}'
        self.counter_key = f'huey.counters.{self.name}'
        self.notify_prefix = f'huey.notify.{self.name}.'
        self.dead_key = f'huey.dead.{self.name}'
        self.dead_index_key = f'huey.dead.index.{self.name}'
        self.dead_seq_key = f'huey.dead.seq.{self.name}'
        self._dead_put = self.conn.register_script(DEAD_PUT_LUA)
        self._dead_pop = self.conn.register_script(DEAD_POP_LUA)

        # Reliable delivery only (huey 3.5.4 never reads these).
        self.inflight_key = f'huey.inflight.{self.name}'
        self.lease_key = f'huey.lease.{self.name}'
        self.inflight_meta_key = f'huey.inflight_meta.{self.name}'
        self.redelivery_key = f'huey.redelivery.{self.name}'
        self.staging_prefix = f'huey.staging.{self.name}.'
        self.notify_result = notify_result
        self.notify_result_ttl = notify_result_ttl
        self.blocking = blocking
        self.read_timeout = read_timeout
        self._integer_timeouts = False  # Set when the server rejects fractional timeouts.
        self._failures = 0  # Consecutive connection failures seen by dequeue_wait.

        if client_name is not None:
            self.conn.client_setname(client_name)

    def _fast(self):
        """The hot-path ``Wire`` (see ``huey.storage.redis_wire``), or None to go through
        ``self.conn`` when that is not the stock client this storage made (a custom
        ``redis_client``, or a client swapped in later)."""
        conn = self.conn
        if conn is self._wire_client and type(conn) is FailoverAwareRedis:
            return self._wire
        return None

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
        """``host:port`` (or the socket path) this storage connects to, for messages."""
        kwargs = self.pool.connection_kwargs
        if 'path' in kwargs:
            return kwargs['path']
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"

    def close(self):
        # Idle connections only: a forked worker must not share sockets with its parent.
        self.pool.disconnect(inuse_connections=False)

    # Queue -------------------------------------------------------------------------------

    def enqueue(self, data, priority=None):
        if priority:
            raise NotImplementedError('Task priorities are not supported by this storage.')
        wire = self._fast()
        if wire is None:
            self.conn.lpush(self.queue_key, data)
        else:
            wire.one(b'LPUSH', self.queue_key, data)

    def enqueue_many(self, items):
        """Enqueue ``(data, priority)`` pairs in order, with one LPUSH."""
        if any(priority for _, priority in items):
            raise NotImplementedError('Task priorities are not supported by this storage.')
        if items:
            wire = self._fast()
            if wire is None:
                self.conn.lpush(self.queue_key, *(data for data, _ in items))
            else:
                wire.one(b'LPUSH', self.queue_key, *(data for data, _ in items))

    def dequeue(self):
        # Connection errors propagate (as in huey): the worker logs them and backs off.
        wire = self._fast()
        if self.blocking:
            try:
                if wire is None:
                    return self.conn.brpop(self.queue_key, timeout=self.read_timeout)[1]
                return wire.one(b'BRPOP', self.queue_key, self.read_timeout)[1]
            except (RedisTimeoutError, TypeError, IndexError):
                return None  # BRPOP timed out: the queue is empty.
        if wire is None:
            return self.conn.rpop(self.queue_key)
        return wire.one(b'RPOP', self.queue_key)

    def _peek_args(self):
        return [self.queue_key, self.result_key], ['1' if self._queue_is_zset else '0',
                                                   self._member_offset, 'h', '']

    def dequeue_peek(self, timeout=None):
        """The next message and the revocation flags stored for its task, read by one
        script (DEQUEUE_PEEK_LUA): ``(data, ([key, key], {key: value}))``, or ``(data,
        None)`` when the script could not read the task's id and name; None when nothing
        arrived. When the queue is empty this waits as ``dequeue`` (``timeout`` None) or
        ``dequeue_wait`` do."""
        wire = self._fast()
        reply = None
        if wire is not None:
            keys, args = self._peek_args()
            try:
                reply = wire.one(b'EVALSHA', self._dequeue_peek.sha, 2, *keys, *args)
            except NoScriptError:
                self._dequeue_peek.sha = self.conn.script_load(DEQUEUE_PEEK_LUA)
                reply = wire.one(b'EVALSHA', self._dequeue_peek.sha, 2, *keys, *args)
        elif timeout is None:
            data = self.dequeue()
            return None if data is None else (data, None)
        if reply:
            data = reply[0][self._member_offset:]
            if len(reply) < 5:
                return data, None
            flags = [_text(reply[1]), _text(reply[3])]
            return data, (flags, {key: value for key, value in zip(flags, reply[2::2])
                                  if value is not None})
        if timeout is None:
            data = self.dequeue() if self.blocking else None
        else:
            data = self.dequeue_wait(timeout)
        return None if data is None else (data, None)

    def _pop_blocking(self, timeout):
        """One blocking pop of up to ``timeout`` seconds; None when nothing arrived."""
        item = self.conn.brpop(self.queue_key, timeout=timeout)
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
                    data = self._pop_blocking(self._server_timeout(remaining))
            except RedisTimeoutError:
                return None  # A socket timeout shorter than the wait: nothing arrived.
            except RedisConnectionError as exc:
                self._failures += 1
                delay = min(_RETRY_MIN * 2 ** (self._failures - 1), _RETRY_MAX)
                logger.warning('Redis at %s unreachable while dequeueing (attempt %d): %s; '
                               'retrying in %.2fs', self.server_address, self._failures, exc,
                               delay)
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

    def _server_timeout(self, seconds):
        if self._integer_timeouts:
            return max(1, math.ceil(seconds))
        # 0 means "forever" to Redis, so never round a short wait down to it.
        return max(round(seconds, 3), 0.001)

    def queue_size(self):
        return self.conn.llen(self.queue_key)

    def enqueued_items(self, limit=None):
        if limit:
            # The next ``limit`` messages to be dequeued sit at the list's tail.
            return self.conn.lrange(self.queue_key, -limit, -1)[::-1]
        return self.conn.lrange(self.queue_key, 0, -1)[::-1]

    def flush_queue(self):
        self.conn.delete(self.queue_key)

    # Reliable delivery -------------------------------------------------------------------

    _queue_is_zset = False
    _member_offset = 0  # Bytes of queue-member prefix before the message data.
    reliable_poll_max = 0.05  # Longest sleep between pops while waiting for a message.

    def _reliable_keys(self):
        return [self.queue_key, self.inflight_key, self.lease_key, self.inflight_meta_key,
                self.redelivery_key]

    def dequeue_reliable(self, consumer, token, lease, timeout=None):
        """Move the next message into the in-flight hash under ``token`` (one Lua script);
        returns ``(data, deliveries)`` or None. When the queue is empty, waits up to
        ``timeout`` seconds: blocking on the server for list queues (``_wait_reliable``),
        polling (1 ms growing to ``reliable_poll_max``) for sorted sets, which have no
        blocking move."""
        deadline = time.monotonic() + (timeout or 0)
        delay = 0.001
        while True:
            got = self._reliable_pop(
                keys=self._reliable_keys(),
                args=[token, time.time() + lease, consumer, '1' if self._queue_is_zset else '0'])
            if got:
                return bytes(got[0][self._member_offset:]), int(got[1])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not self._queue_is_zset:
                got = self._wait_reliable(consumer, token, lease, remaining)
                if got:
                    return bytes(got[0]), int(got[1])
                if deadline - time.monotonic() <= 0:
                    return None
                continue
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, self.reliable_poll_max)

    def _staging_key(self, token):
        return f'{self.staging_prefix}{token}'

    def _wait_reliable(self, consumer, token, lease, timeout):
        """Block up to ``timeout`` seconds for a message: a lease is registered for
        ``token`` first, so if this process dies once BRPOPLPUSH has moved a message into
        the token's staging list, recovery puts it back; then RELIABLE_ADOPT_LUA makes it
        in flight. Returns what the adoption returned, or None."""
        staging = self._staging_key(token)
        wait = self._server_timeout(timeout)
        self.conn.zadd(self.lease_key, {token: time.time() + lease + wait})
        try:
            moved = self.conn.brpoplpush(self.queue_key, staging, timeout=wait)
        except RedisTimeoutError:
            moved = None
        if moved is None:
            self.conn.zrem(self.lease_key, token)
            return None
        return self._reliable_adopt(
            keys=[staging, self.inflight_key, self.lease_key, self.inflight_meta_key,
                  self.redelivery_key],
            args=[token, time.time() + lease, consumer])

    def renew_leases(self, tokens, lease):
        """Extend the leases of ``tokens`` (one ZADD XX per 500); returns how many are
        still in flight."""
        tokens = list(tokens)
        until = time.time() + lease
        renewed = 0
        for i in range(0, len(tokens), 500):
            mapping = dict.fromkeys(tokens[i:i + 500], until)
            renewed += self.conn.zadd(self.lease_key, mapping, xx=True, ch=True)
        return renewed

    def ack(self, token):
        """Remove the in-flight entry ``token``; False when it was already recovered."""
        return bool(self._reliable_ack(
            keys=[self.lease_key, self.inflight_key, self.inflight_meta_key], args=[token]))

    def recover_expired(self, max_deliveries, now=None):
        """Put in-flight entries whose lease expired back in the queue (one script, up to
        1000 per call); at ``max_deliveries`` the same script moves them into the
        dead-letter queue. Returns ``(requeued, [(None, deliveries, letter_id)])``."""
        now = time.time() if now is None else now
        reason = over_cap_reason('%d', max_deliveries)
        moved, dead = self._reliable_recover(
            keys=[self.lease_key, self.inflight_key, self.inflight_meta_key, self.queue_key,
                  self.redelivery_key, self.dead_seq_key, self.dead_key, self.dead_index_key],
            args=[now, max_deliveries, '1' if self._queue_is_zset else '0', self.staging_prefix,
                  self._member_offset, reason, time.time()])
        return int(moved), [(None, int(dead[i + 1]), _text(str(dead[i])))
                            for i in range(0, len(dead), 2)]

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
            member, meta, staged = replies[3 * i:3 * i + 3]
            if member is not None:
                meta = (meta or b'1 0 ?').split(b' ', 2)
                items.append((_text(token), _text(meta[2]), int(meta[0]), until,
                              member[self._member_offset:]))
            elif staged is not None:
                items.append((_text(token), '?', 0, until, staged))
        return items

    def move_due_to_queue(self, ts, priority_of=None):
        """Move every schedule entry due at ``ts`` into the queue in one Lua script, so no
        crash can leave a task in neither; returns the moved messages."""
        return self._schedule_move(keys=[self.schedule_key, self.queue_key],
                                   args=[self.convert_ts(ts)])


    # Schedule ----------------------------------------------------------------------------

    def add_to_schedule(self, data, ts):
        self.conn.zadd(self.schedule_key, {data: self.convert_ts(ts)})

    def read_schedule(self, ts):
        due = self._pop(keys=[self.schedule_key], args=[self.convert_ts(ts)])
        return [] if due is None else due

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
        notify = is_result and self.notify_result
        wire = self._fast()
        if wire is not None:
            commands = [pack(b'HSET', self.result_key, key, value)]
            if notify:
                commands.extend(self._notify_commands(key))
            wire.call(*commands)
        elif notify:
            pipe = self.conn.pipeline(transaction=False)
            pipe.hset(self.result_key, key, value)
            self._queue_notify(pipe, key)
            pipe.execute()
        else:
            self.conn.hset(self.result_key, key, value)

    def _notify_commands(self, key):
        notify_key = self.notify_prefix + _text(key)
        return (pack(b'LPUSH', notify_key, b'1'),
                pack(b'EXPIRE', notify_key, self.notify_result_ttl))

    def delete_and_put(self, delete_key, key, value, is_result=False):
        wire = self._fast()
        if wire is None:
            pipe = self.conn.pipeline(transaction=False)
            pipe.hdel(self.result_key, delete_key)
            pipe.hset(self.result_key, key, value)
            if is_result and self.notify_result:
                self._queue_notify(pipe, key)
            pipe.execute()
            return
        commands = [pack(b'HDEL', self.result_key, delete_key),
                    pack(b'HSET', self.result_key, key, value)]
        if is_result and self.notify_result:
            commands.extend(self._notify_commands(key))
        wire.call(*commands)

    def peek_data(self, key):
        value = self.conn.hget(self.result_key, key)
        return EmptyData if value is None else value

    def peek_many(self, keys):
        keys = list(keys)
        if not keys:
            return {}
        wire = self._fast()
        if wire is None:
            values = self.conn.hmget(self.result_key, keys)
        else:
            values = wire.one(b'HMGET', self.result_key, *keys)
        return {k: v for k, v in zip(keys, values) if v is not None}

    def pop_data(self, key):
        wire = self._fast()
        if wire is None:
            pipe = self.conn.pipeline()
            pipe.hget(self.result_key, key)
            pipe.hdel(self.result_key, key)
            value, _ = pipe.execute()
        else:
            value = wire.call(pack(b'MULTI'), pack(b'HGET', self.result_key, key),
                              pack(b'HDEL', self.result_key, key), pack(b'EXEC'))[3][0]
        return EmptyData if value is None else value

    def delete_data(self, key):
        return self.conn.hdel(self.result_key, key) != 0

    def has_data_for_key(self, key):
        wire = self._fast()
        if wire is None:
            return bool(self.conn.hexists(self.result_key, key))
        return bool(wire.one(b'HEXISTS', self.result_key, key))

    def wait_result(self, key, timeout=None, backoff=1.15, max_delay=1.0):
        """With ``notify_result`` block on the key's notify list instead of polling."""
        if not self.notify_result:
            return super().wait_result(key, timeout, backoff, max_delay)
        if self.has_data_for_key(key):
            return True
        notify_key = self.notify_prefix + _text(key)
        wire = self._fast()
        try:
            if wire is None:
                woken = self.conn.blpop(notify_key, timeout=timeout or 0)
            else:
                woken = wire.one(b'BLPOP', notify_key, timeout or 0)
        except (RedisConnectionError, RedisTimeoutError):
            return False
        if woken is not None:
            # Notifications left over (a result stored twice) would wake the next waiter
            # on this key for nothing.
            if wire is None:
                self.conn.delete(notify_key)
            else:
                wire.one(b'DEL', notify_key)
            return True
        return self.has_data_for_key(key)

    def put_if_empty(self, key, value, ttl=None):
        if ttl is not None and not self.supports_hash_ttl:
            raise NotImplementedError('ttl requires hash-field TTL support '
                                      '(redis 7.4+ or valkey 9+).')
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
        reason = str(reason).encode('utf8', 'replace')
        record = _DEAD_HEADER.pack(time.time(), int(deliveries), len(reason)) + reason + data
        id = self._dead_put(keys=[self.dead_seq_key, self.dead_key, self.dead_index_key],
                            args=[record])
        return str(id)

    @staticmethod
    def _letter(id, record):
        when, deliveries, length = _DEAD_HEADER.unpack_from(record)
        start = _DEAD_HEADER.size
        reason = record[start:start + length].decode('utf8', 'replace')
        return dead_letter(_text(id), record[start + length:], reason, when, deliveries)

    def dead_letters(self, limit=None):
        limit = check_limit(limit)
        if limit == 0:
            return []
        ids = self.conn.zrange(self.dead_index_key, 0, -1 if limit is None else limit - 1)
        if not ids:
            return []
        records = self.conn.hmget(self.dead_key, ids)
        # A letter popped between the two reads is simply not listed.
        return [self._letter(id, record) for id, record in zip(ids, records)
                if record is not None]

    def pop_dead_letter(self, id):
        record = self._dead_pop(keys=[self.dead_key, self.dead_index_key], args=[str(id)])
        return None if record is None else self._letter(str(id), record)

    def flush_dead_letters(self):
        self.conn.delete(self.dead_key, self.dead_index_key)

    def dead_letter_count(self):
        return self.conn.hlen(self.dead_key)


class RedisExpireStorage(RedisStorage):
    """Results and counters as plain keys with a TTL, so unread results expire by themselves.

    Reads are not destructive (``pop_data`` is ``peek_data``): Redis removes results when
    ``expire_time`` passes. Values stored with ``is_result=False`` (revocations, locks)
    never expire.
    """

    def __init__(self, name='huey', expire_time=86400, *args, **kwargs):
        super().__init__(name, *args, **kwargs)
        # RedisStorage set result_key/counter_key to hash names; here they are the methods
        # below that build one key per entry.
        del self.result_key, self.counter_key
        self._expire_time = expire_time
        self.result_prefix = b'huey.r.%s.' % self.name.encode('utf8')
        self.counter_prefix = b'huey.c.%s.' % self.name.encode('utf8')

    def result_key(self, key):
        return self.result_prefix + (key if isinstance(key, bytes) else key.encode('utf8'))

    def counter_key(self, key):
        return self.counter_prefix + (key if isinstance(key, bytes) else key.encode('utf8'))

    def put_data(self, key, value, is_result=False):
        wire = self._fast()
        if wire is not None:
            if not is_result:
                wire.one(b'SET', self.result_key(key), value)
                return
            commands = [pack(b'SET', self.result_key(key), value, b'EX', self._expire_time)]
            if self.notify_result:
                commands.extend(self._notify_commands(key))
            wire.call(*commands)
            return
        if not is_result:
            self.conn.set(self.result_key(key), value)
            return
        if self.notify_result:
            pipe = self.conn.pipeline(transaction=False)
            pipe.set(self.result_key(key), value, ex=self._expire_time)
            self._queue_notify(pipe, key)
            pipe.execute()
        else:
            self.conn.set(self.result_key(key), value, ex=self._expire_time)

    def _peek_args(self):
        return [self.queue_key, self.queue_key], ['1' if self._queue_is_zset else '0',
                                                  self._member_offset, 'k', self.result_prefix]

    def delete_and_put(self, delete_key, key, value, is_result=False):
        wire = self._fast()
        if wire is None:
            pipe = self.conn.pipeline(transaction=False)
            pipe.delete(self.result_key(delete_key))
            pipe.set(self.result_key(key), value, ex=self._expire_time if is_result else None)
            if is_result and self.notify_result:
                self._queue_notify(pipe, key)
            pipe.execute()
            return
        put = (pack(b'SET', self.result_key(key), value, b'EX', self._expire_time) if is_result
               else pack(b'SET', self.result_key(key), value))
        commands = [pack(b'DEL', self.result_key(delete_key)), put]
        if is_result and self.notify_result:
            commands.extend(self._notify_commands(key))
        wire.call(*commands)

    def peek_data(self, key):
        value = self.conn.get(self.result_key(key))
        return EmptyData if value is None else value

    def peek_many(self, keys):
        keys = list(keys)
        if not keys:
            return {}
        wire = self._fast()
        if wire is None:
            values = self.conn.mget([self.result_key(k) for k in keys])
        else:
            values = wire.one(b'MGET', *(self.result_key(k) for k in keys))
        return {k: v for k, v in zip(keys, values) if v is not None}

    pop_data = peek_data  # Expiry, not reading, removes results.

    def delete_data(self, key):
        return self.conn.delete(self.result_key(key)) != 0

    def has_data_for_key(self, key):
        return self.conn.exists(self.result_key(key)) != 0

    def put_if_empty(self, key, value, ttl=None):
        return bool(self.conn.set(self.result_key(key), value, nx=True, ex=ttl))

    def incr(self, key, amount=1):
        pipe = self.conn.pipeline()
        pipe.incr(self.counter_key(key), amount)
        pipe.expire(self.counter_key(key), self._expire_time)
        return pipe.execute()[0]

    def delete_counter(self, key):
        self.conn.delete(self.counter_key(key))

    def _keys(self, prefix):
        return list(self.conn.scan_iter(match=_glob_escape(prefix) + b'*', count=1000))

    def result_store_size(self):
        return len(self._keys(self.result_prefix))

    def result_items(self):
        keys = self._keys(self.result_prefix)
        if not keys:
            return {}
        start = len(self.result_prefix)
        return {k[start:].decode('utf8'): v
                for k, v in zip(keys, self.conn.mget(keys)) if v is not None}

    def flush_results(self):
        keys = self._keys(self.result_prefix)
        if keys:
            self.conn.delete(*keys)

    def flush_counters(self):
        keys = self._keys(self.counter_prefix)
        if keys:
            self.conn.delete(*keys)


class RedisPriorityQueue:
    """Mixin: the queue as a sorted set so higher priorities are dequeued first (Redis >= 5).

    Members are prefixed with the enqueue time in microseconds (8 bytes, big-endian), so
    equal priorities dequeue in FIFO order and equal payloads stay distinct members.
    """

    priority = True
    _last_prefix = 0

    def _member(self, data):
        # Strictly increasing within this process, so two identical payloads enqueued in the
        # same microsecond never collapse into one member.
        stamp = max(int(time.time() * 1e6), self._last_prefix + 1)
        self._last_prefix = stamp
        return struct.pack('>Q', stamp) + data

    def _needs_redis_5(self, exc):
        if 'unknown command' not in str(exc).lower():
            raise exc
        raise ConfigurationError(
            f'{type(self).__name__} needs Redis >= 5.0 (ZPOPMIN/BZPOPMIN); the server at '
            f'{self.server_address} does not support them: {exc}') from exc

    def enqueue(self, data, priority=None):
        score = 0 if priority is None else -priority
        wire = self._fast()
        if wire is None:
            self.conn.zadd(self.queue_key, {self._member(data): score})
        else:
            wire.one(b'ZADD', self.queue_key, score, self._member(data))

    def enqueue_many(self, items):
        """Enqueue ``(data, priority)`` pairs in order, with one ZADD."""
        if items:
            self.conn.zadd(self.queue_key, {
                self._member(data): 0 if priority is None else -priority
                for data, priority in items})

    def dequeue(self):
        try:
            if self.blocking:
                try:
                    item = self.conn.bzpopmin(self.queue_key, timeout=self.read_timeout)
                except RedisTimeoutError:
                    return None
                return None if item is None else item[1][8:]
            return self._pop_now()
        except ResponseError as exc:
            self._needs_redis_5(exc)

    def _pop_blocking(self, timeout):
        try:
            item = self.conn.bzpopmin(self.queue_key, timeout=timeout)
        except ResponseError as exc:
            if 'timeout' in str(exc):
                raise
            self._needs_redis_5(exc)
        return None if item is None else item[1][8:]

    def _pop_now(self):
        try:
            items = self.conn.zpopmin(self.queue_key, count=1)
        except ResponseError as exc:
            self._needs_redis_5(exc)
        return items[0][0][8:] if items else None

    _queue_is_zset = True
    _member_offset = 8

    def move_due_to_queue(self, ts, priority_of=None):
        """Move due schedule entries into the sorted-set queue with their priorities: read
        them, then one script moves those still scheduled (a crash in between moves
        nothing); returns the moved messages."""
        due = self.conn.zrangebyscore(self.schedule_key, '-inf', self.convert_ts(ts))
        if not due:
            return []
        args = []
        for data in due:
            priority = (priority_of(data) if priority_of else 0) or 0
            args.extend((data, self._member(data), -priority))
        return self._schedule_move_priority(keys=[self.schedule_key, self.queue_key],
                                            args=args)

    def queue_size(self):
        return self.conn.zcard(self.queue_key)

    def enqueued_items(self, limit=None):
        members = self.conn.zrange(self.queue_key, 0, limit - 1 if limit else -1)
        return [member[8:] for member in members]


class PriorityRedisStorage(RedisPriorityQueue, RedisStorage):
    """RedisStorage with task priorities (sorted-set queue)."""


class PriorityRedisExpireStorage(RedisPriorityQueue, RedisExpireStorage):
    """RedisExpireStorage with task priorities (sorted-set queue)."""
