"""RedisExpireStorage: results and counters as plain keys that expire, one per entry
(``huey.r.{name}.<key>``, ``huey.c.{name}.<key>``), instead of RedisStorage's hashes; the
queue, schedule and every other key are RedisStorage's.
"""

from huey.constants import EmptyData
from huey.storage.base import BaseStorage
from huey.storage.redis import RedisStorage, _glob_escape, _text


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
        self.result_prefix = b'huey.r.%s.' % self.key_name.encode('utf8')
        self.counter_prefix = b'huey.c.%s.' % self.key_name.encode('utf8')

    def result_key(self, key):
        return self.result_prefix + (key if isinstance(key, bytes) else key.encode('utf8'))

    def counter_key(self, key):
        return self.counter_prefix + (key if isinstance(key, bytes) else key.encode('utf8'))

    def put_data(self, key, value, is_result=False):
        if not is_result:
            self.conn.set(self.result_key(key), value)
        elif self.notify_result:
            pipe = self.conn.pipeline(transaction=False)
            pipe.set(self.result_key(key), value, ex=self._expire_time)
            self._queue_notify(pipe, key)
            pipe.execute()
        else:
            self.conn.set(self.result_key(key), value, ex=self._expire_time)

    # Flags and results are separate keys here: the defaults' two round trips.
    delete_put_and_peek = BaseStorage.delete_put_and_peek
    start_and_peek = BaseStorage.start_and_peek
    ack_and_start = BaseStorage.ack_and_start

    def _ack_start_keys(self):
        # No results hash to read flags from (the defaults above read none in the script);
        # the fourth key only has to be one of this storage's.
        return [self.lease_key, self.inflight_key, self.inflight_meta_key, self.inflight_meta_key]

    renew_delete_and_put = BaseStorage.renew_delete_and_put

    def delete_and_put(self, delete_key, key, value, is_result=False):
        self._scripts.key_replace(
            keys=[
                self.result_key(delete_key),
                self.result_key(key),
                self.notify_prefix + _text(key),
            ],
            args=[value, self._expire_time if is_result else 0, self._notify_ttl(is_result)],
            client=self.conn,
        )

    def peek_data(self, key):
        value = self.conn.get(self.result_key(key))
        return EmptyData if value is None else value

    def peek_many(self, keys):
        keys = list(keys)
        if not keys:
            return {}
        values = self.conn.mget([self.result_key(k) for k in keys])
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
        return {
            k[start:].decode('utf8'): v
            for k, v in zip(keys, self.conn.mget(keys))
            if v is not None
        }

    def flush_results(self):
        keys = self._keys(self.result_prefix)
        if keys:
            self.conn.delete(*keys)

    def flush_counters(self):
        keys = self._keys(self.counter_prefix)
        if keys:
            self.conn.delete(*keys)
