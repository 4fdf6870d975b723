"""Shared fixtures: a real redis-server on a free loopback port (never 6379).

``redis_server`` (session): the running server, with ``host``, ``port``, ``url`` and
``restart()`` / ``stop()`` / ``start()``; ``redis_db`` (function): the same server, flushed
before the test; ``redis_server_factory``: start extra servers with their own arguments.
TLS, ACL, Sentinel and Cluster deployments: see the fixtures at the end (the servers
themselves are in ``redis_servers.py``).
``reference_peer``: huey 3.5.4 storages driven in a separate interpreter, for interop tests.
``postgres_server`` (session), ``postgres_db`` (function: a schema of its own) and
``postgres_server_factory``: a real PostgreSQL server (tests/postgres_server.py).
"""

import datetime
import itertools
import json
import os
import subprocess
import sys
import types

import pytest

from redis_servers import RedisServer, acl_rules  # tests/ is on sys.path (pytest puts it there)


@pytest.fixture(scope='session')
def redis_server():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_db(redis_server):
    """The session's redis-server, running and empty at the start of the test."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()  # A previous test stopped it.
    redis_server.flushall()
    return redis_server


@pytest.fixture
def redis_server_factory():
    """Start extra redis-servers (e.g. with ``--rename-command``); all stopped afterwards."""
    servers = []

    def start(*extra_args):
        server = RedisServer(extra_args).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.cleanup()


# huey 3.5.4 as a peer process ---------------------------------------------------------------

REFERENCE_VENV = os.path.join(os.path.expanduser('~'), '.cache', 'huey-rs', 'huey-3.5.4-venv')
# What the reference venv holds: huey 3.5.4 and the drivers of the storages it shares.
REFERENCE_PACKAGES = ['huey==3.5.4', 'redis', 'psycopg[binary]>=3.2.4', 'gevent']


def reference_python():
    """An interpreter with huey 3.5.4 from PyPI: $HUEY_REFERENCE_PYTHON, or a virtualenv
    built once under ~/.cache/huey-rs and reused by later runs (packages added to
    REFERENCE_PACKAGES are installed into it on the next run)."""
    configured = os.environ.get('HUEY_REFERENCE_PYTHON')
    if configured:
        return configured
    python = os.path.join(REFERENCE_VENV, 'bin', 'python')
    marker = os.path.join(REFERENCE_VENV, '.complete')
    wanted = '\n'.join(REFERENCE_PACKAGES)

    def installed():
        try:
            with open(marker) as fh:
                return fh.read() == wanted
        except OSError:
            return False

    if not installed():
        import fcntl

        os.makedirs(os.path.dirname(REFERENCE_VENV), exist_ok=True)
        with open(REFERENCE_VENV + '.lock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder when test processes race
            if not installed():
                if not os.path.exists(python):
                    subprocess.run(
                        [sys.executable, '-m', 'venv', '--clear', REFERENCE_VENV], check=True
                    )
                # --prefer-binary: the newest release with a wheel for this Python (a
                # minimal machine has no compiler for an sdist, e.g. gevent on Python 3.9).
                subprocess.run(
                    [python, '-m', 'pip', 'install', '-q', '--prefer-binary', *REFERENCE_PACKAGES],
                    check=True,
                )
                with open(marker, 'w') as fh:
                    fh.write(wanted)
    return python


_WHICH_HUEY = r"""
import importlib.metadata, importlib.util, json, sys
import huey
print(json.dumps({
    'version': importlib.metadata.version('huey'),
    'native': importlib.util.find_spec('huey._native') is not None,
    'file': huey.__file__,
    'prefix': sys.prefix,
}))
"""


def assert_is_huey_354(python):
    """``python`` imports huey 3.5.4 itself: the distribution's version, no ``huey._native``
    anywhere on its path, the package inside that interpreter's own prefix (not this
    checkout, not the venv running the tests)."""
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}
    run = subprocess.run(
        [python, '-c', _WHICH_HUEY], capture_output=True, text=True, env=env, check=True
    )
    found = json.loads(run.stdout)
    assert found['version'] == '3.5.4', found
    assert not found['native'], found
    assert found['file'].startswith(os.path.join(found['prefix'], '')), found
    assert found['prefix'] != sys.prefix, found
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert not found['file'].startswith(os.path.join(here, '')), found


# Runs under the reference interpreter: builds one huey 3.5.4 storage, then executes storage
# calls read as JSON lines from stdin (bytes as {"b": hex}, naive datetimes as {"dt": [...]}).
_PEER_SCRIPT = r"""
import datetime, json, sys
import huey, huey.storage
from huey.constants import EmptyData

