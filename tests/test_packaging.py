"""Packaging: one implementation per install, and it says which.

Real wheels installed by real pip into fresh virtualenvs: the huey_rs wheel, the huey-named
wheel (``huey==3.5.4+rs.<version>``, ``scripts/huey-named-wheel``), huey 3.5.4's wheel from
PyPI (fetched once into ~/.cache/huey-rs/wheels) and a tiny local package that requires
``huey``. Then the consumer's first log line, and ``-k process`` on a platform without fork
(forced here by deleting ``os.fork`` before huey is imported).
"""

import base64
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import huey
from huey import _implementation

REPO = Path(__file__).resolve().parent.parent
CACHE = Path.home() / '.cache' / 'huey-rs'
VERSION = _implementation.VERSION
HUEY_NAMED_VERSION = f'3.5.4+rs.{VERSION}'
WAIT = 20


def test_implementation_names_huey_rs_and_keeps_the_api_version():
    assert huey.__version__ == '3.5.4'
    assert huey.__implementation__ == ('huey-rs', VERSION)
    assert huey.__implementation__.name == 'huey-rs'
    assert huey.__implementation__.version == VERSION


def test_every_version_field_agrees():
    pyproject = REPO / 'pyproject.toml'
    if not pyproject.exists():
        pytest.fail(f'{pyproject} is missing: run the tests from a checkout (or copy it there)')
    assert re.search(rf'^version = "{re.escape(VERSION)}"$', pyproject.read_text(), re.M)
    cargo = REPO / 'Cargo.toml'
    if cargo.exists():  # .ci/run's installed-wheel pass copies tests and pyproject.toml only
        assert re.search(rf'^version = "{re.escape(VERSION)}"$', cargo.read_text(), re.M)


def test_a_huey_storage_module_beside_ours_is_refused_with_the_fix(tmp_path):
    package = tmp_path / 'site-packages' / 'huey'
    package.mkdir(parents=True)
    _implementation.check_single_install(str(package))  # ours alone: fine
    (package / 'storage.py').write_text('# huey 3.5.4')
    (tmp_path / 'site-packages' / 'huey-3.5.4.dist-info').mkdir()
    dependent = tmp_path / 'site-packages' / 'django_huey_monitor-1.0.dist-info'
    dependent.mkdir()
    (dependent / 'METADATA').write_text('Name: django-huey-monitor\nRequires-Dist: huey>=2\n')
    with pytest.raises(_implementation.MixedInstallError) as raised:
        _implementation.check_single_install(str(package))
    message = str(raised.value)
    assert isinstance(raised.value, ImportError)
    assert f'huey-rs {VERSION} and huey 3.5.4 are installed into the same folder' in message
    assert 'django-huey-monitor 1.0 require(s) it' in message
    assert 'pip uninstall -y huey huey-rs' in message
    assert f"pip install 'huey=={HUEY_NAMED_VERSION}'" in message


# Real installs ----------------------------------------------------------------------------


def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    return f'{name},sha256={digest},{len(data)}'


def make_wheel(directory, name, requires):
    """A pure-Python wheel ``name`` 1.0 whose one module imports huey, requiring ``requires``."""
    module = name.replace('-', '_')
    dist_info = f'{module}-1.0.dist-info'
    files = {
        f'{module}.py': b'import huey\n\nHUEY = huey.MemoryHuey("dependent")\n',
        f'{dist_info}/METADATA': (
            f'Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nRequires-Dist: {requires}\n'
        ).encode(),
        f'{dist_info}/WHEEL': (
            b'Wheel-Version: 1.0\nGenerator: huey-rs tests\nRoot-Is-Purelib: true\n'
            b'Tag: py3-none-any\n'
        ),
    }
    record = [_record_line(path, data) for path, data in files.items()]
    record.append(f'{dist_info}/RECORD,,')
    path = Path(directory) / f'{module}-1.0-py3-none-any.whl'
    with zipfile.ZipFile(path, 'w') as zf:
        for file_name, data in files.items():
            zf.writestr(file_name, data)
        zf.writestr(f'{dist_info}/RECORD', '\n'.join(record) + '\n')
    return path


@pytest.fixture(scope='session')
def wheels(tmp_path_factory):
    """{'huey-rs': path, 'huey': path}: from $HUEY_RS_DIST (.ci/run passes the wheels it
    built), else built from this checkout with maturin and scripts/huey-named-wheel."""
    dist = os.environ.get('HUEY_RS_DIST')
    if not dist:
        if not (REPO / 'Cargo.toml').exists():
            pytest.fail('no wheels to test: set HUEY_RS_DIST to a folder holding `make wheel`s')
        maturin = shutil.which('maturin', path=os.path.dirname(sys.executable)) or 'maturin'
        dist = tmp_path_factory.mktemp('dist')
        subprocess.run(
            # This interpreter, as `make dev` used: cargo's cache then serves the build.
            [maturin, 'build', '--release', '-q', '-i', sys.executable, '--out', str(dist)],
            cwd=REPO,
            check=True,
        )
        (built,) = Path(dist).glob('huey_rs-*.whl')
        subprocess.run(
            [sys.executable, str(REPO / 'scripts' / 'huey-named-wheel'), str(built)], check=True
        )
    found = {}
    for name, pattern in (('huey-rs', f'huey_rs-{VERSION}-*.whl'), ('huey', 'huey-*+rs.*.whl')):
        matches = sorted(Path(dist).glob(pattern))
        if len(matches) != 1:
            pytest.fail(f'expected one {pattern} in {dist}, found {[m.name for m in matches]}')
        found[name] = matches[0]
    return found


