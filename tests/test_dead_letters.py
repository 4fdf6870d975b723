"""The dead-letter queue: undecodable messages are set aside with their original bytes and the
reason, on every storage, from the queue and from the schedule, while a real consumer keeps
running the good messages around them; then they can be listed, requeued and purged."""

import datetime
import logging
import pickle
import threading

import pytest

from huey import signals as S
from huey.api import Huey
from huey.registry import Message
from huey.serializer import Serializer, SignedSerializer
from huey.storage import (
    FileStorage,
    MemoryStorage,
    PostgresStorage,
    PriorityRedisStorage,
    RedisStorage,
    SqliteStorage,
)

WAIT = 10


def _redis(cls):
    def make(request, tmp_path, name):
        server = request.getfixturevalue('redis_db')
        return dict(storage_class=cls, host=server.host, port=server.port, read_timeout=0.1)

    return make


STORAGES = {
    'memory': lambda request, tmp_path, name: dict(storage_class=MemoryStorage),
    # A FileStorage is partitioned by its directory (as in huey): one per name here.
    'file': lambda request, tmp_path, name: dict(
        storage_class=FileStorage, path=str(tmp_path / f'files-{name}')
    ),
    'sqlite': lambda request, tmp_path, name: dict(
        storage_class=SqliteStorage, filename=str(tmp_path / 'huey.db')
    ),
    'redis': _redis(RedisStorage),
    'priority-redis': _redis(PriorityRedisStorage),
    'postgres': lambda request, tmp_path, name: dict(
        storage_class=PostgresStorage,
        dsn=request.getfixturevalue('postgres_db').dsn,
        read_timeout=0.1,
    ),
}

UNPICKLED = []


def _mark_unpickled():
    UNPICKLED.append(True)
    return 'boom'


class Bomb:
    """Records that it was unpickled: a signed message must never get that far."""

    def __reduce__(self):
        return (_mark_unpickled, ())


def _message(name, *args):
    return Message('id-' + name, name, None, 0, 0, None, args, {})


# Each kind of bad message: the huey's serializer, the bad bytes (built from that
# serializer and the name of a registered task) and what the reason must mention.
def _corrupt(serializer, task_name):
    return b'\x80\x05this is not a pickle\xff\x00'


def _bad_signature(serializer, task_name):
    forger = SignedSerializer(secret='not the secret')
    return forger.serialize(Bomb())


def _unknown_task(serializer, task_name):
    return serializer.serialize(_message('nowhere.gone', 1))


def _truncated_compression(serializer, task_name):
    data = serializer.serialize(_message(task_name, 1, 2))
    return data[: len(data) // 2]


def _not_a_message(serializer, task_name):
    return serializer.serialize({'name': task_name})


KINDS = {
    'corrupt-bytes': (Serializer, _corrupt, 'UnpicklingError'),
    'bad-signature': (lambda: SignedSerializer(secret='the secret'), _bad_signature, 'signature'),
    'unknown-task': (Serializer, _unknown_task, 'nowhere.gone not found'),
    'truncated-compression': (
        lambda: Serializer(compression=True),
        _truncated_compression,
        'decompress',
    ),
    'not-a-message': (Serializer, _not_a_message, 'AttributeError'),
}


class Recorder:
    """Collects SIGNAL_DEAD_LETTER sends; ``wait(n)`` blocks until n have arrived."""

    def __init__(self, huey):
        self.sent = []
        self.cond = threading.Condition()
        huey.signal(S.SIGNAL_DEAD_LETTER)(self.receive)

    def receive(self, signal_name, task, reason, letter_id):
        with self.cond:
            self.sent.append((signal_name, task, reason, letter_id))
            self.cond.notify_all()

    def wait(self, count):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.sent) >= count, WAIT), self.sent
        return self.sent


@pytest.fixture(params=sorted(STORAGES))
def make_huey(request, tmp_path):
    made = []

    def make(serializer=None, name='dlq'):
        options = STORAGES[request.param](request, tmp_path, name)
        huey = Huey(name, serializer=serializer, utc=False, **options)
        made.append(huey)
        return huey

    yield make
    for huey in made:
        huey.storage.close()