def decode(v):
    if isinstance(v, dict) and 'b' in v:
        return bytes.fromhex(v['b'])
    if isinstance(v, dict) and 'dt' in v:
        return datetime.datetime(*v['dt'])
    return v

def encode(v):
    if v is EmptyData:
        return {'empty': True}
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {'b': bytes(v).hex()}
    if isinstance(v, (list, tuple)):
        return [encode(x) for x in v]
    if isinstance(v, dict):
        return {'map': [[encode(k), encode(x)] for k, x in v.items()]}
    return v

setup = json.loads(sys.stdin.readline())
storage = getattr(huey.storage, setup['class'])(*setup['args'], **setup['kwargs'])
print(json.dumps({'ok': huey.__version__}), flush=True)
for line in sys.stdin:
    call = json.loads(line)
    try:
        result = getattr(storage, call['op'])(*[decode(a) for a in call['args']])
        reply = {'ok': encode(result)}
    except Exception as exc:
        reply = {'error': '%s: %s' % (type(exc).__name__, exc)}
    print(json.dumps(reply), flush=True)
"""


class ReferencePeer:
    """A huey 3.5.4 storage in a separate interpreter; ``peer.call('dequeue')`` etc."""

    def __init__(self, class_name, *args, **kwargs):
        self.process = subprocess.Popen(
            [reference_python(), '-I', '-c', _PEER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.version = self._send({'class': class_name, 'args': args, 'kwargs': kwargs})

    def _send(self, message):
        self.process.stdin.write(json.dumps(message) + '\n')
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f'huey reference peer exited ({self.process.wait()})')
        reply = json.loads(line)
        if 'error' in reply:
            raise RuntimeError(f'huey 3.5.4 raised {reply["error"]}')
        return self._decode(reply['ok'])

    def call(self, op, *args):
        return self._send({'op': op, 'args': [self._encode(a) for a in args]})

    def __getattr__(self, op):
        return lambda *args: self.call(op, *args)

    @staticmethod
    def _encode(value):
        if isinstance(value, bytes):
            return {'b': value.hex()}
        if isinstance(value, datetime.datetime):
            return {
                'dt': [
                    value.year,
                    value.month,
                    value.day,
                    value.hour,
                    value.minute,
                    value.second,
                    value.microsecond,
                ]
            }
        return value

    def _decode(self, value):
        from huey.constants import EmptyData

        if isinstance(value, list):
            return [self._decode(x) for x in value]
        if isinstance(value, dict):
            if 'b' in value:
                return bytes.fromhex(value['b'])
            if 'empty' in value:
                return EmptyData
            return {self._decode(k): self._decode(v) for k, v in value['map']}
        return value

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(10)


@pytest.fixture
def reference_peer():
    """Factory for huey 3.5.4 storages in another process."""
    peers = []

    def start(class_name, *args, **kwargs):
        peer = ReferencePeer(class_name, *args, **kwargs)
        assert peer.version == '3.5.4', peer.version
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.close()


# PostgreSQL -------------------------------------------------------------------------------
# A throwaway cluster (tests/postgres_server.py) on a free loopback port, as the server user
# when run as root; the same helper gives shells and other tools a server:
# ``python tests/postgres_server.py run -- CMD`` runs CMD with HUEY_PG_DSN set.


def _postgres_server(**kwargs):
    from postgres_server import PostgresServer, PostgresUnavailable

    try:
        return PostgresServer(**kwargs).start()
    except PostgresUnavailable as exc:
        pytest.fail(f'The PostgreSQL tests need a real server: {exc}')


@pytest.fixture(scope='session')
def postgres_server():
    """The session's PostgreSQL server: ``dsn``, ``connection_params``, ``stop()``,
    ``start()``, ``restart()``."""
    server = _postgres_server()
    yield server
    server.cleanup()


_schemas = itertools.count(1)


@pytest.fixture
def postgres_db(postgres_server):
    """A schema of its own on the session's server: ``dsn`` (it sets ``search_path``, so
    every table made through it lands there), ``schema``, ``server``. Storages a test
    leaves behind (a reliable consumer's lease renewals, say) keep their own schema."""
    import psycopg

    if not postgres_server.running():
        postgres_server.start()  # A previous test stopped it.
    schema = f'test_{next(_schemas)}'
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'create schema {schema}')
    return types.SimpleNamespace(
        dsn=postgres_server.dsn_for(schema), schema=schema, server=postgres_server
    )


