"""Calls one entry point of ``huey._native`` with hostile arguments (run by test_native_fuzz.py).

``python native_fuzz_worker.py TARGET...`` (TARGET: a function name, a class name for its
constructor, or ``Class.method``) runs every case for those targets in this process, in the
current directory (relative paths land there). Before each call it writes the case to
stderr, so a process killed by a signal names the call that killed it. At the end it prints
one JSON object: the number of cases per target and the failures: calls that raised something
other than an ``Exception`` subclass (``pyo3_runtime.PanicException`` is a
``BaseException``), and valid calls that raised at all (a harness whose valid arguments are
refused would test nothing but argument parsing).

Each parameter is given every hostile value in turn while the others keep a valid value; the
objects called on are seeded first so that waits find what they wait for (a huge but finite
timeout is valid and would otherwise block for good).
"""

import datetime
import inspect
import json
import os
import sys

import huey._native as native

NAN, INF = float('nan'), float('inf')
HUGE_BYTES = b'\xab' * (4 << 20)


class NaiveSubclass(datetime.datetime):
    pass


class BrokenZone(datetime.tzinfo):
    def utcoffset(self, dt):
        raise RuntimeError('utcoffset failed')


class HugeZone(datetime.tzinfo):
    def utcoffset(self, dt):
        return datetime.timedelta(hours=23, minutes=59)


class TimeTupleOf:
    """Not a datetime, but has ``timetuple()`` (crontab accepts such objects)."""

    def __init__(self, fields):
        self.fields = fields

    def timetuple(self):
        if isinstance(self.fields, Exception):
            raise self.fields
        return self.fields


def raising(*_):
    raise RuntimeError('callback failed')


def exits(*_):
    sys.exit(3)


GENERIC = [
    NAN,
    INF,
    -INF,
    -1,
    -1.5,
    0,
    1.5,
    True,
    2**31,
    2**63,
    2**64,
    -(2**63) - 1,
    10**100,
    None,
    '',
    'a\x00b',
    '\ud800',
    'x' * 100_000,
    b'',
    b'\x00',
    b'\xff' * 10,
    HUGE_BYTES,
    bytearray(b'x'),
    [],
    ['k', 1],
    {},
    object(),
]

DATETIMES = [
    datetime.datetime(1, 1, 1),
    datetime.datetime(9999, 12, 31, 23, 59, 59, 999_999),
    datetime.datetime(9999, 12, 31, tzinfo=datetime.timezone(-datetime.timedelta(hours=23))),
    datetime.datetime(1, 1, 1, tzinfo=HugeZone()),
    datetime.datetime(2024, 1, 1, tzinfo=BrokenZone()),
    NaiveSubclass(2024, 2, 29),
    datetime.date(2024, 1, 1),
    datetime.time(12, 0),
    TimeTupleOf((2024, 2, 30, 0, 0)),
    TimeTupleOf((2024, 13, 1, 25, 61)),
    TimeTupleOf((10**20, 1, 1, 0, 0)),
    TimeTupleOf((-1, -1, -1, -1, -1)),
    TimeTupleOf(()),
    TimeTupleOf(None),
    TimeTupleOf(RuntimeError('timetuple failed')),
]

CALLBACKS = [
    raising,
    lambda data: NAN,
    lambda data: INF,
    lambda data: 10**100,
    lambda data: -(10**100),
    lambda data: 'high',
    lambda data: object(),
    exits,
    'not callable',
]

CRONTAB_SPECS = ['', ',', ',,,', '-', '1-', '-1', '*/', '*/0', '1-2/0', '99999999999999999999']

PATHS = ['', 'a\x00b', 'x' * 5000, 'regular-file', b'bytes-dir', 'dir/with/levels']

#: Special values for parameters whose meaning calls for more than the generic ones.
SPECIAL = {
    'ts': DATETIMES,
    'timestamp': DATETIMES,
    'priority_of': CALLBACKS,
    'minute': CRONTAB_SPECS,
    'hour': CRONTAB_SPECS,
    'day': CRONTAB_SPECS,
    'month': CRONTAB_SPECS,
    'day_of_week': CRONTAB_SPECS,
    'path': PATHS,
    'tokens': [['a\x00b'], [1], ['x' * 5000], 'not-a-list', [None]],
    'keys': [['a\x00b'], [1], ['\ud800'], 'not-a-list', [b'k', 'k'], [None]],
}

TS = datetime.datetime(2024, 3, 5, 10, 15)
KEY = bytes(range(20))

