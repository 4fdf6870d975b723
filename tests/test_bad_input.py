"""Bad input, swept with hypothesis: random bytes and random pickles into the serializers and
into every storage's queue, wrong argument types into the public API, and a consumer process
that must survive a queue full of garbage.

Which exceptions may come out of ``Serializer.deserialize`` on untrusted bytes:

- Framing (compression, signature) fails with ``ValueError`` only, before anything is
  unpickled: so ``SignedSerializer.deserialize`` raises ``ValueError`` for every message
  that was not signed with its key.
- Unpickling raises ``pickle.UnpicklingError``, and, as the pickle documentation warns, "other
  exceptions ... including (but not necessarily limited to) AttributeError, EOFError,
  ImportError, and IndexError"; random bytes also give ``ValueError`` (and its subclass
  ``UnicodeDecodeError``), ``TypeError``, ``OverflowError``, ``KeyError`` and ``MemoryError``
  (a memo index of up to 2**32 makes pickle allocate that many slots). ``UNPICKLE_ERRORS``
  is that list; anything else is a bug.

Unsigned pickle queues trust whoever can write to them: a few crafted bytes make pickle
allocate gigabytes, or run code. The sweeps below cap the address space so such an input
fails fast with MemoryError instead of exhausting the machine.
"""

import contextlib
import datetime
import os
import pickle
import random
import resource
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from huey import crontab
from huey.api import Huey
from huey.serializer import Serializer, SignedSerializer
from huey.storage import (
    FileStorage,
    MemoryStorage,
    PriorityRedisStorage,
    RedisStorage,
    SqliteStorage,
)

UNPICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    OverflowError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
    MemoryError,
)

HEADROOM = 256 << 20  # bytes of address space a sweep may use beyond what is mapped now


def _mapped_bytes():
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith('VmSize:'):
                return int(line.split()[1]) * 1024
    raise RuntimeError('no VmSize in /proc/self/status')


@contextlib.contextmanager
def address_space_cap():
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _mapped_bytes() + HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture
def capped():
    with address_space_cap():
        yield


SWEEP = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Pickle-able values of many shapes, the things producers might put on a queue by mistake.
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.datetimes()
    | st.decimals(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        | st.frozensets(st.integers(), max_size=4)
    ),
    max_leaves=12,
)

raw = st.binary(max_size=64) | st.binary(max_size=62).map(lambda b: b'\x80\x05' + b)


def _deserialize_or_allowed(serializer, data, allowed):
    try:
        return serializer.deserialize(data)
    except allowed:
        return None


# -- serializers ---------------------------------------------------------------------------


@SWEEP
@given(data=raw)
def test_plain_serializer_raises_only_unpickle_errors(capped, data):
    _deserialize_or_allowed(Serializer(), data, UNPICKLE_ERRORS)


@SWEEP
@given(data=raw)
def test_compressed_serializer_raises_only_unpickle_errors(capped, data):
    for serializer in (Serializer(compression=True), Serializer(compression=True, use_zlib=True)):
        _deserialize_or_allowed(serializer, data, UNPICKLE_ERRORS)


@SWEEP
@given(data=raw, separator=st.booleans(), sig=st.text('0123456789abcdef', max_size=40))
def test_signed_serializer_rejects_unsigned_bytes_with_value_error(data, separator, sig):
    if separator:
        data = data + b':' + sig.encode()
    with pytest.raises(ValueError):
        SignedSerializer(secret='s3cret').deserialize(data)


@SWEEP
@given(value=values)
def test_random_pickles_round_trip_and_are_rejected_unsigned(value):
    signed = SignedSerializer(secret='s3cret', compression=True)
    data = signed.serialize(value)
    assert signed.deserialize(data) == value
    with pytest.raises(ValueError):
        signed.deserialize(pickle.dumps(value))  # never signed
    with pytest.raises(ValueError):
        SignedSerializer(secret='other').deserialize(data)
    with pytest.raises(ValueError):
        signed.deserialize(data[:-1])  # signature cut short


@SWEEP
@given(value=values, cut=st.integers(min_value=0, max_value=200))
def test_truncated_compressed_messages_raise_allowed_errors(capped, value, cut):
    serializer = Serializer(compression=True)
    data = serializer.serialize(value)
    _deserialize_or_allowed(serializer, data[: min(cut, len(data) - 1)], UNPICKLE_ERRORS)


# -- storages: random bytes on the queue are set aside, never raised ------------------------


def _redis(cls):
    def make(request, tmp_path):
        server = request.getfixturevalue('redis_db')
        return dict(storage_class=cls, host=server.host, port=server.port, blocking=False)

    return make


STORAGES = {
    'memory': lambda request, tmp_path: dict(storage_class=MemoryStorage),
    'file': lambda request, tmp_path: dict(
        storage_class=FileStorage, path=str(tmp_path / 'files')
    ),
    'sqlite': lambda request, tmp_path: dict(
        storage_class=SqliteStorage, filename=str(tmp_path / 'huey.db')
    ),
    'redis': _redis(RedisStorage),
    'priority-redis': _redis(PriorityRedisStorage),
}


