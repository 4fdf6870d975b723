"""How PostgresStorage talks to the server: the psycopg driver (imported on first use), one
connection per thread, and the process's LISTEN connection that waiting dequeues sleep on.

Each thread (each greenlet under gevent) has its own connection, in autocommit mode, opened
on first use and after a fork or a broken connection; nearly every operation is one
statement, so one round trip, and atomic. Waiting threads take turns on the single LISTEN
connection of their process (see ``huey.storage.postgres`` on wake-ups).
"""

import contextlib
import math
import os
import threading
import time
import weakref

from huey.exceptions import ConfigurationError

_psycopg = None  # the driver module, once imported by driver()

MISSING_PSYCOPG = (
    '"psycopg" (version 3.2 or newer) not found, cannot use Postgres storage backend. '
    'Run "pip install psycopg" (or "pip install huey-rs[postgres]") to install.'
)


def driver():
    """The psycopg module, or None when it is not installed (optional: only PostgresStorage
    needs it). Imported on first use rather than with huey: ``huey_consumer`` imports huey
    before the app, and an app that monkey-patches for gevent at its top must do so before
    psycopg picks its (cooperative or not) way of waiting on sockets."""
    global _psycopg
    if _psycopg is None:
        try:
            import psycopg
            import psycopg.conninfo
            import psycopg.errors
        except ImportError:
            return None
        _psycopg = psycopg
    return _psycopg