@pytest.fixture
def postgres_server_factory():
    """Start extra PostgreSQL servers (to stop or restart without disturbing others)."""
    servers = []

    def start(**kwargs):
        server = _postgres_server(**kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.cleanup()


# TLS, ACL, Sentinel and Cluster deployments (see redis_servers.py) ------------------------
# Session fixtures start a deployment once, on first use; the ``*_db`` fixtures flush it
# before each test; the factories start fresh ones a test may break (failovers).

# The ACL rules the README documents for the storages' user: only the commands and keys the
# Redis storages need (the test server adds the user name and password in front).
REDIS_ACL_RULES = (
    'resetkeys ~huey.* resetchannels -@all '
    '+ping +hello +auth +client|setname +info +multi +exec +discard '
    '+evalsha +script|load +lpush +rpush +rpop +brpop +blpop +brpoplpush +llen +lrange '
    '+lindex +zadd +zrem +zcard +zrange +zrangebyscore +zremrangebyrank +zscore +zpopmin '
    '+bzpopmin +hset +hget +hmget +hdel +hexists +hsetnx +hlen +hgetall +hincrby '
    '+set +get +mget +del +exists +expire +pexpire +incr +scan'
)


@pytest.fixture(scope='session')
def redis_tls_server():
    server = RedisServer(tls=True).start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_tls_db(redis_tls_server):
    redis_tls_server.flushall()
    return redis_tls_server


@pytest.fixture(scope='session')
def redis_acl_server():
    server = RedisServer(
        [
            '--user',
            *acl_rules('default on >admin-secret ~* &* +@all').split(),
            '--user',
            *acl_rules(f'huey on >huey-secret {REDIS_ACL_RULES}').split(),
        ],
        admin=('default', 'admin-secret'),
        params={'username': 'huey', 'password': 'huey-secret'},
    ).start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_acl_db(redis_acl_server):
    redis_acl_server.flushall()
    return redis_acl_server


@pytest.fixture(scope='session')
def redis_sentinel_set():
    from redis_servers import RedisSentinelSet

    deployment = RedisSentinelSet().start()
    yield deployment
    deployment.cleanup()


@pytest.fixture
def redis_sentinel_db(redis_sentinel_set):
    redis_sentinel_set.flushall()
    return redis_sentinel_set


@pytest.fixture(scope='session')
def redis_cluster_set():
    from redis_servers import RedisClusterSet

    deployment = RedisClusterSet().start()
    yield deployment
    deployment.cleanup()


@pytest.fixture
def redis_cluster_db(redis_cluster_set):
    redis_cluster_set.flushall()
    return redis_cluster_set


@pytest.fixture
def redis_deployment_factory():
    """``make(kind)`` starts a fresh ``'sentinel'`` set or ``'cluster'``; all are stopped
    afterwards (failover tests break the ones they use)."""
    import redis_servers

    made = []

    def make(kind, **kwargs):
        cls = {
            'sentinel': redis_servers.RedisSentinelSet,
            'cluster': redis_servers.RedisClusterSet,
        }
        deployment = cls[kind](**kwargs)
        made.append(deployment)
        return deployment.start()

    yield make
    for deployment in made:
        deployment.cleanup()


# A real consumer in this process --------------------------------------------------------------


@pytest.fixture
def redis_commands(monkeypatch):
    """The list of every command (its argument tuple) any redis-py client sends from now
    on: the consumer's worker threads each have a client of their own."""
    import redis

    sent = []
    execute = redis.Redis.execute_command

    def record(client, *args, **kwargs):
        sent.append(args)
        return execute(client, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, 'execute_command', record)
    return sent


@pytest.fixture
def run_consumer():
    """``run_consumer(huey, **options)`` starts a real in-process consumer (2 thread workers
    polling every millisecond unless ``options`` say otherwise); each is stopped gracefully,
    its workers and scheduler joined and the signal handlers restored after the test."""
    import signal

    handled = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    saved = {s: signal.getsignal(s) for s in handled}
    consumers = []

    def start(huey, **options):
        options = {'workers': 2, 'initial_delay': 0.001, 'max_delay': 0.01, **options}
        consumer = huey.create_consumer(**options)
        consumer.start()
        consumers.append(consumer)
        return consumer

    yield start
    for consumer in consumers:
        consumer.stop(graceful=True)
        for _, worker in consumer.worker_threads:
            worker.join(10)
        consumer.scheduler.join(10)
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def run_next(huey, timestamp=None):
    """Take the next task off ``huey``'s queue and execute it, as a worker does."""
    task = huey.dequeue()
    assert task is not None, 'queue unexpectedly empty'
    return huey.execute(task, timestamp=timestamp)


def pytest_collection_modifyitems(items):
    """Process workers need fork(): where it does not exist (Windows), their tests skip."""
    if hasattr(os, 'fork'):
        return
    skip = pytest.mark.skip(reason='process workers need fork(), which this platform lacks')
    for item in items:
        callspec = getattr(item, 'callspec', None)
        if 'process_worker' in item.name or (callspec and 'process' in callspec.params.values()):
            item.add_marker(skip)
