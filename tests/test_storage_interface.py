"""The storage interface (``huey.storage.base.BaseStorage``): a storage written for huey 3.5.4,
implementing only the methods huey 3.5.4 documents, works unchanged under a real consumer, and
gets every huey-rs capability from the defaults; Huey reads capabilities, never probes."""

import datetime
import heapq
import itertools
import threading
import time

import pytest

from huey import Huey, chord, signals
from huey.constants import EmptyData
from huey.exceptions import ConfigurationError
from huey.storage import BaseStorage, MemoryStorage

WAIT = 10


class DictStorage(BaseStorage):
    """What a user wrote for huey 3.5.4: its documented methods over dicts and lists, one
    lock, nothing huey-rs added (no enqueue_many, dequeue_wait, move_due_to_queue, dead
    letters, peek_many or reliable delivery)."""

    def __init__(self, name='huey', **kwargs):
        super().__init__(name)
        self.lock = threading.Lock()
        self.seq = itertools.count()
        self.queue = []
        self.schedule = []
        self.kv = {}
        self.counters = {}
        self.calls = set()

    def _call(self, name):
        self.calls.add(name)

    def enqueue(self, data, priority=None):
        self._call('enqueue')
        with self.lock:
            heapq.heappush(self.queue, (-(priority or 0), next(self.seq), data))

    def dequeue(self):
        self._call('dequeue')
        with self.lock:
            return heapq.heappop(self.queue)[2] if self.queue else None

    def queue_size(self):
        return len(self.queue)

    def enqueued_items(self, limit=None):
        with self.lock:
            return [data for _, _, data in sorted(self.queue)][:limit]

    def flush_queue(self):
        with self.lock:
            self.queue = []

    def add_to_schedule(self, data, ts):
        with self.lock:
            self.schedule.append((ts, next(self.seq), data))

    def read_schedule(self, ts):
        self._call('read_schedule')
        with self.lock:
            self.schedule.sort()
            due = [item for item in self.schedule if item[0] <= ts]
            self.schedule = self.schedule[len(due) :]
        return [data for _, _, data in due]

    def schedule_size(self):
        return len(self.schedule)

    def scheduled_items(self, limit=None):
        with self.lock:
            return [data for _, _, data in sorted(self.schedule)][:limit]

    def flush_schedule(self):
        with self.lock:
            self.schedule = []

    def put_data(self, key, value, is_result=False):
        with self.lock:
            self.kv[key] = value

    def peek_data(self, key):
        self._call('peek_data')
        return self.kv.get(key, EmptyData)

    def pop_data(self, key):
        with self.lock:
            return self.kv.pop(key, EmptyData)

    def has_data_for_key(self, key):
        return key in self.kv

    def put_if_empty(self, key, value, ttl=None):
        with self.lock:
            if key in self.kv:
                return False
            self.kv[key] = value
            return True

    def incr(self, key, amount=1):
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + amount
            return self.counters[key]

    def delete_counter(self, key):
        with self.lock:
            self.counters.pop(key, None)

    def result_store_size(self):
        return len(self.kv)

    def result_items(self):
        with self.lock:
            return dict(self.kv)

    def flush_results(self):
        with self.lock:
            self.kv = {}

    def flush_counters(self):
        with self.lock:
            self.counters = {}


@pytest.fixture
def huey():
    return Huey('user-storage', storage_class=DictStorage, utc=False)


def test_a_huey_354_storage_runs_everything_under_a_real_consumer(huey, run_consumer):
    seen = []
    huey.signal()(lambda signal, task, *args: seen.append((signal, task and task.id)))
    huey.store_intermediate_errors = False  # the retried task's result is its second run's

    @huey.task()
    def add(a, b):
        return a + b

    @huey.task(retries=1, retry_delay=1, context=True)
    def flaky(task=None):
        if task.retries:
            raise ValueError('first run fails')
        return 'second run'

    @huey.task()
    def total(values):
        return sum(values)

    @huey.task()
    def never(n):
        return n

    mapped = add.map([(i, i) for i in range(5)])  # enqueue_many -> default: enqueue each
    later = add.schedule((2, 3), delay=1)  # move_due_to_queue -> default: read + enqueue
    retried = flaky()
    piped = huey.enqueue(add.s(1, 2).then(add, 10))
    chorded = huey.enqueue(chord([add.s(i, 1) for i in range(3)], total.s()))
    revoked = never(1)
    revoked.revoke()
    consumer = run_consumer(huey)
    assert mapped.get(blocking=True, timeout=WAIT) == [0, 2, 4, 6, 8]
    assert later.get(blocking=True, timeout=WAIT) == 5
    assert retried.get(blocking=True, timeout=WAIT) == 'second run'
    assert piped.get(blocking=True, timeout=WAIT) == [3, 13]
    assert chorded.get(blocking=True, timeout=WAIT) == 6
    deadline = time.monotonic() + WAIT
    while (signals.SIGNAL_REVOKED, revoked.id) not in seen:
        assert time.monotonic() < deadline, seen
        time.sleep(0.01)
    # The scheduled task was announced before it was back in the queue (default move).
    moves = [s for s, tid in seen if tid == later.id]
    assert moves == ['enqueued', 'scheduled', 'enqueued', 'executing', 'complete'], moves
    assert consumer.huey.storage.calls == {'enqueue', 'dequeue', 'read_schedule', 'peek_data'}
    assert not huey.reliable