def _with_tasks(huey):
    @huey.task()
    def add(a, b):
        return a + b

    return add


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_bad_messages_are_set_aside_and_good_ones_still_run(make_huey, run_consumer, kind, caplog):
    make_serializer, make_bad, reason_part = KINDS[kind]
    huey = make_huey(make_serializer())
    add = _with_tasks(huey)
    bad = make_bad(huey.serializer, huey._registry.task_to_string(add.task_class))
    recorder = Recorder(huey)

    before = add(1, 2)
    huey.storage.enqueue(bad)
    after = add(3, 4)
    past = datetime.datetime.now() - datetime.timedelta(seconds=5)
    huey.storage.add_to_schedule(bad, past)  # the scheduler's path
    scheduled_task = add.s(5, 6)
    scheduled_task.eta = past
    huey.add_schedule(scheduled_task)
    scheduled = huey._result_handle(scheduled_task)

    with caplog.at_level(logging.ERROR, logger='huey'):
        run_consumer(huey)
        assert before.get(blocking=True, timeout=WAIT) == 3
        assert after.get(blocking=True, timeout=WAIT) == 7
        assert scheduled.get(blocking=True, timeout=WAIT) == 11
        sent = recorder.wait(2)

    assert UNPICKLED == []  # a message whose signature failed was never unpickled
    letters = huey.dead_letters()
    assert len(letters) == 2 == huey.dead_letter_count()
    assert {letter['id'] for letter in letters} == {letter_id for *_, letter_id in sent}
    for letter in letters:
        assert letter['data'] == bad
        assert reason_part in letter['reason']
        assert letter['deliveries'] == 1
        assert isinstance(letter['time'], float)
    for signal_name, task, reason, _ in sent:
        assert (signal_name, task) == (S.SIGNAL_DEAD_LETTER, None)
        assert reason_part in reason
    # Logged once per message set aside, with the reason.
    logged = [r for r in caplog.records if 'set aside' in r.getMessage()]
    assert len(logged) == 2
    assert all(reason_part in r.getMessage() for r in logged)
    # Dead letters are neither queued, scheduled nor results.
    assert huey.pending_count() == 0
    assert huey.scheduled_count() == 0
    assert all(v != bad for v in huey.all_results().values())
    assert huey.result_count() == len(huey.all_results())


def test_bomb_fires_when_unpickled_so_the_signature_test_means_something():
    forged = SignedSerializer(secret='not the secret')
    try:
        assert forged.deserialize(forged.serialize(Bomb())) == 'boom'
        assert UNPICKLED == [True]
    finally:
        UNPICKLED.clear()


def test_listings_skip_bad_messages_without_setting_them_aside(make_huey):
    huey = make_huey()
    add = _with_tasks(huey)
    add(1, 2)
    huey.storage.enqueue(b'junk in the queue')
    later = add.s(1, 1)
    later.eta = datetime.datetime.now() + datetime.timedelta(hours=1)
    huey.add_schedule(later)
    huey.storage.add_to_schedule(
        b'junk in the schedule', datetime.datetime.now() + datetime.timedelta(hours=1)
    )

    assert [t.args for t in huey.pending()] == [(1, 2)]
    assert [t.args for t in huey.scheduled()] == [(1, 1)]
    assert huey.pending_count() == 2 and huey.scheduled_count() == 2
    assert huey.dead_letters() == []


def test_dequeue_skips_to_the_next_good_message(make_huey):
    huey = make_huey()
    add = _with_tasks(huey)
    for junk in (b'', b'\x00', b'\x80\x05N.'):  # empty, garbage, a pickled None
        huey.storage.enqueue(junk)
    add(2, 2)
    task = huey.dequeue()
    assert task.args == (2, 2)
    assert [letter['data'] for letter in huey.dead_letters()] == [b'', b'\x00', b'\x80\x05N.']
    assert huey.dequeue() is None


def test_requeue_puts_the_original_bytes_back(make_huey):
    huey = make_huey()
    data = huey.serializer.serialize(_message(f'{__name__}.deployed_later', 4))
    huey.storage.enqueue(data)
    assert huey.dequeue() is None
    (letter,) = huey.dead_letters()
    assert 'deployed_later not found' in letter['reason']

    # Requeued while the task is still missing: set aside again, deliveries counted.
    assert huey.requeue_dead_letter(letter['id']) is True
    assert huey.dead_letters() == []
    assert huey.pending_count() == 1
    assert huey.dequeue() is None
    (letter,) = huey.dead_letters()
    assert letter['data'] == data and letter['deliveries'] == 2

    # Once the task is deployed, the requeued message runs.
    @huey.task(name='deployed_later')
    def deployed_later(x):
        return x * 10

    assert huey._registry.task_to_string(deployed_later.task_class) == f'{__name__}.deployed_later'
    assert huey.requeue_dead_letter(letter['id']) is True
    assert huey.requeue_dead_letter(letter['id']) is False  # already taken
    task = huey.dequeue()
    assert task.args == (4,)
    assert huey.execute(task) == 40
    assert huey.dead_letter_count() == 0


