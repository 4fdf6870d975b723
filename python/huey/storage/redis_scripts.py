"""The Lua scripts of the Redis storages, one per purpose.

Each script declares every key it touches in KEYS (so it runs on Redis Cluster, where all of
one storage's keys share a hash slot) and moves bytes without reading them: no script parses
a message. The storages register them with ``register_script``.
"""

# Pops every schedule entry due at ARGV[1], in score order, in one atomic step.
# KEYS: schedule. ARGV: max score (unix time).
SCHEDULE_POP = """\
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #due > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #due - 1)
end
return due
"""

# Moves the schedule entries the scheduler has read and signalled into the queue (see
# RedisStorage.move_due_to_queue): entries another scheduler (or huey 3.5.4's) took meanwhile
# are skipped, and the scheduler's move lock is extended while it still holds it. Returns
# the moved messages.
# KEYS: schedule, queue, move lock. ARGV: lock token, lock ttl (ms), '1' for a sorted-set
# queue, then (message, queue member, score) triples in due order.
SCHEDULE_MOVE = """\
local moved = {}
for i = 4, #ARGV, 3 do
    if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
        if ARGV[3] == '1' then
            redis.call('ZADD', KEYS[2], ARGV[i + 2], ARGV[i + 1])
        else
            redis.call('LPUSH', KEYS[2], ARGV[i + 1])
        end
        table.insert(moved, ARGV[i])
    end
end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
return moved
"""

# Releases the schedule move lock if the caller still holds it. KEYS: lock. ARGV: token.
SCHEDULE_UNLOCK = """\
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# The consumer's result write (``delete_and_put``): one field of the results hash goes (the
# task's revocation flag), another is set (its result), and with ``notify_result`` a waiter
# is woken. One script rather than a pipeline: the same round trip, less client work.
# KEYS: results hash, notify list. ARGV[1..5]: field to delete, '1' to set the next two ('0'
# to only delete), field, value, notify list TTL in seconds ('0': no notification).
_REPLACE = """\
local function replace()
    redis.call('HDEL', KEYS[1], ARGV[1])
    if ARGV[2] == '1' then
        redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
        if ARGV[5] ~= '0' then
            redis.call('LPUSH', KEYS[2], '1')
            redis.call('EXPIRE', KEYS[2], ARGV[5])
        end
    end
end
"""

# The result write, then other fields may be read (``delete_put_and_peek``: the next task's
# revocation flags, in the same round trip). ARGV: _REPLACE's five, then the fields to read.
# Returns their values (false where unset).
HASH_REPLACE = (
    _REPLACE
    + """\
replace()
if #ARGV < 6 then return {} end
return redis.call('HMGET', KEYS[1], unpack(ARGV, 6))
"""
)

# A reliable run's fence and result write (``renew_delete_and_put``): when the delivery's
# lease is still there its lease is renewed and the write is made; else nothing.
# KEYS: results hash, notify list, lease. ARGV: _REPLACE's five, token, lease end.
# Returns 1 when the write was made, 0 when the delivery had been recovered.
RELIABLE_FINISH = (
    _REPLACE
    + """\
if not redis.call('ZSCORE', KEYS[3], ARGV[6]) then return 0 end
redis.call('ZADD', KEYS[3], 'XX', ARGV[7], ARGV[6])
replace()
return 1
"""
)

# HASH_REPLACE for RedisExpireStorage, whose values are plain keys.
# KEYS: key to delete, key to set, notify list. ARGV: value, TTL in seconds ('0': none),
# notify list TTL ('0': no notification).
KEY_REPLACE = """\
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '0' then
    redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
else
    redis.call('SET', KEYS[2], ARGV[1])
end
if ARGV[3] ~= '0' then
    redis.call('LPUSH', KEYS[3], '1')
    redis.call('EXPIRE', KEYS[3], ARGV[3])
end
"""

# Reads and removes one field of the results hash (a result fetched by its waiter), in one
# atomic step. KEYS: results hash. ARGV: field. Returns the value or false.
HASH_POP = """\
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value then redis.call('HDEL', KEYS[1], ARGV[1]) end
return value
"""

# Pops up to ARGV[1] messages from the list queue's dequeue end, oldest first, in one atomic
# step (RPOP's count argument needs Redis 6.2). KEYS: queue. ARGV: count. Returns a list.
QUEUE_POP_MANY = """\
local popped = {}
for i = 1, tonumber(ARGV[1]) do
    local data = redis.call('RPOP', KEYS[1])
    if not data then break end
    popped[i] = data