def test_undecodable_messages_become_dead_letters_in_the_key_value_store(huey):
    storage = huey.storage
    storage.enqueue(b'not a pickle')
    assert huey.dequeue() is None
    [letter] = huey.dead_letters()
    assert letter['data'] == b'not a pickle' and letter['deliveries'] == 1
    assert 'UnpicklingError' in letter['reason']
    assert huey.dead_letter_count() == 1
    assert huey.requeue_dead_letter(letter['id']) is True
    assert huey.dead_letter_count() == 0 and storage.queue_size() == 1
    assert huey.dequeue() is None
    [again] = huey.dead_letters()
    assert again['deliveries'] == 2  # the requeue remembered it was set aside once
    ids = [storage.put_dead_letter(b'x%d' % i, f'reason {i}') for i in range(3)]
    assert [letter['id'] for letter in storage.dead_letters()][1:] == ids
    assert storage.dead_letters(limit=2)[1]['id'] == ids[0]
    assert storage.pop_dead_letter(ids[1])['reason'] == 'reason 1'
    assert storage.pop_dead_letter(ids[1]) is None
    assert huey.purge_dead_letters() == 3 and huey.dead_letters() == []


def test_defaults_of_the_interface(huey):
    storage = huey.storage
    storage.enqueue_many([(b'a', None), (b'b', 5)])
    assert storage.dequeue_wait(0.01) == b'b'
    assert storage.peek_many(['missing']) == {}
    storage.put_data('r:t', b'flag')
    storage.delete_and_put('r:t', 't', b'value', is_result=True)
    assert storage.kv == {'t': b'value'}
    now = datetime.datetime(2030, 1, 1)
    storage.add_to_schedule(b'due', now)
    storage.add_to_schedule(b'later', now + datetime.timedelta(seconds=1))
    announced = []
    moved = storage.move_due_to_queue(now, lambda data: announced.append(data) or 7)
    assert moved == announced == [b'due']
    assert storage.queue[0][:1] == (-7,) and storage.scheduled_items() == [b'later']
    assert storage.recover_expired(3) == (0, [])
    assert storage.inflight_items() == []
    with pytest.raises(NotImplementedError, match='DictStorage does not support reliable'):
        storage.dequeue_reliable('c', 't', 30)
    capabilities = (storage.blocking, storage.wakeup, storage.reliable_delivery)
    assert capabilities == (False, False, False)
    assert storage.read_timeout is None and storage.priority is True


def test_reliable_on_a_storage_without_it_is_a_configuration_error():
    with pytest.raises(ConfigurationError) as caught:
        Huey('r', storage_class=DictStorage, reliable=True)
    message = str(caught.value)
    assert 'DictStorage' in message
    assert 'SqliteStorage' in message and 'RedisStorage' in message
    assert 'FileStorage' in message and 'MemoryStorage' not in message
    with pytest.raises(ConfigurationError, match='MemoryStorage has none'):
        Huey('r', storage_class=MemoryStorage, reliable=True)
    # Immediate mode runs tasks in-process: nothing is delivered, nothing to refuse...
    immediate = Huey('r', storage_class=DictStorage, reliable=True, immediate=True)
    assert not immediate.reliable
    # ...until it is switched off and the configured storage comes back.
    with pytest.raises(ConfigurationError, match='DictStorage has none'):
        immediate.immediate = False


def test_storages_declare_their_capabilities():
    from huey.storage import FileStorage, PriorityRedisStorage, RedisStorage, SqliteStorage

    for cls in (SqliteStorage, FileStorage, RedisStorage, PriorityRedisStorage):
        assert cls.reliable_delivery is True, cls
    assert MemoryStorage.reliable_delivery is False
    assert MemoryStorage.wakeup and SqliteStorage.wakeup and FileStorage.wakeup
    assert RedisStorage.priority is False and PriorityRedisStorage.priority is True


def test_huey_never_probes_its_storage():
    # Everything Huey and the consumer call is declared on BaseStorage: no getattr/hasattr
    # on a storage in the code that uses one.
    import inspect
    import re

    import huey.api
    import huey.consumer
    import huey.dead_letters
    import huey.execution
    import huey.reliable

    for module in (huey.api, huey.consumer, huey.execution, huey.reliable, huey.dead_letters):
        source = inspect.getsource(module)
        assert not re.search(r'(getattr|hasattr)\([^)]*storage', source), module.__name__


def test_a_move_that_skips_on_due_still_announces_the_tasks(huey):
    # A storage that overrides move_due_to_queue without calling on_due (against the
    # contract): its tasks' 'enqueued' signals come late, but they come.
    def move_ignoring_on_due(ts, on_due=None):
        messages = huey.storage.read_schedule(ts)
        for data in messages:
            huey.storage.enqueue(data)
        return messages

    huey.storage.move_due_to_queue = move_ignoring_on_due
    seen = []
    huey.signal(signals.SIGNAL_ENQUEUED)(lambda signal, task: seen.append(task.id))
    task = huey.task()(lambda: 1).s()
    task.eta = datetime.datetime(2000, 1, 1)
    huey.add_schedule(task)
    huey.storage.add_to_schedule(b'undecodable', datetime.datetime(2000, 1, 1))
    assert [t.id for t in huey.move_due_to_queue()] == [task.id] == seen
