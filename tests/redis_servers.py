"""Real Redis deployments for the tests, each on free loopback ports (never 6379).

``RedisServer``: one redis-server (optionally TLS-only with a certificate made at test time,
optionally with ACL users); ``RedisSentinelSet``: a master, a replica and three sentinels;
``RedisCluster``: masters and replicas in a Redis Cluster. Every process runs in its own temp
directory and is stopped by ``cleanup()``. A missing binary fails the test with a message
saying how to install it.
"""

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import redis
import redis.cluster
import redis.sentinel

RESERVED_PORTS = {6379, 26379}  # The conformance suite owns the default port.
HOST = '127.0.0.1'


CLUSTER_BUS_OFFSET = 10000  # Before Redis 7.0 a cluster node's bus port is its port + this.


def free_port(with_bus=False):
    """A free loopback port; ``with_bus``: one whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port in RESERVED_PORTS:
            continue
        if not with_bus:
            return port
        if port + CLUSTER_BUS_OFFSET <= 65535:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((HOST, port + CLUSTER_BUS_OFFSET))
                except OSError:
                    continue
            return port


@functools.cache
def server_version():
    """(major, minor) of the redis-server the tests start: Redis 6.0 (Debian 11) lacks a few
    things the tests use by default (a separate cluster bus port, channel ACLs, write-only
    pauses), and the deployments here do without them there."""
    out = subprocess.run(
        [binary('redis-server'), '--version'], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r'v=(\d+)\.(\d+)', out)
    assert found, f'cannot read the version of redis-server from {out!r}'
    return int(found.group(1)), int(found.group(2))


def acl_rules(rules):
    """``rules`` as this server takes them: before Redis 6.2 there are no channel permissions
    (every user may use every channel) and ACL rejects ``resetchannels`` and ``&`` patterns."""
    if server_version() >= (6, 2):
        return rules
    return ' '.join(r for r in rules.split() if r != 'resetchannels' and not r.startswith('&'))


def binary(name, package='redis-server'):
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f'{name} not found on PATH: the Redis tests need a real one '
            f'(Debian: apt-get install {package}, or `make redis-server`).'
        )
    return path


def wait_for(condition, timeout, what):
    """Poll ``condition`` until it returns a true value (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except (redis.RedisError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f'{what} not reached within {timeout}s')
        time.sleep(0.02)


def settle_replication(master, replicas, timeout=30):
    """Pause writes on ``master`` and wait until each replica holds its whole stream. Redis
    replicates asynchronously, so a master killed right after acknowledging a write can take
    that write with it (Redis's own caveat, documented in the README); the failover tests
    measure what the clients lose, so they kill a master only once nothing acknowledged is
    missing from its replicas. Clients keep sending meanwhile: their writes wait (paused) and
    then meet the dead master, as in a crash."""
    # Before Redis 6.2 a pause holds every client, this one too: the offset is read in the
    # same transaction, before the pause takes hold.
    mode = ['WRITE'] if server_version() >= (6, 2) else []
    with master.client() as client:
        pipe = client.pipeline(transaction=True)
        pipe.execute_command('CLIENT', 'PAUSE', 30000, *mode)
        pipe.info('replication')
        offset = pipe.execute()[1]['master_repl_offset']

    def caught_up(replica):
        with replica.client() as client:
            return client.info('replication').get('slave_repl_offset', -1) >= offset

    for replica in replicas:
        wait_for(lambda replica=replica: caught_up(replica), timeout, 'replication caught up')


class TestCertificate:
    """A self-signed certificate for 127.0.0.1 and localhost, made with the openssl CLI."""

    def __init__(self, directory):
        self.cert = os.path.join(directory, 'cert.pem')
        self.key = os.path.join(directory, 'key.pem')
        subprocess.run(
            [
                binary('openssl', 'openssl'),
                'req',
                '-x509',
                '-newkey',
                'rsa:2048',
                '-nodes',
                '-days',
                '1',
                '-subj',
                '/CN=localhost',
                '-addext',
                'subjectAltName=IP:127.0.0.1,DNS:localhost',
                '-keyout',
                self.key,
                '-out',
                self.cert,
            ],
            check=True,
            capture_output=True,
        )

    @property
    def client_params(self):
        return {'ssl': True, 'ssl_ca_certs': self.cert}


class RedisServer:
    """One redis-server process in its own temp dir, restartable on the same port.

    ``tls``: serve TLS only, with a fresh ``TestCertificate``. ``admin``: the
    ``(username, password)`` this harness connects as (when the default user is locked).
    ``params`` are what a storage passes to connect (``url`` the same as a URL).
    """

    host = HOST

    def __init__(self, extra_args=(), port=None, tls=False, admin=None, params=None):
        self.binary = binary('redis-server')
        self.extra_args = list(extra_args)
        # A cluster node without --cluster-port (Redis < 7.0) listens on port + 10000 too.
        self._bus_follows_port = (
            '--cluster-enabled' in self.extra_args and '--cluster-port' not in self.extra_args
        )
        self.port = port or free_port(with_bus=self._bus_follows_port)
        self.dir = tempfile.mkdtemp(prefix='huey-redis-')
        self.certificate = TestCertificate(self.dir) if tls else None
        self.admin = admin
        self.extra_params = dict(params or {})
        self.process = None

    @property
    def url(self):
        if self.certificate is None:
            return f'redis://{self.host}:{self.port}/0'
        return f'rediss://{self.host}:{self.port}/0?ssl_ca_certs={self.certificate.cert}'

    @property
    def connection_params(self):
        params = {'host': self.host, 'port': self.port, **self.extra_params}
        if self.certificate is not None:
            params.update(self.certificate.client_params)
        return params

    def client(self, **kwargs):
        """A redis-py client connected as the harness's admin."""
        params = {'host': self.host, 'port': self.port, 'socket_timeout': 5, **kwargs}
        if self.certificate is not None:
            params.update(self.certificate.client_params)
        if self.admin is not None:
            params['username'], params['password'] = self.admin
        return redis.Redis(**params)

    def _args(self):
        args = [self.binary, '--bind', self.host, '--save', '', '--appendonly', 'no']
        if self.certificate is None:
            args += ['--port', str(self.port)]
        else:
            args += [
                '--port',
                '0',
                '--tls-port',
                str(self.port),
                '--tls-cert-file',
                self.certificate.cert,
                '--tls-key-file',
                self.certificate.key,
                '--tls-ca-cert-file',
                self.certificate.cert,
                '--tls-auth-clients',
                'no',
            ]
        return [*args, '--dir', self.dir, *self.extra_args]

    def start(self, timeout=10):
        # A port chosen by free_port() is free only until something else binds it (an
        # outgoing connection's local port, say): a first start that finds its port taken
        # chooses new ports and tries again. A restart keeps its port (clients know it).
        for attempt in range(5):
            log = open(os.path.join(self.dir, 'redis.log'), 'ab')
            self.process = subprocess.Popen(self._args(), stdout=log, stderr=subprocess.STDOUT)
            log.close()
            if self._answers(timeout, retry=not self._started and attempt < 4):
                self._started = True
                return self
            self._choose_new_ports()

    _started = False

    def _choose_new_ports(self):
        self.port = free_port(with_bus=self._bus_follows_port)
        args = self.extra_args
        for i, arg in enumerate(args[:-1]):
            if arg == '--cluster-port':
                args[i + 1] = str(free_port())

    def _answers(self, timeout, retry):
        """Whether the server started answers PING; False (to retry) when it could not bind
        its ports and ``retry``; a test failure otherwise."""
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None:
                if retry and 'Address already in use' in self.log():
                    return False
                pytest.fail(
                    f'redis-server exited with {self.process.returncode} on port '
                    f'{self.port}; log:\n{self.log()}'
                )
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f'redis-server on port {self.port} did not answer PING within '
                    f'{timeout}s; log:\n{self.log()}'
                )
            time.sleep(0.01)
        return True

    def ping(self):
        try:
            with self.client(socket_timeout=0.5, socket_connect_timeout=0.5) as client:
                return client.ping()
        except (redis.RedisError, OSError):
            return False

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self):
        """SIGKILL: the process dies at once, as in a crash."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
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
        with self.client() as client:
            assert client.flushall()

    def log(self):
        try:
            with open(os.path.join(self.dir, 'redis.log'), 'rb') as fh:
                return fh.read()[-2000:].decode('utf8', 'replace')
        except OSError:
            return ''


class RedisSentinelSet:
    """A master, one replica and three sentinels watching them as ``service``."""

    service = 'hueymaster'

    def __init__(self):
        self.sentinel_binary = binary('redis-sentinel', 'redis-sentinel')
        self.master = RedisServer()
        self.replica = RedisServer(['--replicaof', HOST, str(self.master.port)])
        self.servers = [self.master, self.replica]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.dir = tempfile.mkdtemp(prefix='huey-sentinel-')
        self.sentinel_processes = []

    @property
    def addresses(self):
        return [(HOST, port) for port in self.sentinel_ports]

    def sentinel(self, **kwargs):
        """A ``redis.sentinel.Sentinel`` over the three sentinels."""
        return redis.sentinel.Sentinel(
            self.addresses, socket_timeout=kwargs.pop('socket_timeout', 5), **kwargs
        )

    def start(self):
        self.master.start()
        self.replica.start()
        wait_for(self._replica_linked, 20, 'replica link up')
        for port in self.sentinel_ports:
            conf = os.path.join(self.dir, f'sentinel-{port}.conf')
            with open(conf, 'w') as fh:
                fh.write(
                    f'port {port}\nbind {HOST}\ndir {self.dir}\n'
                    f'sentinel monitor {self.service} {HOST} {self.master.port} 2\n'
                    f'sentinel down-after-milliseconds {self.service} 1000\n'
                    f'sentinel failover-timeout {self.service} 10000\n'
                    f'sentinel parallel-syncs {self.service} 1\n'
                )
            log = open(os.path.join(self.dir, f'sentinel-{port}.log'), 'ab')
            self.sentinel_processes.append(
                subprocess.Popen(
                    [self.sentinel_binary, conf], stdout=log, stderr=subprocess.STDOUT
                )
            )
            log.close()
        wait_for(self._sentinels_agree, 30, 'three sentinels knowing each other and the replica')
        return self

    def _replica_linked(self):
        with self.replica.client() as client:
            return client.info('replication').get('master_link_status') == 'up'

    def _ask(self, port, *command):
        with redis.Redis(host=HOST, port=port, socket_timeout=1) as client:
            return client.execute_command(*command)

    def _sentinels_agree(self):
        for port in self.sentinel_ports:
            if len(self._ask(port, 'SENTINEL', 'SENTINELS', self.service)) != 2:
                return False
            if len(self._ask(port, 'SENTINEL', 'REPLICAS', self.service)) != 1:
                return False
        return True

    def master_port(self):
        """The master's port as the sentinels' majority sees it (None while they differ)."""
        ports = set()
        for port in self.sentinel_ports:
            address = self._ask(port, 'SENTINEL', 'GET-MASTER-ADDR-BY-NAME', self.service)
            ports.add(int(address[1]))
        return ports.pop() if len(ports) == 1 else None

    def current_master(self):
        port = self.master_port()
        return next(server for server in self.servers if server.port == port)

    def kill_master(self, timeout=30):
        """SIGKILL the current master and wait until the sentinels promoted the replica and
        the promoted server accepts writes; returns it."""
        old = self.current_master()
        new = next(server for server in self.servers if server is not old)
        settle_replication(old, [new])
        old.kill()
        wait_for(lambda: self.master_port() == new.port, timeout, 'sentinel failover')
        wait_for(
            lambda: new.client().info('replication')['role'] == 'master', timeout, 'promotion'
        )
        return new

    def flushall(self):
        self.current_master().flushall()

    def cleanup(self):
        for process in self.sentinel_processes:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        for server in self.servers:
            server.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterSet:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, made with
    ``redis-cli --cluster create``; short node timeouts so failovers take seconds."""

    def __init__(self, masters=3, replicas=1):
        self.cli = binary('redis-cli', 'redis-tools')
        self.servers = []
        for _ in range(masters * (1 + replicas)):
            self.servers.append(
                RedisServer(
                    [
                        '--cluster-enabled',
                        'yes',
                        '--cluster-config-file',
                        'nodes.conf',
                        '--cluster-node-timeout',
                        '1000',
                        '--repl-diskless-sync-delay',
                        '0',
                        *(
                            ['--cluster-port', str(free_port())]
                            if server_version() >= (7, 0)
                            else []
                        ),
                    ]
                )
            )
        self.replicas = replicas

    @property
    def startup_nodes(self):
        return [redis.cluster.ClusterNode(HOST, server.port) for server in self.servers]

    def client(self, **kwargs):
        return redis.cluster.RedisCluster(startup_nodes=self.startup_nodes, **kwargs)

    def start(self):
        for server in self.servers:
            server.start()
        subprocess.run(
            [
                self.cli,
                '--cluster',
                'create',
                *(f'{HOST}:{server.port}' for server in self.servers),
                '--cluster-replicas',
                str(self.replicas),
                '--cluster-yes',
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self._healthy, 30, 'cluster state ok on every node')
        return self

    def _healthy(self):
        # Every slot served, and every replica in sync with its master (a replica that never
        # synced cannot take over).
        for server in self.running():
            with server.client() as client:
                info = client.cluster('info')
                if info['cluster_state'] != 'ok' or int(info['cluster_slots_ok']) != 16384:
                    return False
                replication = client.info('replication')
                if replication['role'] == 'slave' and replication['master_link_status'] != 'up':
                    return False
        return True

    def running(self):
        return [server for server in self.servers if server.process is not None]

    def master_of(self, key):
        """The server holding ``key``'s slot (asked of a live node)."""
        with self.running()[0].client() as client:
            slot = client.cluster('keyslot', key)
            for start, end, master, *_ in client.cluster('slots'):
                if start <= slot <= end:
                    port = int(master[1])
        return next(server for server in self.servers if server.port == port)

    def kill_master_of(self, key, timeout=30):
        """SIGKILL the master holding ``key`` and wait until a replica took its slots over
        and every live node agrees; returns the new master."""
        old = self.master_of(key)
        replicas = []
        for server in self.running():
            if server is not old:
                with server.client() as client:
                    if client.info('replication').get('master_port') == old.port:
                        replicas.append(server)
        settle_replication(old, replicas)
        old.kill()
        wait_for(lambda: self.master_of(key) is not old, timeout, 'cluster failover')
        wait_for(self._healthy, timeout, 'cluster state ok after the failover')
        return self.master_of(key)

    def flushall(self):
        for server in self.running():
            with server.client() as client:
                if client.info('replication')['role'] == 'master':
                    client.flushall()

    def cleanup(self):
        for server in self.servers:
            server.cleanup()
