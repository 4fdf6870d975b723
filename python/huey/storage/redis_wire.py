"""The Redis storages' hot path: packed commands on one raw connection per thread.

A redis-py client call goes through the client (retry wrapper, response callbacks, events,
metrics) and the pool (checkout, checkin) each time: about 50 us of Python per command,
most of a consumer's time per task. The few commands a worker and a producer send per task
(enqueue, pop, the revocation check, storing the result) go through ``Wire`` instead: the
command is packed here, written with the others of the same step in one ``sendall``, and the
replies are read back in order on a connection the storage's pool made for this thread.
Everything else still uses the client.

A socket the server closed is replaced before use, and connection errors are retried, as
redis-py's pool and client do. Any error leaves the connection closed (it reconnects on the
next call), so a reply never goes to the wrong request; ``ReadOnlyError`` (the server became
a replica) also drops the pool's idle connections, like ``FailoverAwareRedis``.
"""

import os
import threading

from redis.exceptions import ReadOnlyError, RedisError


def pack(*args):
    """One command in RESP: ``args`` are bytes, str or numbers."""
    parts = [b'*%d\r\n' % len(args)]
    for arg in args:
        if not isinstance(arg, (bytes, bytearray, memoryview)):
            arg = (arg if isinstance(arg, str) else repr(arg)).encode('utf8')
        parts.append(b'$%d\r\n' % len(arg))
        parts.append(arg)
        parts.append(b'\r\n')
    return b''.join(parts)


class Wire:
    """Send packed commands and read their replies on this thread's own connection."""

    def __init__(self, pool):
        self.pool = pool
        self._local = threading.local()

    def _connection(self):
        local = self._local
        conn = getattr(local, 'conn', None)
        if conn is None or local.pid != os.getpid():
            # Made by the pool (its settings, its max_connections) but never lent by it, so
            # a small blocking pool cannot be starved; a forked child makes its own.
            conn = self.pool.make_connection()
            local.conn, local.pid = conn, os.getpid()
        return conn

    def call(self, *commands):
        """Send the packed ``commands`` in one write; returns their replies in order. An
        error reply raises (the connection is closed first, unread replies with it).
        A socket the server closed meanwhile is replaced first, as the pool does on
        checkout; connection errors are retried as the connection's ``retry`` says."""
        conn = self._connection()
        packed = [b''.join(commands)]
        if conn._sock is not None:
            # Like the pool's checkout: a socket with something to read between commands
            # was closed by the server (a restart, a timeout) or is out of step.
            try:
                stale = conn.can_read()
            except (OSError, RedisError):
                stale = True
            if stale:
                conn.disconnect()

        def send():
            conn.send_packed_command(packed, check_health=False)
            return [conn.read_response() for _ in commands]

        try:
            retry = getattr(conn, 'retry', None)
            if retry is None:
                return send()
            return retry.call_with_retry(send, lambda _: conn.disconnect())
        except ReadOnlyError:
            conn.disconnect()
            self.pool.disconnect(inuse_connections=False)
            raise
        except BaseException:
            conn.disconnect()
            raise

    def one(self, *args):
        """One command; its reply."""
        return self.call(pack(*args))[0]
