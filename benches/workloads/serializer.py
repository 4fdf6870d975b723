"""Serializer round trips (serialize + deserialize) of one realistic task message."""

from huey.serializer import Serializer, SignedSerializer

from workloads._common import emit, message, metric, params, rate

VARIANTS = {
    'plain': lambda: Serializer(),
    'gzip': lambda: Serializer(compression=True),
    'zlib': lambda: Serializer(compression=True, use_zlib=True),
    'signed': lambda: SignedSerializer(secret='bench-secret', salt='huey'),
}


def round_trip(serializer, msg):
    return lambda: serializer.deserialize(serializer.serialize(msg))


def main():
    p = params()
    msg = message(1)
    metrics, sizes = [], {}
    for name, make in VARIANTS.items():
        serializer = make()
        data = serializer.serialize(msg)
        assert serializer.deserialize(data) == msg
        sizes[name] = len(data)
        ops = rate(round_trip(serializer, msg), p['min_time'])
        metrics.append(metric(f'{name} round trip', ops, 'ops/s'))
    emit(metrics, message=type(msg).__name__, sizes=sizes)


if __name__ == '__main__':
    main()
