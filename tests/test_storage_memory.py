"""MemoryStorage: the BaseStorage contract, wake-ups, threads, and a model-based comparison."""

import datetime
import heapq
import itertools
import random
import signal
import threading
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from huey.constants import EmptyData
from huey.storage import BaseStorage, MemoryStorage

T0 = datetime.datetime(2030, 1, 2, 3, 4, 5)


def at(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


@pytest.fixture
def storage():
    return MemoryStorage('test-queue')


def drain(storage):
    items = []
    while (item := storage.dequeue()) is not None:
        items.append(item)
    return items


class TestInterface:
    def test_is_a_base_storage(self, storage):
        assert isinstance(storage, BaseStorage)
        assert storage.name == 'test-queue'
        assert MemoryStorage().name == 'huey'
        assert MemoryStorage(name='other', unused_option=1).name == 'other'
        assert storage.blocking is False
        assert storage.priority is True

    def test_every_base_method_is_implemented(self, storage):
        # Each call would raise NotImplementedError if it fell through to BaseStorage.
        storage.enqueue(b'q')
        assert storage.queue_size() == 1
        assert storage.enqueued_items() == [b'q']
        storage.add_to_schedule(b's', T0)
        assert storage.schedule_size() == 1
        assert storage.scheduled_items() == [b's']
        storage.put_data('k', b'v')
        assert storage.peek_data('k') == b'v'
        assert storage.has_data_for_key('k')
        assert storage.result_store_size() == 1
        assert storage.result_items() == {'k': b'v'}
        assert storage.incr('c') == 1
        assert storage.dequeue() == b'q'
        assert storage.read_schedule(T0) == [b's']
        assert storage.pop_data('k') == b'v'
        storage.delete_counter('c')
        assert storage._counters == {}
        assert storage.close() is None
        for name in dir(BaseStorage):
            if not name.startswith('_') and callable(getattr(BaseStorage, name)):
                assert name in dir(MemoryStorage)

    def test_holds_the_objects_it_is_given(self, storage):
        data = b'x' * 100
        storage.enqueue(data)
        assert storage.dequeue() is data
        storage.put_data('k', data)
        assert storage.peek_data('k') is data
        storage.add_to_schedule(data, T0)
        assert storage.read_schedule(T0)[0] is data


class TestQueue:
    def test_higher_priority_first_fifo_within(self, storage):
        entries = [
            (b'a', None),
            (b'b', 1),
            (b'c', -1),
            (b'd', 0),
            (b'e', 1),
            (b'f', 2.5),
            (b'g', -0.0),
            (b'h', -1.5),
            (b'i', 10**6),
        ]
        for data, priority in entries:
            storage.enqueue(data, priority)
        expected = [b'i', b'f', b'b', b'e', b'a', b'd', b'g', b'c', b'h']
        assert storage.enqueued_items() == expected
        assert storage.queue_size() == len(expected)
        assert drain(storage) == expected
        assert storage.dequeue() is None
        assert storage.queue_size() == 0

    def test_enqueued_items_limit(self, storage):
        for i in range(5):
            storage.enqueue(i, i)
        assert storage.enqueued_items(2) == [4, 3]
        assert storage.enqueued_items(0) == [4, 3, 2, 1, 0]  # huey: `if limit:`
        assert storage.enqueued_items(99) == [4, 3, 2, 1, 0]
        assert storage.enqueued_items(-1) == [4, 3, 2, 1]
        assert storage.queue_size() == 5

    def test_flush_queue(self, storage):
        storage.enqueue(b'a')
        storage.flush_queue()
        assert storage.queue_size() == 0
        assert storage.dequeue() is None

    def test_bad_priorities(self, storage):
        with pytest.raises(TypeError):
            storage.enqueue(b'a', 'high')
        with pytest.raises(ValueError, match='nan'):
            storage.enqueue(b'a', float('nan'))
        with pytest.raises(OverflowError):
            storage.enqueue(b'a', 10**400)
        assert storage.queue_size() == 0


class TestSchedule:
    def test_ordered_by_timestamp_and_inclusive(self, storage):
        for data, offset in [(b'c', 30), (b'a', 10), (b'b', 20), (b'd', 40)]:
            storage.add_to_schedule(data, at(offset))
        assert storage.scheduled_items() == [b'a', b'b', b'c', b'd']
        assert storage.scheduled_items(2) == [b'a', b'b']
        assert storage.read_schedule(at(5)) == []
        assert storage.read_schedule(at(20)) == [b'a', b'b']
        assert storage.schedule_size() == 2
        assert storage.read_schedule(at(10**6)) == [b'c', b'd']
        assert storage.schedule_size() == 0

    def test_sub_second_timestamps(self, storage):
        base = datetime.datetime(2030, 12, 31, 23, 59, 59, 999_990)
        steps = [7, 1, 9, 3, 10, 0]  # the last ones cross into the next year
        for us in steps:
            storage.add_to_schedule(us, base + datetime.timedelta(microseconds=us))
        assert storage.scheduled_items() == sorted(steps)
        assert storage.read_schedule(base + datetime.timedelta(microseconds=3)) == [0, 1, 3]
        assert storage.read_schedule(base + datetime.timedelta(microseconds=9)) == [7, 9]
        assert storage.read_schedule(datetime.datetime(2031, 1, 1)) == [10]

    def test_equal_timestamps_are_fifo(self, storage):
        items = [f'item-{i}'.encode() for i in range(50)]
        for item in reversed(items):
            storage.add_to_schedule(item, T0)
        assert storage.read_schedule(T0) == list(reversed(items))

    def test_aware_datetimes_compare_in_utc(self, storage):
        plus2 = datetime.timezone(datetime.timedelta(hours=2))
        utc = datetime.timezone.utc
        storage.add_to_schedule(b'utc-10:30', datetime.datetime(2030, 1, 1, 10, 30, tzinfo=utc))
        storage.add_to_schedule(b'+2-12:00', datetime.datetime(2030, 1, 1, 12, 0, tzinfo=plus2))
        assert storage.scheduled_items() == [b'+2-12:00', b'utc-10:30']

    def test_datetime_subclass_and_bad_types(self, storage):
        class Stamp(datetime.datetime):
            pass

        storage.add_to_schedule(b'a', Stamp(2030, 1, 1, 0, 0, 1))
        with pytest.raises(TypeError, match='ts must be a datetime.datetime, got float'):
            storage.add_to_schedule(b'b', 1.5)
        with pytest.raises(TypeError, match='got date'):
            storage.read_schedule(datetime.date(2030, 1, 1))
        assert storage.read_schedule(datetime.datetime(2030, 1, 1, 0, 0, 1)) == [b'a']

    def test_flush_schedule(self, storage):
        storage.add_to_schedule(b'a', T0)
        storage.flush_schedule()
        assert storage.schedule_size() == 0
        assert storage.read_schedule(at(1)) == []

    def test_large_schedule_reads_only_due_items(self, storage):
        n = 100_000
        offsets = list(range(n))
        random.Random(3).shuffle(offsets)
        for offset in offsets:
            storage.add_to_schedule(offset, at(offset))
        assert storage.read_schedule(at(9)) == list(range(10))
        assert storage.schedule_size() == n - 10


class TestResults:
    def test_put_peek_pop_delete(self, storage):
        assert storage.peek_data('k') is EmptyData
        assert storage.pop_data('k') is EmptyData
        storage.put_data('k', b'1')
        storage.put_data('k', b'2', is_result=True)
        assert storage.peek_data('k') == b'2'
        assert storage.pop_data('k') == b'2'
        assert not storage.has_data_for_key('k')
        storage.put_data('k', None)  # a stored None is not EmptyData
        assert storage.peek_data('k') is None
        assert storage.delete_data('k') is True
        assert storage.delete_data('k') is False

    def test_str_and_bytes_keys_are_distinct_and_kept(self, storage):
        storage.put_data('key', b'from-str')
        storage.put_data(b'key', b'from-bytes')
        storage.put_data('ключ', b'unicode')
        assert storage.result_store_size() == 3
        items = storage.result_items()
        assert items == {'key': b'from-str', b'key': b'from-bytes', 'ключ': b'unicode'}
        assert {type(k) for k in items} == {str, bytes}
        assert storage.peek_data(b'key') == b'from-bytes'
        with pytest.raises(TypeError, match='str or bytes, got int'):
            storage.put_data(1, b'x')

    def test_key_subclasses_and_unicode(self, storage):
        class OddHash(str):
            def __hash__(self):
                return 42

        storage.put_data(OddHash('task'), b'1')
        assert storage.peek_data('task') == b'1'  # keyed on the value, as a dict would be
        assert type(next(iter(storage.result_items()))) is str
        storage.put_data('naïve ✓ 🙂', b'2')
        assert storage.pop_data('naïve ✓ 🙂'.encode().decode()) == b'2'
        with pytest.raises(UnicodeEncodeError):
            storage.put_data('\ud800', b'x')  # a lone surrogate has no UTF-8 form
        assert storage.result_store_size() == 1

    def test_peek_many(self, storage):
        storage.put_data('a', b'1')
        storage.put_data(b'b', b'2')
        assert storage.peek_many(['a', b'b', 'c', 'b']) == {'a': b'1', b'b': b'2'}
        assert storage.peek_many(iter([])) == {}

    def test_put_if_empty(self, storage):
        assert storage.put_if_empty('lock', b'1') is True
        assert storage.put_if_empty('lock', b'2', ttl=10) is False
        assert storage.peek_data('lock') == b'1'

    def test_flush_results(self, storage):
        storage.put_data('a', b'1')
        storage.flush_results()
        assert storage.result_store_size() == 0
        assert storage.result_items() == {}


class TestCounters:
    def test_incr_and_delete(self, storage):
        assert storage.incr('c') == 1
        assert storage.incr('c', 5) == 6
        assert storage.incr('c', -10) == -4
        assert storage.incr(b'c') == 1
        assert storage._counters == {'c': -4, b'c': 1}
        storage.delete_counter('c')
        storage.delete_counter('missing')
        assert storage._counters == {b'c': 1}
        storage.flush_counters()
        assert storage._counters == {}

    def test_counters_attribute_is_a_snapshot(self, storage):
        storage.incr('c')
        snapshot = storage._counters
        snapshot['c'] = 99
        assert storage._counters == {'c': 1}

    def test_overflow_is_an_error(self, storage):
        storage.incr('c', 2**63 - 1)
        with pytest.raises(OverflowError):
            storage.incr('c')
        assert storage._counters == {'c': 2**63 - 1}


def test_flush_all(storage):
    storage.enqueue(b'q')
    storage.add_to_schedule(b's', T0)
    storage.put_data('k', b'v')
    storage.incr('c')
    storage.flush_all()
    assert (storage.queue_size(), storage.schedule_size(), storage.result_store_size()) == (
        0,
        0,
        0,
    )
    assert storage._counters == {}


def run_in_thread(fn, *args):
    """Runs fn in a thread; returns (started event, result box, thread)."""
    started = threading.Event()
    box = {}

    def target():
        started.set()
        begin = time.monotonic()
        box['value'] = fn(*args)
        box['elapsed'] = time.monotonic() - begin

    thread = threading.Thread(target=target)
    thread.start()
    started.wait(10)
    return box, thread


class TestWaiting:
    def test_dequeue_wait_times_out(self, storage):
        begin = time.monotonic()
        assert storage.dequeue_wait(0.05) is None
        assert time.monotonic() - begin >= 0.05
        assert storage.dequeue_wait(0) is None

    @pytest.mark.parametrize('timeout', [-1, -0.001, float('nan'), float('inf'), float('-inf')])
    def test_wait_timeouts_must_be_finite_and_non_negative(self, storage, timeout):
        with pytest.raises(ValueError, match='timeout must be a finite number of seconds'):
            storage.dequeue_wait(timeout)
        with pytest.raises(ValueError, match='timeout must be a finite number of seconds'):
            storage.wait_result('k', timeout)

    def test_dequeue_wait_returns_queued_item_at_once(self, storage):
        storage.enqueue(b'ready')
        assert storage.dequeue_wait(30) == b'ready'

    def test_dequeue_wait_is_woken_by_enqueue(self, storage):
        # A 30 s timeout: returning well before it proves the wake-up came from enqueue.
        box, thread = run_in_thread(storage.dequeue_wait, 30)
        storage.enqueue(b'work')
        thread.join(30)
        assert box['value'] == b'work'
        assert box['elapsed'] < 5

    def test_each_waiter_gets_one_item(self, storage):
        waiters = [run_in_thread(storage.dequeue_wait, 30) for _ in range(8)]
        for i in range(8):
            storage.enqueue(i)
        for _, thread in waiters:
            thread.join(30)
        assert sorted(box['value'] for box, _ in waiters) == list(range(8))
        assert storage.queue_size() == 0

    def test_wait_result_is_woken_by_put_data(self, storage):
        box, thread = run_in_thread(storage.wait_result, 'task-id', 30)
        storage.put_data('other', b'x')  # an unrelated write does not end the wait
        storage.put_data('task-id', b'result')
        thread.join(30)
        assert box['value'] is True
        assert box['elapsed'] < 5

    def test_wait_result_is_woken_by_put_if_empty(self, storage):
        box, thread = run_in_thread(storage.wait_result, b'k', None)
        assert storage.put_if_empty(b'k', b'v')
        thread.join(30)
        assert box['value'] is True

    def test_wait_result_timeout(self, storage):
        begin = time.monotonic()
        assert storage.wait_result('missing', 0.05) is False
        assert time.monotonic() - begin >= 0.05
        storage.put_data('present', b'1')
        assert storage.wait_result('present', 0) is True

    def test_wait_without_timeout_is_interruptible(self, storage):
        class Interrupted(Exception):
            pass

        def handler(signum, frame):
            raise Interrupted

        previous = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(Interrupted):
                storage.dequeue_wait(None)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class TestThreads:
    def test_producers_and_consumers_lose_and_duplicate_nothing(self, storage):
        producers, consumers, per_producer = 4, 4, 5_000
        total = producers * per_producer
        received = [[] for _ in range(consumers)]
        done = threading.Event()
        count = itertools.count()
        count_lock = threading.Lock()

        def produce(p):
            rng = random.Random(p)
            for i in range(per_producer):
                storage.enqueue((p, i), rng.choice([None, -1, 0, 1, 2.5]))

        def consume(c):
            while not done.is_set():
                item = storage.dequeue_wait(0.05)
                if item is not None:
                    received[c].append(item)
                    with count_lock:
                        if next(count) + 1 == total:
                            done.set()

        threads = [threading.Thread(target=consume, args=(c,)) for c in range(consumers)]
        threads += [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        for thread in threads:
            thread.start()
        assert done.wait(60)
        for thread in threads:
            thread.join(30)
        everything = [item for items in received for item in items]
        assert len(everything) == total
        assert set(everything) == {(p, i) for p in range(producers) for i in range(per_producer)}
        assert storage.queue_size() == 0

    def test_concurrent_counters_schedule_and_locks(self, storage):
        threads, rounds = 8, 2_000
        winners = []

        def work(t):
            for i in range(rounds):
                storage.incr('hits')
                storage.add_to_schedule((t, i), at(i))
                if storage.put_if_empty(f'lock-{i}', t):
                    winners.append(i)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert storage.incr('hits', 0) == threads * rounds
        assert sorted(winners) == list(range(rounds))  # exactly one winner per lock
        due = storage.read_schedule(at(rounds))
        assert len(due) == len(set(due)) == threads * rounds
        assert [i for _, i in due] == sorted(i for _, i in due)


keys = st.sampled_from(['a', 'b', b'a', 'ключ'])
priorities = st.one_of(st.none(), st.integers(-3, 3), st.floats(-2, 2, allow_nan=False))
offsets = st.integers(0, 2_000_000)  # microseconds after T0


class StorageModel(RuleBasedStateMachine):
    """MemoryStorage against plain Python structures (heapq and dicts)."""

    def __init__(self):
        super().__init__()
        self.storage = MemoryStorage()
        self.queue = []  # heap of (-priority, seq, data)
        self.schedule = []  # heap of (eta, seq, data)
        self.results = {}
        self.counters = {}
        self.seq = itertools.count()

    @rule(priority=priorities)
    def enqueue(self, priority):
        data = next(self.seq)
        self.storage.enqueue(data, priority)
        heapq.heappush(self.queue, (-(priority or 0), data, data))

    @rule()
    def dequeue(self):
        expected = heapq.heappop(self.queue)[2] if self.queue else None
        assert self.storage.dequeue() == expected

    @precondition(lambda self: self.queue)
    @rule()
    def dequeue_wait(self):
        assert self.storage.dequeue_wait(1) == heapq.heappop(self.queue)[2]

    @rule(offset=offsets)
    def add_to_schedule(self, offset):
        data = next(self.seq)
        eta = T0 + datetime.timedelta(microseconds=offset)
        self.storage.add_to_schedule(data, eta)
        heapq.heappush(self.schedule, (eta, data, data))

    @rule(offset=offsets)
    def read_schedule(self, offset):
        now = T0 + datetime.timedelta(microseconds=offset)
        expected = []
        while self.schedule and self.schedule[0][0] <= now:
            expected.append(heapq.heappop(self.schedule)[2])
        assert self.storage.read_schedule(now) == expected

    @rule(key=keys, value=st.integers())
    def put_data(self, key, value):
        self.storage.put_data(key, value)
        self.results[key] = value

    @rule(key=keys, value=st.integers())
    def put_if_empty(self, key, value):
        expected = key not in self.results
        self.results.setdefault(key, value)
        assert self.storage.put_if_empty(key, value) is expected

    @rule(key=keys)
    def peek_and_pop(self, key):
        assert self.storage.peek_data(key) == self.results.get(key, EmptyData)
        assert self.storage.pop_data(key) == self.results.pop(key, EmptyData)

    @rule(key=keys, amount=st.integers(-5, 5))
    def incr(self, key, amount):
        self.counters[key] = self.counters.get(key, 0) + amount
        assert self.storage.incr(key, amount) == self.counters[key]

    @rule(key=keys)
    def delete_counter(self, key):
        self.storage.delete_counter(key)
        self.counters.pop(key, None)

    @rule(which=st.sampled_from(['queue', 'schedule', 'results', 'counters']))
    def flush(self, which):
        getattr(self.storage, f'flush_{which}')()
        setattr(self, which, [] if which in ('queue', 'schedule') else {})

    @invariant()
    def same_contents(self):
        s = self.storage
        assert s.queue_size() == len(self.queue)
        assert s.enqueued_items() == [data for _, _, data in sorted(self.queue)]
        assert s.schedule_size() == len(self.schedule)
        assert s.scheduled_items() == [data for _, _, data in sorted(self.schedule)]
        assert s.result_store_size() == len(self.results)
        assert s.result_items() == self.results
        assert s.peek_many(['a', 'b', b'a']) == {
            k: self.results[k] for k in ['a', 'b', b'a'] if k in self.results
        }
        assert s._counters == self.counters


StorageModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestStorageModel = StorageModel.TestCase
