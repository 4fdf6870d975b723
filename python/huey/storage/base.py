"""The storage interface every huey storage implements, and the no-op BlackHoleStorage."""

import time

from huey.constants import EmptyData


class BaseStorage:
    """Queue, schedule, key/value result store and counters, all holding opaque bytes.

    ``blocking`` says whether ``dequeue`` waits for work itself; ``wakeup`` whether
    ``dequeue_wait`` can be woken by an enqueue; ``priority`` whether the queue honours
    priorities.
    """

    blocking = False
    priority = True
    wakeup = False  # True when dequeue_wait() really waits to be woken by an enqueue

    def __init__(self, name='huey', **storage_kwargs):
        self.name = name

    def close(self):
        """Release connections or handles held by the storage."""

    def enqueue(self, data, priority=None):
        raise NotImplementedError

    def dequeue(self):
        """Remove and return the next message, or None when the queue is empty."""
        raise NotImplementedError

    def dequeue_wait(self, timeout):
        """Like ``dequeue`` but may wait up to ``timeout`` seconds for a message.

        Storages that can be woken when work arrives override this; the default does not
        wait, and the consumer falls back to polling with backoff.
        """
        return self.dequeue()

    def queue_size(self):
        raise NotImplementedError

    def enqueued_items(self, limit=None):
        raise NotImplementedError

    def flush_queue(self):
        raise NotImplementedError

    def add_to_schedule(self, data, ts):
        raise NotImplementedError

    def read_schedule(self, ts):
        """Remove and return every scheduled message due at or before ``ts``."""
        raise NotImplementedError

    def schedule_size(self):
        raise NotImplementedError

    def scheduled_items(self, limit=None):
        raise NotImplementedError

    def flush_schedule(self):
        raise NotImplementedError

    def put_data(self, key, value, is_result=False):
        raise NotImplementedError

    def peek_data(self, key):
        """The value stored at ``key``, or ``EmptyData``."""
        raise NotImplementedError

    def peek_many(self, keys):
        """A dict of key -> value for those of ``keys`` that hold a value."""
        found = {}
        for key in keys:
            value = self.peek_data(key)
            if value is not EmptyData:
                found[key] = value
        return found

    def pop_data(self, key):
        raise NotImplementedError

    def wait_result(self, key, timeout=None, backoff=1.15, max_delay=1.0):
        """Wait until ``key`` holds a value; False when ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while not self.has_data_for_key(key):
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                time.sleep(min(delay, max_delay, remaining))
            else:
                time.sleep(min(delay, max_delay))
            delay *= backoff
        return True

    def delete_data(self, key):
        return self.pop_data(key) is not EmptyData

    def delete_and_put(self, delete_key, key, value, is_result=False):
        """``delete_data(delete_key)`` then ``put_data(key, value, is_result)``; storages
        with round trips do both in one (the consumer stores a result this way)."""
        self.delete_data(delete_key)
        self.put_data(key, value, is_result)

    def has_data_for_key(self, key):
        raise NotImplementedError

    def put_if_empty(self, key, value, ttl=None):
        """Store ``value`` only when ``key`` is unset; True when it was stored."""
        if ttl is not None:
            raise NotImplementedError('ttl is not supported by this storage.')
        if self.has_data_for_key(key):
            return False
        self.put_data(key, value)
        return True

    def incr(self, key, amount=1):
        raise NotImplementedError

    def delete_counter(self, key):
        raise NotImplementedError

    def result_store_size(self):
        raise NotImplementedError

    def result_items(self):
        raise NotImplementedError

    def flush_results(self):
        raise NotImplementedError

    def flush_counters(self):
        raise NotImplementedError

    # Dead letters: queued messages that could not be decoded, kept with the reason. They are
    # not part of the queue, schedule or results, and flush_all() leaves them (like a mail
    # server's dead-letter folder, they are evidence to inspect, not state to reset);
    # flush_dead_letters() removes them. Each letter is a dict
    # {'id': str, 'data': bytes, 'reason': str, 'time': unix float, 'deliveries': int}.

    def put_dead_letter(self, data, reason, deliveries=1):
        """Keep the undecodable message ``data`` aside; returns the new letter's id."""
        raise NotImplementedError

    def dead_letters(self, limit=None):
        """The dead letters, oldest first (at most ``limit``)."""
        raise NotImplementedError

    def pop_dead_letter(self, id):
        """Remove and return the letter ``id``, or None when there is no such letter."""
        raise NotImplementedError

    def flush_dead_letters(self):
        raise NotImplementedError

    def dead_letter_count(self):
        raise NotImplementedError

    def flush_all(self):
        """Empty the queue, schedule, results and counters (dead letters stay)."""
        self.flush_queue()
        self.flush_schedule()
        self.flush_results()
        self.flush_counters()


def dead_letter(id, data, reason, time, deliveries):
    """One dead letter as the dict every storage returns."""
    return {'id': id, 'data': data, 'reason': reason, 'time': time, 'deliveries': deliveries}


def over_cap_reason(deliveries, cap):
    """The reason recorded for a message dead-lettered at the delivery cap (``deliveries``
    may be a format placeholder such as ``'%d'``)."""
    return f'delivered {deliveries} times without completing (max_deliveries={cap})'


def check_limit(limit):
    """``limit`` as a non-negative int or None (a listing of dead letters)."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f'limit must be an int or None, got {limit!r}')
    if limit < 0:
        raise ValueError(f'limit must be >= 0, got {limit}')
    return limit


class BlackHoleStorage(BaseStorage):
    """Accepts everything and keeps nothing."""

    def enqueue(self, data, priority=None):
        pass

    def dequeue(self):
        return None

    def queue_size(self):
        return 0

    def enqueued_items(self, limit=None):
        return []

    def flush_queue(self):
        pass

    def add_to_schedule(self, data, ts):
        pass

    def read_schedule(self, ts):
        return []

    def schedule_size(self):
        return 0

    def scheduled_items(self, limit=None):
        return []

    def flush_schedule(self):
        pass

    def put_data(self, key, value, is_result=False):
        pass

    def peek_data(self, key):
        return EmptyData

    def pop_data(self, key):
        return EmptyData

    def has_data_for_key(self, key):
        return False

    def put_if_empty(self, key, value, ttl=None):
        return True

    def incr(self, key, amount=1):
        return amount

    def delete_counter(self, key):
        pass

    def result_store_size(self):
        return 0

    def result_items(self):
        return {}

    def flush_results(self):
        pass

    def flush_counters(self):
        pass

    def put_dead_letter(self, data, reason, deliveries=1):
        return None

    def dead_letters(self, limit=None):
        return []

    def pop_dead_letter(self, id):
        return None

    def flush_dead_letters(self):
        pass

    def dead_letter_count(self):
        return 0
