"""``make demo``: a short tour of what huey-rs does (``python -m huey.demo``)."""

import datetime

from huey import crontab
from huey.serializer import SignedSerializer


def next_matches(validate, start, count):
    found, t = [], start.replace(second=0, microsecond=0)
    while len(found) < count:
        t += datetime.timedelta(minutes=1)
        if validate(t):
            found.append(t)
    return found


def main():
    start = datetime.datetime.now()
    spec = crontab(minute='*/15', hour='9-17', day_of_week='1-5')
    print(f'{spec!r} next matches after {start:%Y-%m-%d %H:%M}:')
    for t in next_matches(spec, start, 5):
        print('   ', t.strftime('%a %Y-%m-%d %H:%M'))

    serializer = SignedSerializer(secret='demo secret', compression=True)
    message = {'task': 'demo.add', 'args': (1, 2), 'kwargs': {}}
    framed = serializer.serialize(message)
    print(f'signed + gzipped message: {len(framed)} bytes, round trip ->',
          serializer.deserialize(framed))


if __name__ == '__main__':
    main()
