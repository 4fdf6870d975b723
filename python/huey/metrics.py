"""OpenMetrics for huey, for Prometheus to scrape (the ``huey-rs[metrics]`` extra brings
``prometheus_client``).

From the consumer: ``huey_consumer app.huey --metrics 127.0.0.1:9100`` serves them, every
worker process added up. From your own endpoint::

    from prometheus_client import REGISTRY
    from huey.metrics import HueyCollector

    REGISTRY.register(HueyCollector(huey))   # counts what this process runs, plus gauges

Metric families (label ``queue`` is the Huey's name on all of them):

- ``huey_tasks_total{task, outcome}``: counter, one per signal a task reached: executed,
  complete, error, retrying, revoked, expired, locked, dead-lettered (``task="unknown"``:
  the message could not be decoded), canceled, timeout, rate-limited, interrupted, scheduled.
- ``huey_task_duration_seconds{task}``: histogram of run times (executing to its end).
- gauges read from the storage at scrape time: ``huey_queue_depth``,
  ``huey_scheduled_tasks``, ``huey_inflight_tasks``, ``huey_oldest_lease_age_seconds``
  (seconds since the stalest in-flight lease was granted or renewed), ``huey_dead_letters``,
  ``huey_results_stored``, ``huey_consumers`` (consumers whose heartbeat is current) and
  ``huey_storage_up`` (0 when the storage could not be read; the others are then absent).
- ``huey_consumer_info{implementation, version, workers, worker_type}`` from a consumer.

Counting costs one dict increment per signal on the thread that sent it; everything else
happens when Prometheus scrapes.
"""

import re
import time

from huey.monitor import BUCKETS, Tally, implementation_version

_BIND = re.compile(r'^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$')


def parse_bind(text, what='bind address'):
    """``(host, port)`` from ``'host:port'`` (``'[::1]:port'`` for IPv6; an empty host
    means 127.0.0.1). Raises ValueError naming ``what`` when it is not one."""
    match = _BIND.match(text or '')
    port = int(match.group('port')) if match else -1
    if not match or not 0 <= port <= 65535:
        raise ValueError(f'{what} must be HOST:PORT such as 127.0.0.1:9100, got {text!r}')
    host = match.group('v6') or match.group('host') or '127.0.0.1'
    return host, port


def _prometheus():
    try:
        import prometheus_client
        from prometheus_client import core
    except ImportError:
        raise ImportError(
            'huey.metrics needs prometheus_client: pip install "huey-rs[metrics]"'
        ) from None
    return prometheus_client, core


class HueyCollector:
    """A prometheus_client collector for one Huey.

    ``source`` gives the counts (anything with ``snapshot()``, as ``huey.monitor.Tally`` or a
    consumer's ``Monitor``); by default a Tally is connected to ``huey``'s signals now, so
    the tasks this process runs from here on are counted. ``storage`` is read for the gauges
    (default ``huey.storage``). ``consumer`` adds ``huey_consumer_info``: a dict with
    workers and worker_type.
    """

    def __init__(self, huey, source=None, storage=None, consumer=None):
        _prometheus()  # fail now, not at the first scrape
        if source is None:
            source = Tally(huey)
            source.connect()
        self.huey = huey
        self.source = source
        self.storage = storage if storage is not None else huey.storage
        self.consumer = consumer

    def collect(self):
        from huey import status

        _, core = _prometheus()
        queue = self.huey.name
        snapshot = self.source.snapshot()

        tasks = core.CounterMetricFamily(
            'huey_tasks',
            'Tasks by outcome (the signal they reached)',
            labels=['queue', 'task', 'outcome'],
        )
        for name, outcome, n in sorted(snapshot['counts']):
            tasks.add_metric([queue, name, outcome], n)
        yield tasks

        durations = core.HistogramMetricFamily(
            'huey_task_duration_seconds', 'Task run time', labels=['queue', 'task'], unit='seconds'
        )
        bounds = [repr(float(b)) for b in BUCKETS] + ['+Inf']
        for name, histogram in sorted(snapshot['durations'].items()):
            cumulative, running = [], 0
            for bound, count in zip(bounds, histogram[:-1]):
                running += count
                cumulative.append((bound, running))
            durations.add_metric([queue, name], cumulative, sum_value=histogram[-1])
        yield durations

        if self.consumer is not None:
            info = core.InfoMetricFamily(
                'huey_consumer', 'The consumer serving these metrics', labels=['queue']
            )
            info.add_metric(
                [queue],
                {
                    'implementation': 'huey-rs',
                    'version': implementation_version(),
                    'workers': str(self.consumer['workers']),
                    'worker_type': str(self.consumer['worker_type']),
                },
            )
            yield info

        up = core.GaugeMetricFamily(
            'huey_storage_up', 'The storage could be read', labels=['queue']
        )
        try:
            gauges = status.gauges(self.huey, self.storage, time.time())
        except Exception:
            up.add_metric([queue], 0)
            yield up
            return
        up.add_metric([queue], 1)
        yield up
        for name, help_text, value in (
            ('huey_queue_depth', 'Messages in the queue', gauges['pending']),
            ('huey_scheduled_tasks', 'Messages in the schedule', gauges['scheduled']),
            ('huey_inflight_tasks', 'Messages in flight (reliable mode)', gauges['in_flight']),
            (
                'huey_oldest_lease_age_seconds',
                'Seconds since the stalest in-flight lease was granted or renewed',
                gauges['oldest_lease_age'],
            ),
            ('huey_dead_letters', 'Messages in the dead-letter queue', gauges['dead_letters']),
            ('huey_results_stored', 'Keys in the result store', gauges['results']),
            ('huey_consumers', 'Consumers with a current heartbeat', gauges['consumers']),
        ):
            gauge = core.GaugeMetricFamily(name, help_text, labels=['queue'])
            gauge.add_metric([queue], value)
            yield gauge


class MetricsServer:
    """A running endpoint: ``url``, ``port``, ``shutdown()``."""

    def __init__(self, server, thread):
        self._server = server
        self._thread = thread
        self.host, self.port = server.server_address[:2]

    @property
    def url(self):
        host = f'[{self.host}]' if ':' in self.host else self.host
        return f'http://{host}:{self.port}/metrics'

    def shutdown(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(huey, bind, source=None, storage=None, consumer=None):
    """Serve ``huey``'s metrics over HTTP on ``bind`` (``'host:port'``; port 0 picks a free
    one) from a daemon thread; returns a ``MetricsServer``. OpenMetrics text is sent to
    clients that ask for it (Prometheus does), the Prometheus text format to others."""
    prometheus_client, _ = _prometheus()
    host, port = parse_bind(bind, 'metrics address') if isinstance(bind, str) else bind
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(HueyCollector(huey, source, storage, consumer))
    server, thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)