end
return popped
"""

# Sets a message aside under the next dead-letter id; returns the id.
# KEYS: dead seq, dead hash, dead index. ARGV: record (header + reason + message).
DEAD_PUT = """\
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], id, ARGV[1])
redis.call('ZADD', KEYS[3], id, id)
return id
"""

# Removes and returns one dead letter's record (false when there is none).
# KEYS: dead hash, dead index. ARGV: id.
DEAD_POP = """\
local record = redis.call('HGET', KEYS[1], ARGV[1])
if record then
    redis.call('HDEL', KEYS[1], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
end
return record
"""

# The two reliable takes (RELIABLE_POP, RELIABLE_ADOPT) share their keys and these steps.
# KEYS: (queue or staging list), inflight, lease, meta, redelivery.
# held(token): a token already in flight gets its member back (a call resent after a lost
# reply must not take a second message): {member, deliveries}, or nil.
# take(token, member, score, lease end, consumer): puts ``member`` in flight under ``token``
# with a lease; the entry's meta keeps the deliveries charged so far (RELIABLE_START charges
# this one when its task starts). Returns {member, deliveries counting this one}, or {member,
# 0, bad count} when the redelivery count is unreadable (the caller sets the message aside).
_TAKE = """\
local function held(token)
    local member = redis.call('HGET', KEYS[2], token)
    if not member then return nil end
    local charged = tonumber(string.match(redis.call('HGET', KEYS[4], token) or '0', '^%d+'))
    return {member, (charged or 0) + 1}
end
local function take(token, member, score, lease_end, consumer)
    redis.call('HSET', KEYS[2], token, member)
    redis.call('ZADD', KEYS[3], lease_end, token)
    local before = redis.call('HGET', KEYS[5], member)
    if before then redis.call('HDEL', KEYS[5], member) end
    local charged = tonumber(before or '0')
    local bad = not charged or charged < 0 or charged % 1 ~= 0
    if bad then charged = 0 end
    redis.call('HSET', KEYS[4], token, charged .. ' ' .. score .. ' ' .. consumer)
    if bad then return {member, 0, before} end
    return {member, charged + 1}
end
"""

# Reliable delivery: moves up to one queue member per token into the in-flight hash under
# that token, with a lease, in queue order. Returns one reply of take() per token that got a
# message, in token order (fewer than the tokens when the queue ran out).
# KEYS: queue, inflight, lease, meta, redelivery.
# ARGV: lease end (unix time), consumer, '1' for a sorted-set queue, then the tokens.
RELIABLE_POP = (
    _TAKE
    + """\
local taken = {}
for i = 4, #ARGV do
    local entry = held(ARGV[i])
    if not entry then
        local member, score
        if ARGV[3] == '1' then
            local popped = redis.call('ZPOPMIN', KEYS[1])
            if #popped == 0 then break end
            member, score = popped[1], popped[2]
        else
            member = redis.call('RPOP', KEYS[1])
            if not member then break end
            score = '0'
        end
        entry = take(ARGV[i], member, score, ARGV[1], ARGV[2])
    end
    taken[#taken + 1] = entry
end
return taken
"""
)

# A blocking reliable pop (list queues): BRPOPLPUSH moved the next message into the token's
# staging list (under a lease registered first); this adopts it into the in-flight hash as
# RELIABLE_POP does. Returns take()'s reply, or false.
# KEYS: staging list, inflight, lease, meta, redelivery. ARGV: token, lease end, consumer.
RELIABLE_ADOPT = (
    _TAKE
    + """\
local entry = held(ARGV[1])
if entry then return entry end
local member = redis.call('RPOP', KEYS[1])
if not member then return false end
return take(ARGV[1], member, '0', ARGV[2], ARGV[3])
"""
)

# The end and the start of a delivery. KEYS: lease, inflight, meta, results hash.
# ack(token): its in-flight entry, lease and meta go; 1 when it was still in flight, 0 when
# a recovery took it first.
# start(token, first): the task of in-flight entry ``token`` starts: its delivery is charged;
# then, when it was still in flight, the fields ARGV[first..] are read (the task's
# revocation flags, ``start_and_peek``). Returns {1 or 0 (the entry is gone), the fields'
# values (false where unset)...}.
_ACK_START = """\
local function ack(token)
    local owned = redis.call('HDEL', KEYS[2], token)
    redis.call('ZREM', KEYS[1], token)
    redis.call('HDEL', KEYS[3], token)
    return owned
end
local function start(token, first)
    local meta = redis.call('HGET', KEYS[3], token)
    if not meta then return {0} end
    local charged, rest = string.match(meta, '^(%d+)( .*)$')
    if charged then
        redis.call('HSET', KEYS[3], token, (tonumber(charged) + 1) .. rest)
    end
    if #ARGV < first then return {1} end
    local values = redis.call('HMGET', KEYS[4], unpack(ARGV, first))
    table.insert(values, 1, 1)
    return values
end
"""

# ARGV: token. Returns ack()'s reply.
RELIABLE_ACK = _ACK_START + 'return ack(ARGV[1])\n'

# ARGV: token, then the fields to read. Returns start()'s reply.
RELIABLE_START = _ACK_START + 'return start(ARGV[1], 2)\n'

# One worker's ack of the task it finished and the start of its next, taken ahead from the
# prefetch buffer (``ack_and_start``). ARGV: token to ack, token to start, then the fields to
# read. Returns {ack()'s reply, start()'s reply...}.
RELIABLE_ACK_START = (
    _ACK_START
    + """\
local reply = start(ARGV[2], 3)
table.insert(reply, 1, ack(ARGV[1]))
return reply
"""
)

# Recovers the given tokens whose lease has expired (the caller read them with ZRANGEBYSCORE;
# a token renewed or recovered since is skipped). A message goes back to the queue with its
# delivery count remembered or, at the cap, into the dead-letter queue in the same step, so
# no crash leaves it in neither. A token with no in-flight entry may still hold a message in
# its staging list (its consumer died between the blocking move and the adoption): that
# message goes back to the queue uncounted. Returns {requeued, {id, deliveries, ...}}.
# KEYS: lease, inflight, meta, queue, redelivery, dead seq, dead hash, dead index, then one
# staging list per token. ARGV: now, cap, '1' for a sorted-set queue, member prefix length,
# reason format (one %d), dead-letter time, then the tokens (in KEYS' staging order).
RELIABLE_RECOVER = """\
local function set_aside(member, count, reason)
    local data = string.sub(member, tonumber(ARGV[4]) + 1)
    local id = redis.call('INCR', KEYS[6])
    redis.call('HSET', KEYS[7], id,
               struct.pack('>dI4I4', tonumber(ARGV[6]), count, #reason) .. reason .. data)
    redis.call('ZADD', KEYS[8], id, id)
    return id
end
local dead, bad, moved = {}, {}, 0
for i = 7, #ARGV do
    local token = ARGV[i]
    local lease = redis.call('ZSCORE', KEYS[1], token)
    if lease and tonumber(lease) < tonumber(ARGV[1]) then
        local member = redis.call('HGET', KEYS[2], token)
        local meta = redis.call('HGET', KEYS[3], token) or '1 0'
        redis.call('ZREM', KEYS[1], token)
        redis.call('HDEL', KEYS[2], token)
        redis.call('HDEL', KEYS[3], token)
        if member then
            local count, score = string.match(meta, '^(%d+) (%S+)')
            count = tonumber(count)
            local priority = tonumber(score)
            -- Checked before any write below: a failing command would stop the script halfway.
            if not count or count > 4294967295
                    or (ARGV[3] == '1' and (not priority or priority ~= priority)) then
                local reason = 'unusable in-flight entry ' .. token .. ': its meta '
                    .. string.format('%q', meta) .. ' is not "deliveries priority consumer"'
                table.insert(bad, set_aside(member, 0, reason))
                table.insert(bad, reason)
            elseif count >= tonumber(ARGV[2]) then
                table.insert(dead, set_aside(member, count, string.format(ARGV[5], count)))
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
            local staged = redis.call('RPOP', KEYS[i + 2])
            if staged then
                redis.call('RPUSH', KEYS[4], staged)
                moved = moved + 1
            end
        end
    end
end
return {moved, dead, bad}
"""


class Scripts:
    """The scripts above as redis-py ``Script`` objects (EVALSHA, loaded again when the
    server lost them); call one with ``client=`` the client to run it on."""

    def __init__(self, client):
        self.schedule_pop = client.register_script(SCHEDULE_POP)
        self.schedule_move = client.register_script(SCHEDULE_MOVE)
        self.schedule_unlock = client.register_script(SCHEDULE_UNLOCK)
        self.hash_replace = client.register_script(HASH_REPLACE)
        self.key_replace = client.register_script(KEY_REPLACE)
        self.hash_pop = client.register_script(HASH_POP)
        self.queue_pop_many = client.register_script(QUEUE_POP_MANY)
        self.dead_put = client.register_script(DEAD_PUT)
        self.dead_pop = client.register_script(DEAD_POP)
        self.reliable_pop = client.register_script(RELIABLE_POP)
        self.reliable_adopt = client.register_script(RELIABLE_ADOPT)
        self.reliable_ack = client.register_script(RELIABLE_ACK)
        self.reliable_start = client.register_script(RELIABLE_START)
        self.reliable_ack_start = client.register_script(RELIABLE_ACK_START)
        self.reliable_finish = client.register_script(RELIABLE_FINISH)
        self.reliable_recover = client.register_script(RELIABLE_RECOVER)
