"""``crontab()``: parse a crontab once (in Rust) and return a validator for datetimes."""

from functools import partial

from huey._native import Crontab

_FIELDS = ('minute', 'hour', 'day', 'month', 'day_of_week')


def _as_spec(field, value):
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    raise TypeError(f'crontab {field} must be a str or int, got {type(value).__name__}: {value!r}')


def crontab(minute='*', hour='*', day='*', month='*', day_of_week='*', strict=False):
    """Return a callable ``validate(datetime) -> bool`` matching the given crontab.

    Day-of-week counts 0 = Sunday (7 is also Sunday). Fields accept ``*``, ``*/n``, ``m-n``
    (wrapping when ``m > n``), ``m-n/step``, comma-separated lists and ints. Pieces that fit
    none of these are ignored unless ``strict``; a field that then matches nothing, or a value
    out of range, raises ``ValueError``.
    """
    values = (minute, hour, day, month, day_of_week)
    specs = [_as_spec(f, v) for f, v in zip(_FIELDS, values)]
    return Crontab(*specs, bool(strict))


crontab.hourly = partial(crontab, minute='0')
crontab.daily = partial(crontab, minute='0', hour='0')