@pytest.fixture(scope='session')
def index(tmp_path_factory):
    """A --find-links folder standing for PyPI: huey 3.5.4's wheel and three packages that
    require huey (any version, ``==3.5.4``, ``>=2``)."""
    cached = CACHE / 'wheels'
    if not list(cached.glob('huey-3.5.4-*.whl')):
        cached.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '-w', str(cached)]
            + ['huey==3.5.4'],
            check=True,
        )
    folder = tmp_path_factory.mktemp('index')
    for wheel in cached.glob('huey-3.5.4-*.whl'):
        shutil.copy(wheel, folder)
    make_wheel(folder, 'needs-huey', 'huey')
    make_wheel(folder, 'needs-huey-pinned', 'huey==3.5.4')
    make_wheel(folder, 'needs-huey-2', 'huey>=2')
    return folder


@pytest.fixture(scope='session')
def private_index(tmp_path_factory, wheels):
    """A folder standing for a private index: both huey-rs wheels."""
    folder = tmp_path_factory.mktemp('private')
    for wheel in wheels.values():
        shutil.copy(wheel, folder)
    return folder


class Venv:
    """A fresh virtualenv without pip of its own; this interpreter's pip installs into it,
    from local folders only (``--no-index``)."""

    def __init__(self, path, *indexes):
        self.path = Path(path)
        self.find_links = [arg for index in indexes for arg in ('--find-links', str(index))]
        subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(path)], check=True)
        self.python = str(self.path / ('Scripts/python.exe' if os.name == 'nt' else 'bin/python'))

    def pip(self, *args, check=True):
        done = subprocess.run(
            [sys.executable, '-m', 'pip', '--python', self.python, *args]
            + (['--no-index', *self.find_links] if args[0] == 'install' else []),
            capture_output=True,
            text=True,
        )
        if check and done.returncode != 0:
            pytest.fail(f'pip {" ".join(args)} failed:\n{done.stdout}\n{done.stderr}')
        return done.stdout + done.stderr

    def run(self, code):
        return subprocess.run(
            [self.python, '-c', textwrap.dedent(code)],
            capture_output=True,
            text=True,
            cwd=self.path,
            timeout=WAIT * 3,
        )

    def installed(self):
        """{distribution name: version} (huey's files may be broken: no huey import)."""
        done = self.run(
            'import importlib.metadata as m; '
            'print(*(f"{d.metadata[\'Name\']}=={d.version}" for d in m.distributions()))'
        )
        return dict(item.split('==') for item in done.stdout.split())


WORKS = """
    import importlib.metadata, os, huey, needs_huey
    from huey import MemoryHuey
    app = MemoryHuey(immediate=True)
    add = app.task()(lambda a, b: a + b)
    assert add(1, 2).get() == 3
    assert not os.path.exists(os.path.join(os.path.dirname(huey.__file__), 'storage.py'))
    print(tuple(huey.__implementation__), huey.__version__, importlib.metadata.version('huey'))
"""


