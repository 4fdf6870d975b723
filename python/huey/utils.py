"""Small helpers shared by the package: time normalisation, sentinels, file locks.

``Error``, ``SKIPPED`` and ``ChordConfig`` live here because huey 3.5.4 pickles them by this
module path; moving them would break results written by either package.
"""

import calendar
import contextlib
import datetime
import os
import sys
import threading
import time
from collections import namedtuple

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


if sys.version_info < (3, 12):
    utcnow = datetime.datetime.utcnow
else:

    def utcnow():
        """The current UTC time as a naive datetime."""
        return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


Error = namedtuple('Error', ('metadata',))
ChordConfig = namedtuple('ChordConfig', ('cid', 'size', 'idx', 'callback'))


class _Skipped:
    """Stored in place of a result when a task was skipped (pickles as a global reference)."""

    def __repr__(self):
        return 'SKIPPED'

    def __reduce__(self):
        return 'SKIPPED'


SKIPPED = _Skipped()


def load_class(path):
    """Import ``'package.module.Name'`` and return ``Name``."""
    module_name, _, name = path.rpartition('.')
    if not module_name:
        raise ValueError(f'{path!r} is not a dotted path to a class')
    __import__(module_name)
    return getattr(sys.modules[module_name], name)


def is_naive(dt):
    return dt.utcoffset() is None


def make_naive(dt):
    """An aware datetime as a naive one in the local time zone."""
    ts = calendar.timegm(dt.utctimetuple())
    return datetime.datetime(*time.localtime(ts)[:6])


def aware_to_utc(dt):
    return dt.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def local_to_utc(dt):
    """A naive local datetime as a naive UTC one."""
    return datetime.datetime(*time.gmtime(time.mktime(dt.timetuple()))[:6])


def normalize_time(eta=None, delay=None, utc=True):
    """Resolve an ``eta`` (datetime) or ``delay`` (seconds or timedelta) to a naive datetime,
    in UTC when ``utc`` else local time."""
    if (delay is None) == (eta is None):
        raise ValueError('Specify either an eta (datetime) or delay (seconds)')
    if delay is not None:
        if not isinstance(delay, datetime.timedelta):
            if isinstance(delay, bool) or not isinstance(delay, (int, float)):
                raise TypeError(f'delay must be a number of seconds or a timedelta, got {delay!r}')
            delay = datetime.timedelta(seconds=delay)
        return (utcnow() if utc else datetime.datetime.now()) + delay
    if not isinstance(eta, datetime.datetime):
        raise ValueError('eta must be a datetime instance')
    if utc:
        return local_to_utc(eta) if is_naive(eta) else aware_to_utc(eta)
    return eta if is_naive(eta) else make_naive(eta)


def normalize_expire_time(expires, utc=True):
    if isinstance(expires, datetime.datetime):
        return normalize_time(eta=expires, utc=utc)
    return normalize_time(delay=expires, utc=utc)


def encode(s):
    """``str`` -> UTF-8 bytes; bytes pass through; None stays None; anything else via str()."""
    if isinstance(s, bytes):
        return s
    if isinstance(s, str):
        return s.encode('utf8')
    if s is not None:
        return str(s).encode('utf8')
    return None


def decode(s):
    """UTF-8 bytes -> ``str``; anything else passes through."""
    if isinstance(s, bytes):
        return s.decode('utf8')
    return s


class FileLock:
    """An exclusive ``flock`` on a file; each thread locks through its own descriptor."""

    def __init__(self, filename):
        self.filename = filename
        self._local = threading.local()
        dirname = os.path.dirname(filename)
        if dirname:
            os.makedirs(dirname, exist_ok=True)

    def acquire(self):
        fd = os.open(self.filename, os.O_CREAT | os.O_RDWR)
        self._local.fd = fd
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)

    def release(self):
        fd = getattr(self._local, 'fd', None)
        if fd is not None:
            self._local.fd = None
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.release()


@contextlib.contextmanager
def noop_context():
    yield
