"""Peak memory of a MemoryHuey holding N queued tasks (enqueued by calling a task)."""

import resource

from workloads._common import emit, make_huey, metric, params


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main():
    p = params()
    n = p['tasks']
    huey = make_huey('memory')

    @huey.task()
    def send(address, user_id):
        return user_id

    send('warm-up@example.com', -1)  # first call imports and caches what a call needs
    before = peak_rss_mib()
    for i in range(n):
        send('user@example.com', i)
    grown = peak_rss_mib() - before
    queued = len(huey.pending())
    if queued != n + 1:
        raise RuntimeError(f'{queued} tasks queued, expected {n + 1}')
    emit([metric(f'peak RSS growth, {n:,} queued', grown, 'MiB', higher_is_better=False)])


if __name__ == '__main__':
    main()