def _check_timeout(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{name} must be a number of seconds, got {value!r}')
    if not math.isfinite(value) or value < 0:
        raise ValueError(f'{name} must be a finite number of seconds >= 0, got {value!r}')
    return value


_LOCAL_CLASSES = {}


def _thread_connection():
    """A new slot for the calling thread's connection (huey 3.5.4 calls it
    ``_listen_local``): per greenlet when gevent has patched ``threading`` by the time the
    storage is made. Resolved then, not at import: ``huey_consumer`` imports huey before
    the app that patches, and greenlets sharing one slot would share one connection."""
    base = threading.local
    cls = _LOCAL_CLASSES.get(base)
    if cls is None:
        cls = _LOCAL_CLASSES[base] = type(
            '_ThreadConnection',
            (base,),
            {
                'conn': None,
                'pid': -1,
                'generation': -1,
                'closer': None,
            },
        )
    return cls()


class _Closer:
    """Closes a thread's connection when the thread (and so its local) goes away; never in
    a forked child, where closing would end the parent's session."""

    __slots__ = ('conn', 'pid')

    def __init__(self, conn):
        self.conn, self.pid = conn, os.getpid()

    def __del__(self):
        if self.pid == os.getpid():
            with contextlib.suppress(Exception):
                self.conn.close()


class _Listener:
    """The process's LISTEN connection and the turn to wait on it."""

    __slots__ = ('pid', 'turn', 'conn', 'generation', 'wakes')

    def __init__(self):
        # Made on first wait, after any gevent patching: a greenlet-aware lock then.
        self.pid, self.turn, self.conn, self.generation = os.getpid(), threading.Lock(), None, -1
        self.wakes = 0  # notifications taken so far (counted by their taker, under the turn)


class PostgresConnections:
    """PostgresStorage's connections and its wait for notifications (a mixin: the storage
    sets ``_listen_local``, ``_listener``, ``_generation``, ``_open`` and ``_open_lock`` in
    its ``__init__``)."""

    def _connect(self):
        """A new autocommit connection; a failure says which setting it came from."""
        if self.connection is not None:
            conn = self.connection()
        else:
            try:
                conn = _psycopg.connect(self.dsn or '', **self.connection_params)
            except _psycopg.ProgrammingError as exc:  # A malformed dsn or unknown option.
                raise ConfigurationError(
                    f'PostgresStorage {self.name!r}: the connection settings are not valid '
                    f'({self._settings()}): {str(exc).strip()}'
                ) from None
            except _psycopg.OperationalError as exc:
                raise _psycopg.OperationalError(
                    f'PostgresStorage {self.name!r} could not connect to PostgreSQL '
                    f'({self._settings()}): {str(exc).strip()}'
                ) from None
        conn.autocommit = True
        return conn

    _create_connection = _connect

    def _settings(self):
        """The connection settings for messages, password left out."""
        shown = []
        if self.dsn:
            try:
                parsed = _psycopg.conninfo.conninfo_to_dict(self.dsn)
            except Exception:
                shown.append('dsn=<unparseable>')
            else:
                if parsed.pop('password', None) is not None:
                    parsed['password'] = '***'
                shown.append('dsn=' + ' '.join(f'{k}={v}' for k, v in parsed.items()))
        for key, value in self.connection_params.items():
            shown.append(f'{key}={"***" if key == "password" else value!r}')
        return ', '.join(shown) or 'dsn not set: libpq defaults and PG* environment variables'

    @property
    def conn(self):
        """The calling thread's connection, opened on first use, after ``close()``, after
        a fork, and after the previous one broke (a server restart, say)."""
        local = self._listen_local
        conn = local.conn
        if (
            conn is not None
            and local.generation == self._generation
            and local.pid == os.getpid()
            and not conn.broken
            and not conn.closed
        ):
            return conn
        return self._reconnect(local)

    @property
    def _conn(self):
        """The calling thread's open connection, or None (huey's attribute name)."""
        local = self._listen_local
        if local.conn is None or local.pid != os.getpid() or local.generation != self._generation:
            return None
        return local.conn

    @_conn.setter
    def _conn(self, value):
        pass  # BaseSqlStorage.__init__ resets it; connections are per thread here.

    def _reconnect(self, local):
        if local.pid == os.getpid() and local.conn is not None:
            with contextlib.suppress(Exception):
                local.conn.close()  # This thread's own: closing it cannot race a statement.
        local.conn = local.closer = None
        conn = self._connect()
        local.conn, local.closer = conn, _Closer(conn)
        local.pid, local.generation = os.getpid(), self._generation
        with self._open_lock:
            self._open = [entry for entry in self._open if entry[2]() is not None]
            self._open.append((os.getpid(), threading.get_ident(), weakref.ref(conn)))
        return conn

    def close(self):
        """Retire every connection this storage opened in this process.

        The calling thread's connection and those of threads that have ended are closed now;
        another live thread may be in the middle of a statement on its own, so it closes
        its connection itself, on its next use of the storage. Threads that use the storage
        afterwards open fresh connections (the consumer calls this before forking). True
        when there was any to retire.
        """
        with self._open_lock:
            self._generation += 1
            entries, self._open = self._open, []
        pid, me = os.getpid(), threading.get_ident()
        alive = {thread.ident for thread in threading.enumerate()}
        retired = self._close_listener()
        for owner_pid, owner, ref in entries:
            conn = ref()
            if owner_pid != pid or conn is None:
                continue
            retired = True
            if owner == me or owner not in alive:
                with contextlib.suppress(Exception):
                    conn.close()
        return retired

    def _close_listener(self):
        """Close this process's LISTEN connection unless a thread is waiting on it (that
        thread replaces it on its next turn: its generation is old). True when it was open."""
        listener = self._listener
        if listener is None or listener.pid != os.getpid() or listener.conn is None:
            return False
        if listener.turn.acquire(blocking=False):
            try:
                with contextlib.suppress(Exception):
                    listener.conn.close()
                listener.conn = None
            finally:
                listener.turn.release()
        return True

    def _listening_connection(self, listener):
        """The LISTEN connection (its holder has the turn); a new one after ``close()``, a
        fork or a broken connection. Second value: whether LISTEN was just issued."""
        conn = listener.conn
        if (
            conn is not None
            and listener.generation == self._generation
            and not conn.broken
            and not conn.closed
        ):
            return conn, False
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()  # This process's own (a forked child gets a new listener).
            listener.conn = None
        conn = self._connect()
        try:
            conn.execute('listen "{}"'.format(self.channel.replace('"', '""')))
        except BaseException:
            conn.close()
            raise
        listener.conn, listener.generation = conn, self._generation
        return conn, True

    @contextlib.contextmanager
    def db(self, commit=False, close=False):
        """A cursor on this thread's connection (huey's BaseSqlStorage helper), inside a
        transaction with ``commit``; ``close`` closes the connection afterwards."""
        conn = self.conn
        try:
            with conn.transaction() if commit else contextlib.nullcontext():
                with conn.cursor() as cursor:
                    yield cursor
        except _psycopg.errors.UndefinedTable as exc:
            raise self._missing_table(exc) from None
        finally:
            if close:
                self._listen_local.generation = -1
                conn.close()

    def _wait_using(self, pop, timeout):
        if timeout is not None and not (
            isinstance(timeout, (int, float)) and 0 <= timeout < math.inf  # NaN fails
        ):
            _check_timeout('timeout', timeout)
        if not timeout:
            return pop()
        deadline = time.monotonic() + timeout
        listener = self._listener
        if listener is None or listener.pid != os.getpid():
            with self._open_lock:
                listener = self._listener
                if listener is None or listener.pid != os.getpid():
                    listener = self._listener = _Listener()
        # The notifications taken before this look: one taken after it may announce a
        # message this look missed (its taker takes one message of what may be a burst).
        seen = listener.wakes
        found = pop()
        if found is not None:
            return found
        while True:
            if not listener.turn.acquire(timeout=max(deadline - time.monotonic(), 0)):
                return None
            try:
                conn, listened = self._listening_connection(listener)
                # Notifications start with LISTEN; and those taken since this thread last
                # looked may have announced more than their takers took: look again.
                if listened or listener.wakes != seen:
                    seen = listener.wakes
                    found = pop()
                    if found is not None:
                        return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                notified = False
                # Drains every notification already received (the connection keeps those
                # that arrived while no thread waited) or waits for the next one.
                for _ in conn.notifies(timeout=remaining, stop_after=1):
                    notified = True
                if not notified:
                    return None
                listener.wakes += 1
                seen = listener.wakes
            finally:
                listener.turn.release()
            found = pop()
            if found is not None:
                return found  # Otherwise another consumer took it: wait again.
