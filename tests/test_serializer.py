"""Serializer framing: round trips, interop with Python's gzip/zlib/hmac, tamper detection."""

import gzip
import hashlib
import hmac
import logging
import pickle
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from huey.exceptions import ConfigurationError
from huey.serializer import Serializer, SignedSerializer

VALUES = [None, 0, 1, b'a' * 1024, ['k1', 'k2'], {'k': 'v'}, ('tuple', 1.5, {'nested': [1]})]

pickleable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


def python_signature(payload, secret=b'secret', salt=b'huey'):
    key = hashlib.sha1(salt + secret).digest()
    return hmac.new(key, payload, hashlib.sha1).hexdigest().encode()


@pytest.mark.parametrize(
    'kwargs',
    [
        {},
        {'compression': True},
        {'compression': True, 'use_zlib': True},
        {'compression': True, 'compression_level': 1},
        {'compression': True, 'compression_level': 9},
    ],
)
def test_round_trips(kwargs):
    s = Serializer(**kwargs)
    for value in VALUES:
        assert s.deserialize(s.serialize(value)) == value


@settings(max_examples=200, deadline=None)
@given(value=pickleable, compression=st.booleans(), use_zlib=st.booleans(), signed=st.booleans())
def test_property_round_trip(value, compression, use_zlib, signed):
    kwargs = {'compression': compression, 'use_zlib': use_zlib}
    s = SignedSerializer(secret='k', **kwargs) if signed else Serializer(**kwargs)
    assert s.deserialize(s.serialize(value)) == value


@settings(max_examples=100, deadline=None)
@given(value=pickleable, level=st.integers(0, 9))
def test_gzip_and_zlib_interop_with_python(value, level):
    payload = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    gz = Serializer(compression=True, compression_level=level)
    zl = Serializer(compression=True, compression_level=level, use_zlib=True)
    assert gzip.decompress(gz.serialize(value)) == payload
    assert zlib.decompress(zl.serialize(value)) == payload
    assert gz.deserialize(gzip.compress(payload, level)) == value
    assert zl.deserialize(zlib.compress(payload, level)) == value


def test_zlib_output_starts_like_pythons():
    # huey tells compressed messages apart by the first byte: 0x1f (gzip) or 0x78 (zlib).
    assert Serializer(compression=True, use_zlib=True).serialize('x')[:1] == b'\x78'
    assert Serializer(compression=True).serialize('x')[:2] == b'\x1f\x8b'


def test_signed_bytes_match_python_hmac():
    s = SignedSerializer(secret='secret', salt='huey')
    framed = s.serialize({'a': 1})
    payload = pickle.dumps({'a': 1}, pickle.HIGHEST_PROTOCOL)
    assert framed == payload + b':' + python_signature(payload)
    # ...and a message signed by Python's hmac (as huey 3.5.4 does) is accepted.
    other = pickle.dumps([1, 2, 3], pickle.HIGHEST_PROTOCOL)
    assert s.deserialize(other + b':' + python_signature(other)) == [1, 2, 3]


def test_signed_and_compressed_matches_python():
    s = SignedSerializer(secret='secret', compression=True, use_zlib=True)
    payload = pickle.dumps('hello', pickle.HIGHEST_PROTOCOL)
    signed = payload + b':' + python_signature(payload)
    assert zlib.decompress(s.serialize('hello')) == signed
    assert s.deserialize(zlib.compress(signed)) == 'hello'


@settings(max_examples=100, deadline=None)
@given(value=pickleable, data=st.data())
def test_any_flipped_byte_is_rejected(value, data):
    s = SignedSerializer(secret='secret')
    framed = bytearray(s.serialize(value))
    index = data.draw(st.integers(0, len(framed) - 1))
    bit = data.draw(st.integers(0, 7))
    framed[index] ^= 1 << bit
    with pytest.raises(ValueError):
        s.deserialize(bytes(framed))


def test_tampered_payload_is_not_unpickled():
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ('unpickled a message whose signature did not verify',))

    s = SignedSerializer(secret='secret')
    evil = pickle.dumps(Boom())
    with pytest.raises(ValueError, match='signature'):
        s.deserialize(evil + b':' + b'0' * 40)
    with pytest.raises(ValueError, match='separator'):
        s.deserialize(b'no separator here')


def test_wrong_secret_is_rejected():
    framed = SignedSerializer(secret='one').serialize('x')
    with pytest.raises(ValueError):
        SignedSerializer(secret='two').deserialize(framed)
    with pytest.raises(ValueError):
        SignedSerializer(secret='one', salt='other').deserialize(framed)


def test_missing_secret_or_salt():
    with pytest.raises(ConfigurationError):
        SignedSerializer()
    with pytest.raises(ConfigurationError):
        SignedSerializer(secret='x', salt='')


def test_uncompressed_data_with_compression_enabled_warns(caplog):
    plain = Serializer().serialize({'k': 'v'})
    with caplog.at_level(logging.WARNING, logger='huey.serializer'):
        assert Serializer(compression=True).deserialize(plain) == {'k': 'v'}
    assert 'does not appear to be compressed' in caplog.text


def test_truncated_compression_is_a_value_error():
    s = Serializer(compression=True)
    framed = s.serialize(list(range(100)))
    with pytest.raises(ValueError, match='decompress'):
        s.deserialize(framed[:-6])


