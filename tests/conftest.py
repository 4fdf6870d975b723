"""Shared fixtures: a real redis-server on a free loopback port (never 6379).

``redis_server`` (session): the running server, with ``host``, ``port``, ``url`` and
``restart()`` / ``stop()`` / ``start()``; ``redis_db`` (function): the same server, flushed
before the test; ``redis_server_factory``: start extra servers with their own arguments.
``reference_peer``: huey 3.5.4 storages driven in a separate interpreter, for interop tests.
"""

import datetime
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

RESERVED_PORTS = {6379}  # The conformance suite owns the default port.


def _free_port():
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(('127.0.0.1', 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def _ping(host, port, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b'PING\r\n')
            return sock.recv(64).startswith(b'+PONG')
    except OSError:
        return False


class RedisServer:
    """One redis-server process in its own temp dir, restartable on the same port."""

    host = '127.0.0.1'

    def __init__(self, extra_args=(), port=None):
        self.binary = shutil.which('redis-server')
        if self.binary is None:
            pytest.fail('redis-server not found on PATH: the Redis tests need a real server '
                        '(Debian: apt-get install redis-server, or `make redis-server`).')
        self.port = port or _free_port()
        self.dir = tempfile.mkdtemp(prefix='huey-redis-')
        self.extra_args = list(extra_args)
        self.process = None

    @property
    def url(self):
        return f'redis://{self.host}:{self.port}/0'

    @property
    def connection_params(self):
        return {'host': self.host, 'port': self.port}

    def start(self, timeout=10):
        args = [self.binary, '--port', str(self.port), '--bind', self.host, '--save', '',
                '--appendonly', 'no', '--dir', self.dir, *self.extra_args]
        log = open(os.path.join(self.dir, 'redis.log'), 'ab')
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not _ping(self.host, self.port):
            if self.process.poll() is not None:
                pytest.fail(f'redis-server exited with {self.process.returncode} on port '
                            f'{self.port}; log:\n{self._log()}')
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f'redis-server on port {self.port} did not answer PING within '
                            f'{timeout}s; log:\n{self._log()}')
            time.sleep(0.01)
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self):
        """Stop and start again on the same port (the data set is lost: no persistence)."""
        self.stop()
        return self.start()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def flushall(self):
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            sock.sendall(b'FLUSHALL\r\n')
            reply = sock.recv(64)
        assert reply.startswith(b'+OK'), reply

    def _log(self):
        try:
            with open(os.path.join(self.dir, 'redis.log'), 'rb') as fh:
                return fh.read()[-2000:].decode('utf8', 'replace')
        except OSError:
            return ''


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

REFERENCE_PYTHON = os.environ.get('HUEY_REFERENCE_PYTHON', '/work/ref-venv/bin/python')

# Runs under the reference interpreter: builds one huey 3.5.4 storage, then executes storage
# calls read as JSON lines from stdin (bytes as {"b": hex}, naive datetimes as {"dt": [...]}).
_PEER_SCRIPT = r'''
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
'''


class ReferencePeer:
    """A huey 3.5.4 storage in a separate interpreter; ``peer.call('dequeue')`` etc."""

    def __init__(self, class_name, *args, **kwargs):
        self.process = subprocess.Popen(
            [REFERENCE_PYTHON, '-I', '-c', _PEER_SCRIPT], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1)
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
            return {'dt': [value.year, value.month, value.day, value.hour, value.minute,
                           value.second, value.microsecond]}
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
    """Factory for huey 3.5.4 storages in another process; skips without that venv."""
    if not os.path.exists(REFERENCE_PYTHON):
        pytest.skip(f'huey 3.5.4 interpreter not found at {REFERENCE_PYTHON} '
                    '(set HUEY_REFERENCE_PYTHON)')
    peers = []

    def start(class_name, *args, **kwargs):
        peer = ReferencePeer(class_name, *args, **kwargs)
        assert peer.version == '3.5.4', peer.version
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.close()
