"""Message serialization: pickle in Python, framing (compression, signing) in Rust.

Framed messages are in huey 3.5.4's formats, so either reads the other's: gzip or zlib
streams, and signed messages as ``payload + b':' + hex HMAC-SHA1`` keyed with
``SHA1(salt + secret)``.
"""

import logging
import pickle

from huey._native import Framing, derive_signing_key, signature
from huey.exceptions import ConfigurationError
from huey.registry import Message
from huey.utils import encode

logger = logging.getLogger('huey.serializer')


def _short_global(cls):
    """SHORT_BINUNICODE module, SHORT_BINUNICODE qualname, STACK_GLOBAL (no memo entries)."""
    module, name = cls.__module__.encode('utf8'), cls.__qualname__.encode('utf8')
    return (
        b'\x8c' + bytes((len(module),)) + module + b'\x8c' + bytes((len(name),)) + name + b'\x93'
    )


_MESSAGE_GLOBAL = _short_global(Message)


def dumps_message(data, protocol=pickle.HIGHEST_PROTOCOL):
    """``pickle.dumps`` for task messages, with a shortcut.

    Pickling a ``Message`` (a namedtuple) costs four times its fields' tuple: the reduce
    protocol calls back into Python. The shortcut pickles the fields and wraps them in the
    opcodes pickle itself writes for a namedtuple (the class by name, then NEWOBJ), minus
    the optional frame and memo entries for the class, so the memo numbers inside the
    fields stay right. ``pickle.loads`` (huey 3.5.4's too) returns an equal ``Message``.
    """
    if type(data) is Message and protocol >= 4:
        fields = pickle.dumps(tuple(data), protocol)
        # One frame around everything (anything larger has several): PROTO, FRAME, body, STOP.
        if fields[2] == 0x95 and int.from_bytes(fields[3:11], 'little') == len(fields) - 11:
            return fields[:2] + _MESSAGE_GLOBAL + fields[11:-1] + b'\x81.'
    return pickle.dumps(data, protocol)


def is_compressed(data):
    return bool(data) and data[0] in (0x1F, 0x78)


#: The default ``max_decompressed_size``: far above any real task message.
DEFAULT_MAX_DECOMPRESSED_SIZE = 64 * 1024 * 1024


class Serializer:
    """Pickles messages; with ``compression`` gzips them (zlib with ``use_zlib``).

    ``max_decompressed_size`` bounds what one compressed message may inflate to (64 MiB by
    default). Decompression stops as soon as the output passes it, having allocated no more
    than about that much, and ``deserialize`` raises ``ValueError`` naming the limit; the
    consumer then sets the message aside as a dead letter with that reason. This keeps a
    small message crafted to inflate to gigabytes (a "zip bomb") from exhausting memory.

    Subclasses may override ``_serialize``/``_deserialize`` to change the encoding; framing
    is applied around whatever they return. ``serialize_message`` is ``serialize`` for
    task messages (Huey uses it to enqueue): with the stock encoding it takes the
    ``dumps_message`` shortcut.
    """

    def __init__(
        self,
        compression=False,
        compression_level=6,
        use_zlib=False,
        pickle_protocol=pickle.HIGHEST_PROTOCOL,
        max_decompressed_size=DEFAULT_MAX_DECOMPRESSED_SIZE,
    ):
        self.comp = compression
        self.comp_level = compression_level
        self.use_zlib = use_zlib
        self.pickle_protocol = pickle_protocol or pickle.HIGHEST_PROTOCOL
        self.max_decompressed_size = max_decompressed_size
        key = self._signing_key()
        cls = type(self)
        stock = cls.serialize is Serializer.serialize and cls._serialize is Serializer._serialize
        protocol = self.pickle_protocol
        if compression or key is not None:
            self._framing = Framing(
                bool(compression), compression_level, bool(use_zlib), key, max_decompressed_size
            )
            if stock:
                encode = self._framing.encode
                self.serialize_message = lambda message: encode(dumps_message(message, protocol))
        else:
            self._framing = None
            # Plain pickle and nothing overridden: go straight to pickle, no wrapper frames.
            if stock:
                # Closures, not functools.partial: a keyword-bound partial builds a dict for
                # every call.
                pickle_dumps = pickle.dumps
                self.serialize = lambda data: pickle_dumps(data, protocol)
                self.serialize_message = lambda message: dumps_message(message, protocol)
            if (
                cls.deserialize is Serializer.deserialize
                and cls._deserialize is Serializer._deserialize
            ):
                self.deserialize = pickle.loads

    def _signing_key(self):
        return None

    def _serialize(self, data):
        return pickle.dumps(data, self.pickle_protocol)

    def serialize_message(self, message):
        return self.serialize(message)

    def _deserialize(self, data):
        return pickle.loads(data)

    def serialize(self, data):
        if self._framing is None:
            return self._serialize(data)
        return self._framing.encode(self._serialize(data))

    def deserialize(self, data):
        if self._framing is None:
            return self._deserialize(data)
        if self.comp and not is_compressed(data):
            logger.warning(
                'compression enabled but message data does not appear to be compressed.'
            )
        return self._deserialize(self._framing.decode(data))


class SignedSerializer(Serializer):
    """Signs every message with HMAC-SHA1; a message whose signature does not verify raises
    ``ValueError`` before anything is unpickled."""

    separator = b':'

    def __init__(self, secret=None, salt='huey', **kwargs):
        if not secret or not salt:
            raise ConfigurationError(
                f'The secret and salt parameters are required by {type(self)!r}'
            )
        self.secret = encode(secret)
        self.salt = encode(salt)
        self._key = derive_signing_key(self.secret, self.salt)
        super().__init__(**kwargs)

    def _signing_key(self):
        return self._key

    def _signature(self, message):
        return signature(self._key, message)

    def _sign(self, message):
        return message + self.separator + self._signature(message)

    def _unsign(self, signed):
        return Framing(key=self._key).decode(signed)
