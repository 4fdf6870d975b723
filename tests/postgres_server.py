"""A throwaway PostgreSQL server: ``initdb`` in a temp dir, ``postgres`` on a free loopback
port, stopped and removed at the end. Used by the test fixtures (tests/conftest.py), the
benches, and from a shell by anything else that needs a real server::

    python tests/postgres_server.py run -- CMD [ARGS...]   # CMD runs with HUEY_PG_DSN set,
                                                          # the server is removed after it
    python tests/postgres_server.py start                  # prints HUEY_PG_DSN=... and the
    python tests/postgres_server.py stop DIR               # DIR to stop and remove it later

The server binaries come from Debian's ``postgresql`` package (``make postgres`` installs it),
found on PATH, under /usr/lib/postgresql/*/bin, or in ``$HUEY_PG_BINDIR``. PostgreSQL refuses
to run as root, so as root the cluster belongs to ``nobody`` (or ``$HUEY_PG_USER``; a system
user ``huey-postgres`` is created when neither exists). Connections use ``trust`` auth on
127.0.0.1 only; the cluster runs with ``fsync=off`` (a crash of the server process loses
nothing; a crash of the machine would, which a throwaway server does not care about).
"""

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HOW_TO_INSTALL = (
    'install the Debian package "postgresql" (apt-get install postgresql, or `make postgres` '
    'as root), or set HUEY_PG_BINDIR to a directory holding initdb and postgres'
)
USER = 'huey'  # the cluster's superuser and the database the DSN names
DATABASE = 'huey'
_BINARIES = ('initdb', 'postgres')


class PostgresUnavailable(RuntimeError):
    """The server could not be found or started; the message says why and what to do."""


def find_bindir():
    """The directory holding ``initdb`` and ``postgres`` (the newest installed version)."""
    configured = os.environ.get('HUEY_PG_BINDIR')
    candidates = [configured] if configured else []
    on_path = shutil.which('initdb')
    if on_path:  # Debian links some binaries into PATH; the others live beside the target
        candidates.append(os.path.dirname(os.path.realpath(on_path)))

    def version(path):
        try:
            return int(path.rstrip('/').split('/')[-2])
        except ValueError:
            return 0

    candidates += sorted(glob.glob('/usr/lib/postgresql/*/bin'), key=version, reverse=True)
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in _BINARIES):
            return bindir
    raise PostgresUnavailable(
        f'PostgreSQL server binaries ({", ".join(_BINARIES)}) not found: {HOW_TO_INSTALL}.'
    )


