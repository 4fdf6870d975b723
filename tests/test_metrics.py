"""OpenMetrics: the collector in-process, and a real Prometheus server (Debian's
``prometheus``) scraping ``huey_consumer --metrics`` with process workers during a workload:
the query for completed tasks equals the number of tasks run."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from huey import MemoryHuey
from huey.metrics import HueyCollector, parse_bind, serve

PROMETHEUS = os.environ.get('HUEY_TEST_PROMETHEUS', '/usr/bin/prometheus')
WAIT = 90


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout=WAIT, what='condition'):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f'timed out after {timeout}s waiting for {what}')


def samples(text):
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_collector_counts_outcomes_durations_and_gauges():
    huey = MemoryHuey('metrics-unit')

    @huey.task()
    def add(a, b):
        return a + b

    @huey.task()
    def fail():
        raise ValueError('no')

    collector = HueyCollector(huey)
    registry = CollectorRegistry()
    registry.register(collector)
    for i in range(3):
        huey.execute(add.s(i, i))
    huey.execute(fail.s())
    add(1, 1)  # one left pending
    name = f'{__name__}.add'
    found = samples(generate_latest(registry).decode())
    label = (('outcome', 'complete'), ('queue', 'metrics-unit'), ('task', name))
    assert found[('huey_tasks_total', label)] == 3
    label = (('outcome', 'error'), ('queue', 'metrics-unit'), ('task', f'{__name__}.fail'))
    assert found[('huey_tasks_total', label)] == 1
    count = found[
        ('huey_task_duration_seconds_count', (('queue', 'metrics-unit'), ('task', name)))
    ]
    assert count == 3
    inf = (('le', '+Inf'), ('queue', 'metrics-unit'), ('task', name))
    assert found[('huey_task_duration_seconds_bucket', inf)] == 3
    queue = (('queue', 'metrics-unit'),)
    assert found[('huey_queue_depth', queue)] == 1
    assert found[('huey_results_stored', queue)] == 3 + 1  # three results and one error
    assert found[('huey_storage_up', queue)] == 1
    collector.source.disconnect()


def test_storage_down_is_reported_not_raised(redis_server_factory):
    server = redis_server_factory()
    from huey import RedisHuey

    huey = RedisHuey('metrics-down', url=server.url)
    registry = CollectorRegistry()
    registry.register(HueyCollector(huey))
    server.stop()
    found = samples(generate_latest(registry).decode())
    assert found[('huey_storage_up', (('queue', 'metrics-down'),))] == 0
    assert not any(name == 'huey_queue_depth' for name, _ in found)


def test_endpoint_speaks_openmetrics_when_asked():
    huey = MemoryHuey('metrics-http')
    server = serve(huey, '127.0.0.1:0')
    try:
        request = urllib.request.Request(
            server.url, headers={'Accept': 'application/openmetrics-text; version=1.0.0'}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode()
            assert response.headers['Content-Type'].startswith('application/openmetrics-text')
        assert body.rstrip().endswith('# EOF')
        assert 'huey_queue_depth{queue="metrics-http"} 0' in body
    finally:
        server.shutdown()


def test_parse_bind():
    assert parse_bind('127.0.0.1:9100') == ('127.0.0.1', 9100)
    assert parse_bind(':9100') == ('127.0.0.1', 9100)
    assert parse_bind('[::1]:80') == ('::1', 80)
    for bad in ('9100', 'host:', 'host:99999', '', 'a:b'):
        with pytest.raises(ValueError, match='must be HOST:PORT'):
            parse_bind(bad, '--metrics')


def test_consumer_rejects_a_bad_metrics_address(tmp_path):
    (tmp_path / 'mapp.py').write_text('from huey import MemoryHuey\nhuey = MemoryHuey("m")\n')
    proc = subprocess.run(
        [sys.executable, '-m', 'huey.bin.huey_consumer', 'mapp.huey', '--metrics', 'nowhere'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert '--metrics must be HOST:PORT' in proc.stderr


APP = """\
import time
from huey import RedisHuey

huey = RedisHuey('prom', url={url!r})


@huey.task()
def work(i):
    time.sleep(0.01)
    return i
"""

PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: huey
    static_configs:
      - targets: ['127.0.0.1:{port}']
"""


def prometheus_binary():
    if not (os.path.exists(PROMETHEUS) and os.access(PROMETHEUS, os.X_OK)):
        found = shutil.which('prometheus')
        if found is None:
            pytest.fail(
                f'prometheus not found at {PROMETHEUS} or on PATH: the metrics test needs a real '
                'Prometheus server (Debian: apt-get install prometheus, or `make prometheus`)'
            )
        return found
    return PROMETHEUS


def query(prom_port, expression):
    url = f'http://127.0.0.1:{prom_port}/api/v1/query?' + urllib.parse.urlencode(
        {'query': expression}
    )
    with urllib.request.urlopen(url, timeout=10) as response:
        reply = json.load(response)
    assert reply['status'] == 'success', reply
    return reply['data']['result']


def test_prometheus_scrapes_a_consumer_with_process_workers(redis_db, tmp_path):
    binary = prometheus_binary()
    metrics_port, prom_port = free_port(), free_port()
    (tmp_path / 'prom_app.py').write_text(APP.format(url=redis_db.url))
    (tmp_path / 'prometheus.yml').write_text(PROMETHEUS_CONFIG.format(port=metrics_port))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    consumer = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'huey.bin.huey_consumer',
            'prom_app.huey',
            '-w',
            '2',
            '-k',
            'process',
            '--metrics',
            f'127.0.0.1:{metrics_port}',
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / 'consumer.log', 'wb'),
    )
    prometheus = subprocess.Popen(
        [
            binary,
            f'--config.file={tmp_path / "prometheus.yml"}',
            f'--storage.tsdb.path={tmp_path / "tsdb"}',
            f'--web.listen-address=127.0.0.1:{prom_port}',
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / 'prometheus.log', 'wb'),
    )
    try:
        sys.path.insert(0, str(tmp_path))
        import prom_app

        tasks = 60
        results = []
        for i in range(tasks):  # the workload runs while Prometheus scrapes
            results.append(prom_app.work(i))
            if i % 10 == 0:
                time.sleep(0.2)
        assert sorted(r.get(blocking=True, timeout=WAIT) for r in results) == list(range(tasks))

        def scraped():
            try:
                result = query(prom_port, 'sum(huey_tasks_total{outcome="complete"})')
            except OSError:
                return None  # Prometheus still starting
            return result and float(result[0]['value'][1]) == tasks

        wait_for(scraped, what=f'Prometheus to see {tasks} completed tasks')
        (completed,) = query(prom_port, 'sum(huey_tasks_total{outcome="complete"})')
        assert float(completed['value'][1]) == tasks
        (executed,) = query(
            prom_port, 'sum(huey_tasks_total{outcome="executed",task="prom_app.work"})'
        )
        assert float(executed['value'][1]) == tasks
        (runs,) = query(prom_port, 'sum(huey_task_duration_seconds_count)')
        assert float(runs['value'][1]) == tasks
        (info,) = query(prom_port, 'huey_consumer_info')
        assert info['metric']['workers'] == '2' and info['metric']['worker_type'] == 'process'
        (up,) = query(prom_port, 'up{job="huey"}')
        assert up['value'][1] == '1'
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop('prom_app', None)
        consumer.send_signal(signal.SIGINT)
        prometheus.terminate()
        for proc in (consumer, prometheus):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    log = Path(tmp_path / 'consumer.log').read_text()
    assert 'Traceback' not in log, log