def test_huey_named_wheel_then_a_package_requiring_huey_runs_huey_rs_alone(
    tmp_path, index, private_index
):
    venv = Venv(tmp_path / 'venv', index, private_index)
    venv.pip('install', f'huey=={HUEY_NAMED_VERSION}')
    out = venv.pip('install', 'needs-huey', 'needs-huey-pinned', 'needs-huey-2')
    assert 'huey-3.5.4-' not in out and 'Successfully installed huey-3.5.4' not in out, out
    assert venv.installed()['huey'] == HUEY_NAMED_VERSION
    done = venv.run(WORKS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split('\n')[0] == (
        f"('huey-rs', '{VERSION}') 3.5.4 {HUEY_NAMED_VERSION}"
    ), done.stdout


def test_a_requirements_file_pinning_the_huey_named_wheel_picks_it(tmp_path, index, private_index):
    requirements = tmp_path / 'requirements.txt'
    requirements.write_text(f'huey=={HUEY_NAMED_VERSION}\nneeds-huey\nneeds-huey-pinned\n')
    venv = Venv(tmp_path / 'venv', index, private_index)
    venv.pip('install', '-r', str(requirements))
    installed = venv.installed()
    assert installed['huey'] == HUEY_NAMED_VERSION and 'huey-rs' not in installed
    done = venv.run(WORKS)
    assert done.returncode == 0, done.stderr


def assert_mixed_install_error(done):
    assert done.returncode != 0
    assert 'huey._implementation.MixedInstallError: huey-rs' in done.stderr, done.stderr
    error = done.stderr[done.stderr.index('MixedInstallError: ') :]  # the message, to the end
    assert 'huey 3.5.4 are installed into the same folder' in error
    assert 'pip uninstall -y huey huey-rs' in error
    assert f"pip install 'huey=={HUEY_NAMED_VERSION}'" in error


def test_huey_rs_wheel_then_a_package_requiring_huey_fails_at_import_naming_the_fix(
    tmp_path, index, wheels
):
    venv = Venv(tmp_path / 'venv', index)
    venv.pip('install', str(wheels['huey-rs']))
    done = venv.run(
        'import importlib.metadata as m, huey; print(m.version("huey-rs"), '
        'm.packages_distributions()["huey"] if hasattr(m, "packages_distributions") '  # 3.10+
        'else ["huey-rs"])'
    )
    assert done.stdout.split() == [VERSION, "['huey-rs']"], done.stderr

    venv.pip('install', 'needs-huey')  # pip puts huey 3.5.4's files into the same folder
    assert venv.installed()['huey'] == '3.5.4'
    for code in ('import huey', 'import needs_huey', 'from huey.api import Huey'):
        done = venv.run(code)
        assert_mixed_install_error(done)
        assert 'because needs-huey 1.0 require(s) it' in done.stderr

    # The fix the message names gives huey-rs alone, with needs-huey still satisfied.
    venv.pip('uninstall', '-y', 'huey', 'huey-rs')
    venv.pip('install', '--find-links', str(wheels['huey'].parent), f'huey=={HUEY_NAMED_VERSION}')
    done = venv.run(WORKS)
    assert done.returncode == 0, done.stderr


def test_huey_rs_wheel_over_huey_fails_at_import_naming_the_fix(tmp_path, index, wheels):
    venv = Venv(tmp_path / 'venv', index)
    venv.pip('install', 'huey==3.5.4')
    venv.pip('install', str(wheels['huey-rs']))
    assert_mixed_install_error(venv.run('import huey'))


# The consumer says what it is -------------------------------------------------------------

APP = """\
import huey as huey_package

huey = huey_package.MemoryHuey('packaging-test')
batching = huey_package.SqliteHuey('packaging-test', filename='default.db')
reliable = huey_package.SqliteHuey('packaging-test', filename='reliable.db', reliable=True)


@huey.task()
def add(a, b):
    return a + b


@huey.on_startup()
@batching.on_startup()
@reliable.on_startup()
def announce():
    print('worker-up', flush=True)  # the consumer has installed its signal handlers by now
"""

NO_FORK = (
    'import os, sys; del os.fork; '
    'from huey.bin.huey_consumer import main; sys.argv[0] = "huey_consumer"; main()'
)


def start_consumer(cwd, *args, python_code=None):
    command = [sys.executable, '-c', python_code] if python_code else None
    command = command or [sys.executable, '-m', 'huey.bin.huey_consumer']
    return subprocess.Popen(
        [*command, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def first_line_then_stop(process):
    """The consumer's first log line; then, once a worker is up, SIGINT and a clean exit."""
    lines = []
    try:
        while not lines or 'worker-up' not in lines[-1]:  # two workers may print at once
            lines.append(process.stdout.readline())
            assert lines[-1], ''.join(lines)  # '' is end of output: the consumer exited
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=WAIT)[0]
    assert process.returncode == 0, ''.join(lines) + rest
    return lines[0]


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / 'app.py').write_text(APP)
    return tmp_path


@pytest.mark.parametrize(
    'path, reliable, prefetch',
    # What one fetch takes: Memory storage and reliable mode on Sqlite take one at a time.
    [('app.batching', 'off', 3), ('app.huey', 'off', 1), ('app.reliable', 'on', 1)],
    ids=['default', 'memory', 'reliable'],
)
def test_consumer_first_log_line_names_huey_rs_and_reliable_mode(
    app_dir, path, reliable, prefetch
):
    line = first_line_then_stop(start_consumer(app_dir, path, '-w', '2', '-p', '3'))
    assert re.search(
        rf'Huey consumer started with 2 thread, PID \d+ at .* '
        rf'\(huey-rs {re.escape(VERSION)}, reliable mode {reliable}, prefetch {prefetch}\)$',
        line.rstrip('\n'),
    ), line


def test_without_fork_worker_type_process_is_one_clear_error_at_start_up(app_dir):
    done = subprocess.run(
        [sys.executable, '-c', NO_FORK, 'app.huey', '-k', 'process', '-w', '2'],
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().split('\n')
    assert len(lines) == 1, done.stderr
    assert 'Traceback' not in done.stderr
    assert f'The "process" worker type needs fork(), which {sys.platform} does not' in lines[0]
    assert '-k thread' in lines[0]


def test_thread_workers_run_without_fork(app_dir):
    line = first_line_then_stop(start_consumer(app_dir, 'app.huey', python_code=NO_FORK))
    assert 'Huey consumer started with 1 thread' in line, line


def test_without_fork_create_consumer_raises_configuration_error(monkeypatch):
    from huey import MemoryHuey
    from huey.exceptions import ConfigurationError

    monkeypatch.delattr(os, 'fork')
    with pytest.raises(ConfigurationError, match=r'needs fork\(\)'):
        MemoryHuey('no-fork').create_consumer(worker_type='process')