@pytest.mark.parametrize('bad_id', ['no-such-id', '999999', '', '../queue', 12345, None])
def test_requeue_of_an_unknown_id_is_false(make_huey, bad_id):
    huey = make_huey()
    huey.storage.put_dead_letter(b'x', 'reason')
    assert huey.requeue_dead_letter(bad_id) is False
    assert huey.dead_letter_count() == 1
    assert huey.pending_count() == 0


def test_purge_and_flush(make_huey):
    huey = make_huey()
    add = _with_tasks(huey)
    ids = [huey.storage.put_dead_letter(b'bad-%d' % i, f'reason {i}') for i in range(3)]
    assert len(set(ids)) == 3 and all(isinstance(i, str) for i in ids)
    assert [letter['id'] for letter in huey.dead_letters()] == ids  # oldest first
    assert [letter['data'] for letter in huey.dead_letters(limit=2)] == [b'bad-0', b'bad-1']
    assert huey.dead_letters(limit=0) == []
    with pytest.raises(ValueError):
        huey.dead_letters(limit=-1)
    with pytest.raises(TypeError):
        huey.dead_letters(limit='2')

    add(1, 1)
    huey.put('some-key', 'value')
    assert huey.result_count() == 1 and huey.pending_count() == 1
    # flush() resets the queue, schedule and results but keeps the evidence.
    huey.flush()
    assert huey.result_count() == 0 and huey.pending_count() == 0
    assert huey.dead_letter_count() == 3

    popped = huey.storage.pop_dead_letter(ids[1])
    assert popped['data'] == b'bad-1' and popped['reason'] == 'reason 1'
    assert huey.purge_dead_letters() == 2
    assert huey.dead_letters() == [] and huey.dead_letter_count() == 0
    assert huey.purge_dead_letters() == 0


def test_queues_with_different_names_keep_their_own_letters(make_huey):
    one, two = make_huey(name='one'), make_huey(name='two')
    one.storage.put_dead_letter(b'1', 'one')
    assert two.dead_letters() == [] and one.dead_letter_count() == 1
    two.storage.put_dead_letter(b'2', 'two')
    assert [letter['data'] for letter in one.dead_letters()] == [b'1']


def test_binary_reasons_and_large_messages_round_trip(make_huey):
    huey = make_huey()
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    reason = 'ValueError: caf\u00e9 \u2603 \x00 newline\n'
    letter_id = huey.storage.put_dead_letter(data, reason, deliveries=7)
    letter = huey.storage.pop_dead_letter(letter_id)
    assert letter['data'] == data
    assert letter['reason'] == reason
    assert letter['deliveries'] == 7
    assert letter['id'] == letter_id


def test_a_pickled_bomb_on_a_signed_queue_is_not_unpickled(make_huey):
    huey = make_huey(SignedSerializer(secret='the secret'))
    bomb = pickle.dumps(Bomb())
    for data in (bomb, bomb + b':' + b'0' * 40, bomb + b':nothex'):
        huey.storage.enqueue(data)
        assert huey.dequeue() is None
    assert UNPICKLED == []
    assert [letter['data'] for letter in huey.dead_letters()] == [
        bomb,
        bomb + b':' + b'0' * 40,
        bomb + b':nothex',
    ]


@pytest.mark.parametrize('kind', ['sqlite', 'redis', 'priority-redis', 'postgres'])
def test_huey_354_ignores_dead_letters_and_flush_all_keeps_them(
    kind, tmp_path, request, reference_peer
):
    options = STORAGES[kind](request, tmp_path, 'shared')
    ours = Huey('shared', **options)
    storage_class = options.pop('storage_class').__name__
    options.pop('read_timeout', None)
    if 'redis' in kind or kind == 'postgres':
        options['blocking'] = False
    theirs = reference_peer(storage_class, 'shared', **options)

    ours.storage.enqueue(b'not a pickle')
    assert ours.dequeue() is None
    assert ours.dead_letter_count() == 1
    # huey 3.5.4 sees an empty queue, schedule and result store, and its flush_all leaves
    # the dead letters alone.
    assert theirs.queue_size() == 0 and theirs.schedule_size() == 0
    assert theirs.result_store_size() == 0 and theirs.result_items() == {}
    theirs.enqueue(b'from huey 3.5.4')
    assert ours.storage.dequeue() == b'from huey 3.5.4'
    theirs.flush_all()
    assert [letter['data'] for letter in ours.dead_letters()] == [b'not a pickle']
    ours.storage.close()