def test_subclass_overrides_encoding():
    import json

    class JSONSerializer(Serializer):
        def _serialize(self, data):
            return json.dumps(data).encode()

        def _deserialize(self, data):
            return json.loads(data)

    s = JSONSerializer(compression=True)
    assert zlib.decompress(s.serialize({'a': [1]}), 31) == b'{"a": [1]}'
    assert s.deserialize(s.serialize({'a': [1]})) == {'a': [1]}


def test_signed_helpers():
    s = SignedSerializer(secret='secret')
    assert s._signature(b'msg') == python_signature(b'msg')
    assert s._unsign(s._sign(b'msg')) == b'msg'


def test_bad_compression_level():
    with pytest.raises(ValueError, match='compression_level'):
        Serializer(compression=True, compression_level=12)


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    task_id=st.text(max_size=300),
    args=st.lists(_values, max_size=5).map(tuple),
    kwargs=st.dictionaries(st.text(max_size=8), _values, max_size=4),
    protocol=st.sampled_from([2, 3, 4, 5]),
)
def test_message_shortcut_unpickles_to_the_same_message(task_id, args, kwargs, protocol):
    from huey.registry import Message
    from huey.serializer import dumps_message as dumps

    shared = 'repeated'  # the same object twice: memo references inside the fields
    message = Message(task_id, 'app.task', None, 2, 0, None, args + (shared, shared), kwargs)
    data = dumps(message, protocol)
    loaded = pickle.loads(data)
    assert type(loaded) is Message and loaded == message
    assert data == pickle.dumps(message, protocol) or protocol >= 4


def test_message_shortcut_falls_back_for_multi_frame_pickles():
    from huey.registry import Message
    from huey.serializer import dumps_message as dumps

    message = Message('id', 'app.task', None, 0, 0, None, (b'x' * 200_000,), {})
    assert dumps(message) == pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    assert pickle.loads(dumps(message)) == message


def test_max_decompressed_size_is_a_serializer_argument():
    s = Serializer(compression=True, max_decompressed_size=1000)
    assert s.max_decompressed_size == 1000
    assert s.deserialize(s.serialize(b'x' * 900)) == b'x' * 900
    with pytest.raises(ValueError, match='more than 1000 bytes.*max_decompressed_size'):
        s.deserialize(s.serialize(b'x' * 1000))
    signed = SignedSerializer(
        secret='k', compression=True, use_zlib=True, max_decompressed_size=10
    )
    with pytest.raises(ValueError, match='max_decompressed_size'):
        signed.deserialize(signed.serialize('a longer value than ten bytes'))
    for bad in (0, -1):
        with pytest.raises(ValueError, match='max_decompressed_size'):
            Serializer(compression=True, max_decompressed_size=bad)
    assert Serializer().max_decompressed_size == 64 * 1024 * 1024


# A process that builds a 1 GiB "zip bomb" (about 1 MB compressed), enqueues it on a MemoryHuey
# with compression and lets huey take it off the queue. It prints the dead letter's reason and
# how much its peak RSS grew while the message was decoded.
BOMB_SCRIPT = r"""
import json, resource, sys, zlib
from huey import MemoryHuey

GIB, CHUNK = 1 << 30, 16 << 20
zeros = bytes(CHUNK)
if sys.argv[1] == 'gzip':
    # Concatenated members decompress to the concatenation (Python's gzip.decompress too).
    member = zlib.compressobj(9, zlib.DEFLATED, 31)
    member = member.compress(zeros) + member.flush()
    bomb = member * (GIB // CHUNK)
else:
    # One zlib stream: 16 MiB of zeros deflated up to a full flush (so the blocks stand alone
    # and can follow each other), repeated, then the final block and the Adler-32 of it all.
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    blocks = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(GIB // CHUNK):
        adler = zlib.adler32(zeros, adler)
    bomb = b'\x78\xda' + blocks * (GIB // CHUNK) + deflate.flush() + adler.to_bytes(4, 'big')
del zeros

huey = MemoryHuey(compression=True, use_zlib=sys.argv[1] == 'zlib')
huey.storage.enqueue(bomb)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
task = huey.dequeue()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
letters = huey.storage.dead_letters()
print(json.dumps({
    'compressed': len(bomb), 'task': repr(task), 'growth_kib': after - before,
    'letters': len(letters), 'reason': letters[0]['reason'] if letters else None,
    'same_bytes': bool(letters) and letters[0]['data'] == bomb,
}))
"""


@pytest.mark.parametrize('fmt', ['gzip', 'zlib'])
def test_a_zip_bomb_is_dead_lettered_without_inflating_it(fmt):
    import json
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, '-c', BOMB_SCRIPT, fmt], capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out['compressed'] < 1_200_000
    assert out['task'] == 'None'
    assert out['letters'] == 1 and out['same_bytes']
    assert 'more than 67108864 bytes' in out['reason']
    assert 'max_decompressed_size' in out['reason']
    # Inflating it all would take 1 GiB; the limit is 64 MiB, and the output buffer grows by
    # doubling, so the peak is under about 100 MiB.
    assert out['growth_kib'] < 160 * 1024, out