def _server_user():
    """``(uid, gid)`` to run the server as: ourselves, or an unprivileged user when root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get('HUEY_PG_USER')
    for candidate in [name] if name else ['nobody', 'huey-postgres']:
        try:
            entry = pwd.getpwnam(candidate)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    if name:
        raise PostgresUnavailable(f'HUEY_PG_USER={name!r} is not a user on this machine.')
    subprocess.run(
        [
            'useradd',
            '--system',
            '--no-create-home',
            '--shell',
            '/usr/sbin/nologin',
            'huey-postgres',
        ],
        check=True,
    )
    entry = pwd.getpwnam('huey-postgres')
    return entry.pw_uid, entry.pw_gid


def _template(bindir):
    """An ``initdb`` result for the server in ``bindir``, kept under ~/.cache/huey-rs."""
    version = subprocess.run(
        [os.path.join(bindir, 'postgres'), '--version'], capture_output=True, text=True
    ).stdout.split()[2]
    cache = os.path.join(os.path.expanduser('~'), '.cache', 'huey-rs')
    template = os.path.join(cache, f'postgres-{version}-cluster')
    if os.path.exists(os.path.join(template, 'PG_VERSION')):
        return template
    os.makedirs(cache, exist_ok=True)
    owner = _server_user()
    work = tempfile.mkdtemp(prefix='huey-pg-initdb-')
    try:
        os.chmod(work, 0o755)
        if owner:
            os.chown(work, *owner)
        data = os.path.join(work, 'data')
        args = [
            os.path.join(bindir, 'initdb'),
            '-D',
            data,
            '-U',
            USER,
            '--auth=trust',
            '--encoding=UTF8',
            '--locale=C',
            '--no-sync',
        ]
        kwargs = dict(user=owner[0], group=owner[1], extra_groups=[]) if owner else {}
        proc = subprocess.run(args, cwd=work, capture_output=True, text=True, **kwargs)
        if proc.returncode:
            raise PostgresUnavailable(
                f'initdb failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}'
            )
        # The database the DSN names, created in single-user mode (no server to start).
        proc = subprocess.run(
            [os.path.join(bindir, 'postgres'), '--single', '-D', data, '-j', 'postgres'],
            input=f'create database {DATABASE};\n',
            cwd=work,
            capture_output=True,
            text=True,
            **kwargs,
        )
        if proc.returncode:
            raise PostgresUnavailable(
                f'creating database {DATABASE} failed:\n{(proc.stdout + proc.stderr)[-2000:]}'
            )
        staged = tempfile.mkdtemp(prefix='.cluster-', dir=cache)
        os.rmdir(staged)
        shutil.copytree(data, staged, symlinks=True)
        try:
            os.rename(staged, template)  # atomic: concurrent builders keep the first
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return template


def _parent_dir():
    """Where throwaway clusters go: $HUEY_PG_TMPDIR, else /dev/shm (memory: a busy disk
    makes every write slow, and the cluster is thrown away), else the temp dir."""
    configured = os.environ.get('HUEY_PG_TMPDIR')
    if configured:
        return configured
    if os.path.isdir('/dev/shm') and os.access('/dev/shm', os.W_OK | os.X_OK):
        return '/dev/shm'
    return tempfile.gettempdir()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One ``postgres`` process over a cluster in its own temp dir, restartable on its port.

    ``dsn`` is a libpq URL for the ``huey`` database as the ``huey`` superuser.
    """

    host = '127.0.0.1'

    def __init__(self, port=None, settings=None):
        self.bindir = find_bindir()
        self.port = port or free_port()
        self.owner = _server_user()
        self.dir = tempfile.mkdtemp(prefix='huey-pg-', dir=_parent_dir())
        os.chmod(self.dir, 0o755)  # the server user must reach its data dir inside
        self.data = os.path.join(self.dir, 'data')
        self.log_path = os.path.join(self.dir, 'postgres.log')
        self.settings = {
            'listen_addresses': self.host,
            'unix_socket_directories': self.data,
            'max_connections': '300',
            'shared_buffers': '32MB',
            'fsync': 'off',
            'full_page_writes': 'off',
            'dynamic_shared_memory_type': 'mmap',
            'log_min_messages': 'warning',
            **(settings or {}),
        }
        self.process = None
        self._initdb()

    @property
    def dsn(self):
        return f'postgresql://{USER}@{self.host}:{self.port}/{DATABASE}'

    def dsn_for(self, schema):
        """The DSN with ``search_path`` set to ``schema``: tables go there, apart."""
        return f'{self.dsn}?options=-csearch_path%3D{schema}'

    @property
    def connection_params(self):
        return {'host': self.host, 'port': self.port, 'user': USER, 'dbname': DATABASE}

    def _popen(self, args, **kwargs):
        if self.owner:
            kwargs.update(user=self.owner[0], group=self.owner[1], extra_groups=[])
        return subprocess.Popen(args, cwd=self.dir, **kwargs)

    def _initdb(self):
        """A fresh cluster in ``self.data``: a copy of a cached ``initdb`` result (initdb
        takes seconds, a copy a fraction of one), made on first use per server version."""
        template = _template(self.bindir)
        shutil.copytree(template, self.data, symlinks=True)
        if self.owner:
            for root, dirs, files in os.walk(self.dir):
                for name in dirs + files:
                    os.lchown(os.path.join(root, name), *self.owner)
            os.chown(self.dir, *self.owner)
        os.chmod(self.data, 0o700)

    def start(self, timeout=30):
        args = [os.path.join(self.bindir, 'postgres'), '-D', self.data, '-p', str(self.port)]
        for key, value in self.settings.items():
            args += ['-c', f'{key}={value}']
        log = open(self.log_path, 'ab')
        self.process = self._popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop('immediate')
            raise
        return self

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise PostgresUnavailable(
                    f'postgres exited with {self.process.returncode} '
                    f'on port {self.port}; log:\n{self.log()}'
                )
            if time.monotonic() > deadline:
                raise PostgresUnavailable(
                    f'postgres on port {self.port} was not ready within '
                    f'{timeout}s; log:\n{self.log()}'
                )
            time.sleep(0.02)

    def ready(self):
        """Whether the postmaster says it accepts connections (postmaster.pid's status)."""
        try:
            with open(os.path.join(self.data, 'postmaster.pid')) as fh:
                lines = fh.read().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == 'ready'

    def stop(self, mode='fast'):
        """Stop the server: ``fast`` (SIGINT: sessions are cut, everything committed is
        kept) or ``immediate`` (SIGQUIT: like a crash; WAL replay on the next start)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT if mode == 'immediate' else signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, mode='fast'):
        self.stop(mode)
        return self.start()

    def running(self):
        return self.process is not None and self.process.poll() is None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        try:
            with open(self.log_path, 'rb') as fh:
                return fh.read()[-3000:].decode('utf8', 'replace')
        except OSError:
            return ''


# Command line ------------------------------------------------------------------------------


def _stop_dir(path):
    """Stop the server whose temp dir is ``path`` (as printed by ``start``) and remove it."""
    pidfile = os.path.join(path, 'data', 'postmaster.pid')
    try:
        with open(pidfile) as fh:
            pid = int(fh.readline())
    except (OSError, ValueError):
        pid = None
    if pid:
        try:
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.05)
        except ProcessLookupError:
            pass
    shutil.rmtree(path, ignore_errors=True)


def main(argv):
    usage = f'usage: {argv[0]} run -- CMD [ARGS...] | start | stop DIR'
    if len(argv) < 2 or argv[1] not in ('run', 'start', 'stop'):
        sys.exit(usage)
    if argv[1] == 'stop':
        if len(argv) != 3:
            sys.exit(usage)
        _stop_dir(argv[2])
        return 0
    try:
        server = PostgresServer()
        server.start()
    except PostgresUnavailable as exc:
        sys.exit(str(exc))
    if argv[1] == 'start':
        print(f'HUEY_PG_DSN={server.dsn}')
        print(f'# stop with: {sys.executable} {os.path.abspath(__file__)} stop {server.dir}')
        return 0
    command = argv[2:]
    if command[:1] == ['--']:
        command = command[1:]
    if not command:
        server.cleanup()
        sys.exit(usage)
    try:
        return subprocess.run(command, env=dict(os.environ, HUEY_PG_DSN=server.dsn)).returncode
    finally:
        server.cleanup()


if __name__ == '__main__':
    sys.exit(main(sys.argv))
