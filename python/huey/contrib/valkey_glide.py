"""ValkeyGlideHuey and ValkeyGlideStorage: the Redis layout through the Valkey GLIDE client.

Install with ``pip install huey-rs[valkey]`` (the ``valkey-glide-sync`` package). The server
is Valkey or Redis. The keys are those of huey's RedisStorage, so RedisHuey, huey 3.5.4's
ValkeyGlideHuey and this one share a queue, results and counters; as in huey 3.5.4 the
schedule's members are the messages in base64 (so a RedisHuey must not read a schedule a
ValkeyGlideHuey writes, and the other way round)::

    huey.redis.{name}        LIST   queue: LPUSH to enqueue, RPOP to dequeue
    huey.schedule.{name}     ZSET   member = base64 of the message, score = eta (unix time of
                                    the naive datetime, as RedisStorage)
    huey.results.{name}      HASH   key -> value
    huey.counters.{name}     HASH   key -> integer
    huey.dead.{name}, huey.dead.index.{name}, huey.dead.seq.{name}
                                    dead letters, laid out as in RedisStorage

A GLIDE client multiplexes every thread's commands over one connection, so a blocking pop
would hold up all of them: dequeues do not block (``blocking=True`` is refused, as in huey)
and an idle consumer polls with backoff. There are no priorities (``PriorityRedisHuey``
has them) and no reliable mode.
"""

import base64
import os
import threading

from huey.api import RedisHuey
from huey.constants import EmptyData
from huey.exceptions import ConfigurationError
from huey.storage.base import BaseStorage, check_limit
from huey.storage.redis import RedisStorage
from huey.storage.redis_scripts import DEAD_POP, DEAD_PUT, SCHEDULE_POP

try:
    from glide_sync import (
        Batch,
        GlideClient,
        GlideClientConfiguration,
        NodeAddress,
        RangeByIndex,
        Script,
    )
except ImportError as exc:
    raise ImportError(
        'huey.contrib.valkey_glide needs valkey-glide-sync: run "pip install '
        'huey-rs[valkey]" (or "pip install valkey-glide-sync") to install it.'
    ) from exc

# Values per LPUSH when enqueueing many messages at once.
_CHUNK = 1000


