"""How a Redis storage reaches its server: the redis-py client each thread sends commands with.

``connect()`` turns a storage's connection arguments into ``ThreadClients``:

- ``host``/``port``/... or ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``): a
  ``ConnectionPool`` made here;
- ``sentinel`` (sentinel addresses, or a ``redis.sentinel.Sentinel``) with ``service_name``:
  the master's ``SentinelConnectionPool``, which asks the sentinels where the master is
  whenever it connects, so consumers follow a failover without a restart;
- ``connection_pool``: the caller's own pool;
- ``cluster=True`` (with ``url``, or ``host``/``port``/``startup_nodes``) or
  ``cluster=<redis.cluster.RedisCluster>``: a cluster client, which sends each command to
  the master of its keys' slot.

A redis-py ``Redis`` on a pool checks a connection out of the pool and back in for every
command (a lock, a health check, bookkeeping): for the three commands a task costs, a large
share of a worker's time. On a pool made here from a host or URL each thread therefore gets
its own client holding one connection of that pool (redis-py's
``single_connection_client``), kept for the thread's life and replaced in a forked child.
Every thread shares one client instead on a caller's own pool (so its limits, such as a
``BlockingConnectionPool``'s ``max_connections``, hold), on a Sentinel pool (see
``connect``) and on a cluster (a cluster client keeps a pool per node).

Either way every command goes through a redis-py client's public API: one code path per
operation, whatever the pool, TLS, Sentinel, Cluster or client class.
"""

import os
import threading

from huey.exceptions import ConfigurationError

try:
    from redis import ConnectionPool, Redis
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.exceptions import ReadOnlyError
    from redis.retry import Retry
    from redis.sentinel import Sentinel
except ImportError:  # The Redis storages are optional; huey works without redis-py.
    Redis = None

_RETRY_OPTIONS = ('retry', 'retry_on_error', 'retry_on_timeout')

if Redis is not None:

    class FailoverAwareRedis(Redis):
        """A client that drops its pool's connections on ``ReadOnlyError``: the server it
        talks to became a replica (a failover), so the next command connects afresh (to
        whatever the host name or proxy now points at) instead of reusing the socket.
        (A Sentinel pool's connections do this themselves.)"""

        def execute_command(self, *args, **options):
            try:
                return super().execute_command(*args, **options)
            except ReadOnlyError:
                self.connection_pool.disconnect()
                raise
else:
    FailoverAwareRedis = None


class ThreadClients:
    """The client for the calling thread: ``shared`` by every thread, or (``per_thread``)
    a single-connection client of each thread's own on ``shared``'s pool, of its class."""

    def __init__(self, shared, per_thread=False):
        self.shared = shared
        self.pool = getattr(shared, 'connection_pool', None)  # (a cluster client has none)
        self.per_thread = per_thread
        self._local = threading.local()

    def get(self):
        if not self.per_thread:
            return self.shared
        local = self._local
        client = getattr(local, 'client', None)
        if client is None or local.pid != os.getpid():
            # A forked child never uses its parent's socket: the pool hands it a new one.
            client = type(self.shared)(connection_pool=self.pool, single_connection_client=True)
            local.client, local.pid = client, os.getpid()
        return client


def connect(
    client_class,
    url=None,
    connection_pool=None,
    client_name=None,
    sentinel=None,
    service_name=None,
    sentinel_kwargs=None,
    cluster=False,
    **params,
):
    """``ThreadClients`` for a storage's connection arguments (see the module docstring)."""
    if cluster:
        if connection_pool is not None or sentinel is not None:
            raise _over_determined('cluster', 'connection_pool', 'sentinel')
        if isinstance(cluster, RedisCluster):
            if url or params:
                raise _over_determined('cluster=<RedisCluster>', 'url', 'connection_params')
            return ThreadClients(cluster)
        named = {} if client_name is None else {'client_name': client_name}
        if url:
            return ThreadClients(RedisCluster.from_url(url, **params, **named))
        return ThreadClients(RedisCluster(**params, **named))
    if sentinel is not None:
        if url or connection_pool is not None:
            raise _over_determined('sentinel', 'url', 'connection_pool')
        if not service_name:
            raise ConfigurationError(
                'sentinel= needs service_name=, the name the sentinels monitor the master as'
            )
        if not isinstance(sentinel, Sentinel):
            sentinel = Sentinel(list(sentinel), sentinel_kwargs=sentinel_kwargs)
        named = {} if client_name is None else {'client_name': client_name}
        connection_pool = sentinel.master_for(service_name, **params, **named).connection_pool
        # Shared, and without a resend: a Sentinel connection asks the sentinels where the
        # master is only when the pool checks it out (redis-py 8 reconnects a connection in
        # use to its last address), so after a failover every command must come from a
        # checkout of the pool, and a command refused by a demoted master is not resent to it.
        return ThreadClients(client_class(connection_pool=connection_pool))
    if sum(1 for given in (url, connection_pool, params) if given) > 1:
        raise _over_determined('url', 'connection_pool', 'connection_params')
    if connection_pool is not None:
        return ThreadClients(client_class(connection_pool=connection_pool))
    if url:
        pool = ConnectionPool.from_url(url, **_pool_options(client_name, params))
    else:
        pool = ConnectionPool(**params, **_pool_options(client_name, params))
    return ThreadClients(client_class(connection_pool=pool), per_thread=True)


def _pool_options(client_name, params):
    """Options for a pool made here: its connections name themselves ``client_name``; and
    unless the caller chose a retry policy, a command that finds its connection closed by
    the server (a restart, an idle timeout, a failover) is sent once more on a new one, as
    a thread's own connection is never health-checked by a pool checkout."""
    options = {}
    if client_name is not None:
        options['client_name'] = client_name
    if not any(option in params for option in _RETRY_OPTIONS):
        options['retry'] = Retry(NoBackoff(), 1)
    return options


def _over_determined(*names):
    quoted = [f'"{name}"' for name in names]
    return ConfigurationError(
        'The connection configuration is over-determined. Please specify only one of the '
        f'following: {", ".join(quoted[:-1])}, or {quoted[-1]}'
    )


def describe(clients):
    """Where ``clients`` connect, for messages: ``host:port``, a socket path, a Sentinel
    service or a cluster node."""
    pool = clients.pool
    if pool is None:  # a cluster client
        node = clients.shared.get_default_node()
        return f'Redis Cluster (via {node.name})'
    service = getattr(pool, 'service_name', None)
    if service is not None:
        return f"the master of Sentinel service '{service}'"
    kwargs = pool.connection_kwargs
    if 'path' in kwargs:
        return kwargs['path']
    return f'{kwargs.get("host", "localhost")}:{kwargs.get("port", 6379)}'