@pytest.fixture(params=sorted(STORAGES))
def huey(request, tmp_path):
    huey = Huey('sweep', **STORAGES[request.param](request, tmp_path))

    @huey.task()
    def add(a, b):
        return a + b

    yield huey
    huey.storage.close()


@SWEEP
@given(data=raw | values.map(pickle.dumps))
def test_random_messages_on_every_queue_are_set_aside(huey, capped, data):
    huey.purge_dead_letters()
    huey.storage.enqueue(data)
    assert huey.dequeue() is None
    (letter,) = huey.dead_letters()
    assert letter['data'] == data
    assert letter['reason']
    assert huey.pending_count() == 0


@SWEEP
@given(data=raw)
def test_random_messages_on_every_schedule_are_set_aside(huey, capped, data):
    huey.purge_dead_letters()
    huey.storage.add_to_schedule(data, datetime.datetime(2000, 1, 1))
    assert huey.read_schedule(datetime.datetime(2001, 1, 1)) == []
    assert [letter['data'] for letter in huey.dead_letters()] == [data]


# -- public API: wrong argument types raise ValueError or TypeError -------------------------

anything = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary()
    | st.lists(st.integers(), max_size=3)
    | st.builds(object)
)


@pytest.fixture
def memory_huey():
    huey = Huey('api', storage_class=MemoryStorage)

    @huey.task()
    def add(a, b):
        return a + b

    huey.add = add
    return huey


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(['minute', 'hour', 'day', 'month', 'day_of_week']),
    spec=st.text(max_size=12) | st.text('0123456789*/,-', max_size=12) | anything,
)
def test_crontab_rejects_bad_specs_with_value_or_type_error(field, spec):
    try:
        validate = crontab(**{field: spec})
    except (ValueError, TypeError):
        return
    assert isinstance(validate(datetime.datetime(2024, 2, 29, 13, 45)), bool)


@SWEEP
@given(delay=anything.filter(lambda v: not isinstance(v, (int, float)) or isinstance(v, bool)))
def test_schedule_with_a_non_numeric_delay_raises_type_or_value_error(memory_huey, delay):
    try:
        memory_huey.add.schedule((1, 2), delay=delay)
    except (ValueError, TypeError):
        return
    # bool is an int: a delay of True/False seconds is accepted, as in huey.
    assert isinstance(delay, bool) or delay is None


@SWEEP
@given(eta=anything)
def test_schedule_with_a_non_datetime_eta_raises_value_error(memory_huey, eta):
    if eta is None:
        return
    with pytest.raises((ValueError, TypeError)):
        memory_huey.add.schedule((1, 2), eta=eta)


@SWEEP
@given(thing=anything)
def test_enqueue_of_a_non_task_raises_type_error(memory_huey, thing):
    with pytest.raises(TypeError):
        memory_huey.enqueue(thing)


@SWEEP
@given(letter_id=anything)
def test_requeue_of_any_unknown_id_is_false(memory_huey, letter_id):
    assert memory_huey.requeue_dead_letter(letter_id) is False


@SWEEP
@given(limit=anything)
def test_dead_letters_limit_is_checked(memory_huey, limit):
    try:
        assert memory_huey.dead_letters(limit) == []
    except (ValueError, TypeError):
        assert limit is not None


# -- a consumer process survives a queue of garbage ----------------------------------------

APP = """
import os
import resource
if os.environ.get('GARBAGE_APP_CAP'):  # the consumer process only, not the test importing it
    resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, resource.RLIM_INFINITY))
from huey import SqliteHuey
huey = SqliteHuey('garbage', filename={db!r})

@huey.task()
def add(a, b):
    return a + b
"""


def test_consumer_process_survives_garbage_and_runs_the_good_tasks(tmp_path):
    db = str(tmp_path / 'huey.db')
    (tmp_path / 'garbage_app.py').write_text(textwrap.dedent(APP.format(db=db)))
    sys.path.insert(0, str(tmp_path))
    try:
        import garbage_app
    finally:
        sys.path.remove(str(tmp_path))
    huey = garbage_app.huey
    rnd = random.Random(7)
    garbage = [bytes(rnd.randrange(256) for _ in range(rnd.randrange(64))) for _ in range(200)]
    results = []
    for i, data in enumerate(garbage):
        huey.storage.enqueue(data)
        if i % 20 == 0:
            results.append((i, garbage_app.add(i, 1)))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]), GARBAGE_APP_CAP='1'
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'huey.bin.huey_consumer',
            'garbage_app.huey',
            '-w',
            '2',
            '-d',
            '0.001',
            '-m',
            '0.01',
            '-q',
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for i, result in results:
            assert result.get(blocking=True, timeout=60) == i + 1
        deadline = time.monotonic() + 60
        while huey.dead_letter_count() < len(garbage) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling another process's progress; no event to wait on
        assert proc.poll() is None, proc.stderr.read().decode()
        letters = huey.dead_letters()
        assert sorted(letter['data'] for letter in letters) == sorted(garbage)
        assert huey.pending_count() == 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err.decode()[-2000:]
    sys.modules.pop('garbage_app', None)