class ValkeyGlideStorage(BaseStorage):
    """huey's Redis layout on a ``glide_sync.GlideClient``.

    Give one of ``client`` (a GlideClient), ``client_config`` (a GlideClientConfiguration)
    or ``host``/``port`` (default 127.0.0.1:6379) plus GlideClientConfiguration keyword
    arguments (``database_id``, ``credentials``, ``use_tls``, ``request_timeout``, ...).
    A client this storage created is closed by ``close()`` and opened again on next use
    (and in a forked worker process); a ``client`` passed in is the caller's to close.
    """

    priority = False
    blocking = False

    def __init__(
        self,
        name='huey',
        blocking=False,
        read_timeout=1,
        client=None,
        client_config=None,
        host=None,
        port=None,
        client_name=None,
        clean_name=True,
        **client_config_params,
    ):
        choices = (('client', client), ('client_config', client_config), ('host', host))
        given = [label for label, value in choices if value]
        if len(given) > 1:
            raise ConfigurationError(
                'Specify only one of the following: "client", "client_config" or "host" '
                f'(got {", ".join(given)})'
            )
        if blocking:
            raise ConfigurationError(
                "ValkeyGlideStorage cannot block: a GLIDE client sends every thread's "
                'commands over one connection, which a blocking pop would hold up. Use '
                'blocking=False (the default); idle consumers poll.'
            )
        built = client is None and client_config is None
        if built:
            client_config = GlideClientConfiguration(
                [NodeAddress(host or '127.0.0.1', port or 6379)],
                client_name=client_name,
                **client_config_params,
            )
        elif client_config_params:
            raise ConfigurationError(
                'Client configuration keyword arguments '
                f'({", ".join(sorted(client_config_params))}) only go with host/port, not '
                'with "client" or "client_config".'
            )
        self._config = client_config if client is None else None
        self._client = client
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self.client_name = client_name
        # In a configuration this storage builds; by CLIENT SETNAME on any other client.
        self._name_by_command = client_name is not None and not built
        self.read_timeout = read_timeout
        if client is not None:
            self._set_name(client)

        # RedisStorage's own name cleaning and timestamps, so that both storages use the same
        # keys and schedule scores.
        self.name = RedisStorage.clean_name(self, name) if clean_name else name
        self.queue_key = f'huey.redis.{self.name}'
        self.schedule_key = f'huey.schedule.{self.name}'
        self.result_key = f'huey.results.{self.name}'
        self.counter_key = f'huey.counters.{self.name}'
        self.dead_key = f'huey.dead.{self.name}'
        self.dead_index_key = f'huey.dead.index.{self.name}'
        self.dead_seq_key = f'huey.dead.seq.{self.name}'
        self._schedule_pop = Script(SCHEDULE_POP)
        self._dead_put = Script(DEAD_PUT)
        self._dead_pop = Script(DEAD_POP)
        self.conn  # noqa: B018 - connects now, so a wrong address fails at construction.

    # Connection --------------------------------------------------------------------------

    @property
    def conn(self):
        """The GLIDE client; (re)created on first use, after ``close`` and after a fork."""
        client = self._client
        if client is not None and (self._config is None or self._pid == os.getpid()):
            return client
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                # A client inherited across fork is unusable (its I/O threads stayed in
                # the parent), and closing it could disturb the parent's: just drop it.
                self._client = GlideClient.create(self._config)
                self._pid = os.getpid()
                self._set_name(self._client)
            return self._client

    def _set_name(self, client):
        if self._name_by_command:
            client.custom_command(['CLIENT', 'SETNAME', self.client_name])

    @conn.setter
    def conn(self, client):
        """A client swapped in by the caller (as huey's storages allow)."""
        self._client, self._config = client, None

    def close(self):
        if self._config is None or self._client is None or self._pid != os.getpid():
            return False
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        return client is not None

    def convert_ts(self, ts):
        return RedisStorage.convert_ts(self, ts)

    # Queue -------------------------------------------------------------------------------

    def enqueue(self, data, priority=None):
        if priority:
            raise NotImplementedError('Task priorities are not supported by this storage.')
        self.conn.lpush(self.queue_key, [data])

    def enqueue_many(self, items):
        """LPUSH ``(data, priority)`` pairs in order, a thousand per command."""
        if any(priority for _, priority in items):
            raise NotImplementedError('Task priorities are not supported by this storage.')
        conn = self.conn
        for start in range(0, len(items), _CHUNK):
            conn.lpush(self.queue_key, [data for data, _ in items[start : start + _CHUNK]])

    def dequeue(self):
        return self.conn.rpop(self.queue_key)

    def queue_size(self):
        return self.conn.llen(self.queue_key)

    def enqueued_items(self, limit=None):
        start = -limit if limit else 0
        return self.conn.lrange(self.queue_key, start, -1)[::-1]

    def flush_queue(self):
        self.conn.delete([self.queue_key])

    # Schedule ----------------------------------------------------------------------------

    def add_to_schedule(self, data, ts):
        member = base64.b64encode(data)
        self.conn.zadd(self.schedule_key, {member: self.convert_ts(ts)})

    def read_schedule(self, ts):
        due = self.conn.invoke_script(
            self._schedule_pop, keys=[self.schedule_key], args=[repr(self.convert_ts(ts))]
        )
        return [base64.b64decode(member) for member in due or ()]

    def schedule_size(self):
        return self.conn.zcard(self.schedule_key)

    def scheduled_items(self, limit=None):
        members = self.conn.zrange(self.schedule_key, RangeByIndex(0, limit - 1 if limit else -1))
        return [base64.b64decode(member) for member in members]

    def flush_schedule(self):
        self.conn.delete([self.schedule_key])

    # Results -----------------------------------------------------------------------------

    def _transaction(self, *commands):
        """Run ``(method name, args...)`` commands in one MULTI/EXEC; their replies."""
        batch = Batch(is_atomic=True)
        for name, *args in commands:
            getattr(batch, name)(*args)
        return self.conn.exec(batch, raise_on_error=True)

    def put_data(self, key, value, is_result=False):
        self.conn.hset(self.result_key, {key: value})

    def delete_and_put(self, delete_key, key, value, is_result=False):
        self._transaction(
            ('hdel', self.result_key, [delete_key]), ('hset', self.result_key, {key: value})
        )

    def peek_data(self, key):
        value = self.conn.hget(self.result_key, key)
        return EmptyData if value is None else value

    def peek_many(self, keys):
        keys = list(keys)
        if not keys:
            return {}
        values = self.conn.hmget(self.result_key, keys)
        return {key: value for key, value in zip(keys, values) if value is not None}

    def pop_data(self, key):
        value, _ = self._transaction(
            ('hget', self.result_key, key), ('hdel', self.result_key, [key])
        )
        return EmptyData if value is None else value

    def delete_data(self, key):
        return self.conn.hdel(self.result_key, [key]) > 0

    def has_data_for_key(self, key):
        return self.conn.hexists(self.result_key, key)

    def put_if_empty(self, key, value, ttl=None):
        if ttl is not None:
            raise NotImplementedError('ttl is not supported by this storage.')
        return self.conn.hsetnx(self.result_key, key, value)

    def result_store_size(self):
        return self.conn.hlen(self.result_key)

    def result_items(self):
        items = self.conn.hgetall(self.result_key)
        return {key.decode('utf8'): value for key, value in items.items()}

    def flush_results(self):
        self.conn.delete([self.result_key])

    # Counters ----------------------------------------------------------------------------

    def incr(self, key, amount=1):
        return self.conn.hincrby(self.counter_key, key, amount)

    def delete_counter(self, key):
        self.conn.hdel(self.counter_key, [key])

    def flush_counters(self):
        self.conn.delete([self.counter_key])

    # Dead letters (RedisStorage's layout and record format) ------------------------------

    def put_dead_letter(self, data, reason, deliveries=1):
        letter_id = self.conn.invoke_script(
            self._dead_put,
            keys=[self.dead_seq_key, self.dead_key, self.dead_index_key],
            args=[RedisStorage._dead_record(data, reason, deliveries)],
        )
        return str(letter_id)

    def dead_letters(self, limit=None):
        limit = check_limit(limit)
        if limit == 0:
            return []
        stop = -1 if limit is None else limit - 1
        ids = self.conn.zrange(self.dead_index_key, RangeByIndex(0, stop))
        if not ids:
            return []
        records = self.conn.hmget(self.dead_key, ids)
        return [
            RedisStorage._letter(letter_id, record)
            for letter_id, record in zip(ids, records)
            if record is not None
        ]

    def pop_dead_letter(self, id):
        record = self.conn.invoke_script(
            self._dead_pop, keys=[self.dead_key, self.dead_index_key], args=[str(id)]
        )
        return None if record is None else RedisStorage._letter(str(id), record)

    def flush_dead_letters(self):
        self.conn.delete([self.dead_key, self.dead_index_key])

    def dead_letter_count(self):
        return self.conn.hlen(self.dead_key)


class ValkeyGlideHuey(RedisHuey):
    storage_class = ValkeyGlideStorage
