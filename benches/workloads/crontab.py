"""Crontab matching: 200 mixed expressions, each tested against a month of minutes."""

import datetime
import time

from huey import crontab

from workloads._common import emit, metric, params

# (minute, hour, day, month, day_of_week): the shapes people write, from trivial to busy.
SHAPES = [
    ('*', '*', '*', '*', '*'),
    ('*/5', '*', '*', '*', '*'),
    ('0', '*', '*', '*', '*'),
    ('0', '0', '*', '*', '*'),
    ('15', '3', '*', '*', '*'),
    ('*/15', '9-17', '*', '*', '1-5'),
    ('0,30', '8-18/2', '*', '*', '*'),
    ('0', '12', '1', '*', '*'),
    ('0', '0', '1,15', '*', '*'),
    ('45', '23', '*', '*', '0'),
    ('0', '6', '*', '1-3', '*'),
    ('*/10', '22-2', '*', '*', '*'),
    ('5-55/10', '*', '*', '*', '6,0'),
    ('0', '*/4', '*/2', '*', '*'),
    ('30', '2', '*', '*', '1'),
    ('1,2,3,5,8,13,21,34,55', '*', '*', '*', '*'),
    ('0', '9', '*', '2,5,8,11', '1-5'),
    ('*/7', '*/3', '*', '*', '*'),
    ('20', '4', '10-20', '*', '*'),
    ('0', '0', '*', '*', '7'),
]


def expressions(count):
    """``count`` crontabs: the shapes above, shifted so no two are identical."""
    out = []
    for i in range(count):
        minute, hour, day, month, dow = SHAPES[i % len(SHAPES)]
        shift = i // len(SHAPES)
        if minute.isdigit():
            minute = str((int(minute) + shift) % 60)
        if hour.isdigit():
            hour = str((int(hour) + shift) % 24)
        out.append(crontab(minute=minute, hour=hour, day=day, month=month, day_of_week=dow))
    return out


def main():
    p = params()
    checks = expressions(p['expressions'])
    start = datetime.datetime(2024, 3, 1)
    minutes = [start + datetime.timedelta(minutes=m) for m in range(0, 31 * 24 * 60, p['stride'])]
    t0 = time.perf_counter()
    matches = 0
    for check in checks:
        for dt in minutes:
            if check(dt):
                matches += 1
    elapsed = time.perf_counter() - t0
    emit([metric('evaluations', len(checks) * len(minutes) / elapsed, 'evals/s')], matches=matches)


if __name__ == '__main__':
    main()