#: A valid value for every parameter name of every entry point.
VALID = {
    'data': b'payload',
    'payload': b'payload',
    'priority': 1,
    'timeout': 0.01,
    'limit': 5,
    'n': 2,
    'ts': TS,
    'timestamp': TS,
    'key': 'k',
    'delete_key': 'gone',
    'value': b'v',
    'is_result': False,
    'keys': ['k', 'missing'],
    'amount': 1,
    'reason': 'why',
    'deliveries': 1,
    'id': '1',
    'consumer': 'consumer-1',
    'token': 'token-1',
    'tokens': ['token-1'],
    'lease': 30.0,
    'max_deliveries': 3,
    'now': 0.0,
    'priority_of': None,
    'backoff': 1.15,
    'max_delay': 0.01,
    'minute': '*/5',
    'hour': '9-17',
    'day': '1,15',
    'month': '*',
    'day_of_week': '1-5',
    'strict': False,
    'compression': True,
    'level': 6,
    'use_zlib': False,
    'max_decompressed_size': 1 << 20,
    'secret': b'secret',
    'salt': b'huey',
    'message': b'message',
    'name': 'timeout',
    'path': 'store',
    'levels': 2,
    'use_thread_lock': False,
    'fsync': False,
    'directory': False,
}


#: Where one parameter name means something else for one target.
VALID_FOR = {
    'Crontab.matches_fields': {'month': 3, 'day': 5, 'day_of_week': 2, 'hour': 10, 'minute': 15},
    'Framing': {'key': KEY},
    'signature': {'key': KEY},
    'check_seconds': {'value': 1.5},
}


def seeded(store):
    """``store`` holding what the waits wait for: a queued message and the key ``'k'``."""
    store.enqueue(b'seed', 0)
    store.put_data('k', b'v')
    store.add_to_schedule(b'scheduled', datetime.datetime(2000, 1, 1))
    store.put_dead_letter(b'dead', 'seeded')
    return store


def instance_for(cls_name):
    """A fresh (or, for the File store, re-seeded) object to call methods on."""
    if cls_name == 'MemoryStore':
        return seeded(native.MemoryStore())
    if cls_name == 'FileStore':
        return seeded(native.FileStore('store'))
    if cls_name == 'Framing':
        return native.Framing(True, 6, False, KEY, 1 << 20)
    if cls_name == 'Crontab':
        return native.Crontab('*/5', '9-17', '1,15', '*', '1-5')
    if cls_name == 'PathWatcher':
        return native.PathWatcher.create('watched', directory=True)
    raise SystemExit(f'no instance recipe for {cls_name}')


def params_of(func):
    if getattr(func, '__name__', '') == '__call__':
        return ['timestamp']
    if isinstance(func, type) and func.__text_signature__ is None:
        return None  # made by a factory (PathWatcher.create), not called
    names = []
    for p in inspect.signature(func).parameters.values():
        if p.name != 'self' and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            names.append(p.name)
    return names


def valid_args(target, names):
    missing = [n for n in names if n not in VALID]
    if missing:
        raise SystemExit(f'{target}: no valid value for parameter(s) {missing}; add to VALID')
    overrides = VALID_FOR.get(target, {})
    args = [overrides.get(n, VALID[n]) for n in names]
    if target == 'Framing.decode':
        args = [instance_for('Framing').encode(b'payload')]
    return args


VALID_CASE = 'valid arguments'


def cases(target, names):
    """(description, args) for every hostile value of every parameter, after the valid call."""
    base = valid_args(target, names)
    yield VALID_CASE, base
    for i, name in enumerate(names):
        for value in SPECIAL.get(name, []) + GENERIC:
            args = list(base)
            args[i] = value
            shown = repr(value)
            if len(shown) > 60:
                shown = shown[:57] + '...'
            yield f'{name}={shown}', args


def prepare_directory():
    with open('regular-file', 'w') as f:
        f.write('not a directory')
    os.mkdir('watched')


def run_target(target, failures):
    """Runs every case of ``target``; returns how many ran."""
    cls_name, _, method = target.partition('.')
    owner = getattr(native, cls_name)
    func = getattr(owner, method) if method else owner
    names = params_of(func)
    if names is None:
        try:
            func()
        except TypeError:
            return 1  # "cannot create instances": the refusal is the whole surface
        if not method and sys.version_info < (3, 10):
            # Before 3.10 an abi3 class carries no text signature, so a constructor whose
            # arguments all have defaults looks like none: only the bare call is tried here.
            return 1
        failures.append(f'{target}() made an instance with no constructor')
        return 1
    count = 0
    for description, args in cases(target, names):
        call = getattr(instance_for(cls_name), method) if method else owner
        sys.stderr.write(f'CASE {target}({description})\n')
        sys.stderr.flush()
        count += 1
        try:
            call(*args)
        except Exception as exc:
            # A clean Python exception is what hostile input should get; valid input none.
            if description == VALID_CASE:
                failures.append(f'{target}({description}) raised {type(exc).__name__}: {exc}')
        except BaseException as exc:  # PanicException, SystemExit, KeyboardInterrupt...
            if isinstance(exc, SystemExit) and 'exits' in description:
                continue  # our own callback raised it: passing it on is right
            failures.append(f'{target}({description}) raised {type(exc).__name__}: {exc}')
    return count


def main():
    prepare_directory()
    failures, counts = [], {}
    for target in sys.argv[1:]:
        counts[target] = run_target(target, failures)
    print(json.dumps({'cases': counts, 'failures': failures}))


if __name__ == '__main__':
    main()
