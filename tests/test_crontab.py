"""crontab(): parsing rules, errors, and every minute checked against a simple model."""

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from huey import crontab

FIELDS = {  # name -> (lowest, highest) value a user may write
    'minute': (0, 59),
    'hour': (0, 23),
    'day': (1, 31),
    'month': (1, 12),
    'day_of_week': (0, 7),
}


def model_values(field, spec):
    """An independent reading of the crontab grammar: the set of values a field matches."""
    lo, hi = FIELDS[field]
    values = set()
    for piece in spec.split(','):
        if piece == '*':
            values.update(range(lo, hi + 1))
        elif piece.startswith('*/'):
            values.update(range(lo, hi + 1, int(piece[2:])))
        elif '-' in piece:
            bounds, _, step = piece.partition('/')
            start, end = (int(x) for x in bounds.split('-'))
            if start <= end:
                seq = list(range(start, end + 1))
            else:
                top = 6 if field == 'day_of_week' else hi
                seq = list(range(start, top + 1)) + list(range(lo, end + 1))
            values.update(seq[:: int(step or 1)])
        else:
            values.add(int(piece))
    if field == 'day_of_week':
        values = {v % 7 for v in values}
    return values


def model_matches(specs, dt):
    sunday_first = (dt.weekday() + 1) % 7
    fields = {
        'minute': dt.minute,
        'hour': dt.hour,
        'day': dt.day,
        'month': dt.month,
        'day_of_week': sunday_first,
    }
    return all(fields[f] in model_values(f, specs[f]) for f in FIELDS)


def piece(field):
    lo, hi = FIELDS[field]
    value = st.integers(lo, hi)
    forms = [
        st.just('*'),
        value.map(str),
        st.tuples(value, value).map(lambda p: f'{p[0]}-{p[1]}'),
        st.tuples(value, value, st.integers(1, 7)).map(lambda p: f'{p[0]}-{p[1]}/{p[2]}'),
    ]
    if field != 'day_of_week':
        forms.append(st.integers(1, hi + 1).map(lambda n: f'*/{n}'))
    return st.one_of(forms)


def field_spec(field):
    return st.lists(piece(field), min_size=1, max_size=3).map(','.join)


crontab_specs = st.fixed_dictionaries({f: field_spec(f) for f in FIELDS})


@settings(max_examples=150, deadline=None)
@given(
    specs=crontab_specs,
    start=st.datetimes(datetime.datetime(1990, 1, 1), datetime.datetime(2090, 1, 1)),
)
def test_every_minute_of_a_day_agrees_with_the_model(specs, start):
    validate = crontab(**specs)
    t = start.replace(second=0, microsecond=0)
    for _ in range(24 * 60):
        assert validate(t) == model_matches(specs, t), (specs, t)
        t += datetime.timedelta(minutes=1)


@settings(max_examples=300, deadline=None)
@given(specs=crontab_specs, dt=st.datetimes())
def test_random_datetimes_agree_with_the_model(specs, dt):
    assert crontab(**specs)(dt) == model_matches(specs, dt)


def test_every_n_minutes():
    validate = crontab(minute='*/15')
    base = datetime.datetime(2026, 1, 1, 10)
    hits = [m for m in range(60) if validate(base.replace(minute=m))]
    assert hits == [0, 15, 30, 45]


def test_wrapping_hour_range():
    validate = crontab(minute='0', hour='22-2')
    hits = [h for h in range(24) if validate(datetime.datetime(2026, 1, 1, h, 0))]
    assert hits == [0, 1, 2, 22, 23]


def test_day_of_week_sunday_is_zero_and_seven():
    sunday = datetime.datetime(2026, 11, 29, 12, 0)
    monday = sunday + datetime.timedelta(days=1)
    for spec in ('0', '7', 0, 7):
        validate = crontab(day_of_week=spec)
        assert validate(sunday) and not validate(monday)


def test_ints_are_accepted():
    validate = crontab(minute=5, hour=3)
    assert validate(datetime.datetime(2026, 1, 1, 3, 5))
    assert not validate(datetime.datetime(2026, 1, 1, 3, 6))


def test_hourly_and_daily():
    at_midnight = datetime.datetime(2026, 3, 4, 0, 0)
    assert crontab.hourly()(at_midnight.replace(hour=7))
    assert not crontab.hourly()(at_midnight.replace(minute=1))
    assert crontab.daily()(at_midnight)
    assert not crontab.daily()(at_midnight.replace(hour=1))


def test_aware_datetimes_use_their_own_fields():
    tz = datetime.timezone(datetime.timedelta(hours=5))
    validate = crontab(minute='30', hour='4')
    assert validate(datetime.datetime(2026, 1, 1, 4, 30, tzinfo=tz))
    assert not validate(datetime.datetime(2026, 1, 1, 23, 30, tzinfo=datetime.timezone.utc))


def test_dates_and_subclasses():
    class MyDateTime(datetime.datetime):
        pass

    validate = crontab(minute='0', hour='0', day='4')
    assert validate(datetime.date(2026, 3, 4))
    assert validate(MyDateTime(2026, 3, 4, 0, 0))
    assert not validate(MyDateTime(2026, 3, 5, 0, 0))


@pytest.mark.parametrize(
    'kwargs, fragment',
    [
        ({'minute': '61'}, '61 is not a valid minute (0-59)'),
        ({'minute': 60}, '60 is not a valid minute'),
        ({'hour': '0-24'}, '0-24'),
        ({'month': '0'}, '0 is not a valid month'),
        ({'day': '32'}, '32 is not a valid day'),
        ({'day_of_week': '8'}, '8 is not a valid day_of_week'),
        ({'day_of_week': '*/3'}, 'day_of_week'),
        ({'minute': '0-30/0'}, 'step'),
        ({'minute': '*/0'}, 'interval'),
        ({'minute': 'foo'}, "minute='foo' matches no values"),
        ({'minute': '1,foo', 'strict': True}, "'foo' is not a valid minute"),
    ],
)
def test_bad_input_raises_value_error_naming_it(kwargs, fragment):
    with pytest.raises(ValueError) as exc:
        crontab(**kwargs)
    assert fragment in str(exc.value)


def test_unparseable_pieces_are_ignored_unless_strict():
    validate = crontab(minute='5,bogus')
    assert validate(datetime.datetime(2026, 1, 1, 0, 5))
    assert not validate(datetime.datetime(2026, 1, 1, 0, 6))
    with pytest.raises(ValueError, match="'bogus' is not a valid minute"):
        crontab(minute='5,bogus', strict=True)


@pytest.mark.parametrize('value', [-1, -5])
def test_negative_ints_are_rejected(value):
    with pytest.raises(ValueError):
        crontab(minute=value)


def test_wrong_types():
    with pytest.raises(TypeError, match='minute must be a str or int'):
        crontab(minute=[1, 2])
    with pytest.raises(TypeError, match='expects a datetime'):
        crontab()('2026-01-01')


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=12), strict=st.booleans())
def test_random_strings_raise_only_value_error(text, strict):
    try:
        validate = crontab(minute=text, strict=strict)
    except Exception as exc:
        assert isinstance(exc, ValueError), repr(exc)
    else:  # accepted: the result is a working validator
        assert isinstance(validate(datetime.datetime(2026, 1, 1, 0, 0)), bool)
