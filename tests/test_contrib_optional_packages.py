"""A missing optional package gives one error naming what to install.

Each case runs in a fresh interpreter where importing the package fails, as it does where
the package is not installed (``sys.modules[name] = None``).
"""

import subprocess
import sys
import textwrap

import pytest


def without(modules, code):
    script = 'import sys\n'
    script += ''.join(f'sys.modules[{name!r}] = None\n' for name in modules)
    done = subprocess.run(
        [sys.executable, '-c', script + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# The Django integration needs settings before it imports.
DJANGO = (
    "from django.conf import settings; settings.configure(HUEY={'huey_class': 'huey.MemoryHuey'})"
)


@pytest.mark.parametrize(
    'modules, module, extra',
    [
        (['peewee'], 'huey.contrib.sql_huey', 'huey-rs[peewee]'),
        (['peewee'], 'huey.contrib.stats', 'huey-rs[peewee]'),
        (['glide_sync'], 'huey.contrib.valkey_glide', 'huey-rs[valkey]'),
        (['django.tasks', 'django_tasks'], 'huey.contrib.djhuey.tasks_backend', 'django-tasks'),
    ],
)
def test_contrib_modules_name_the_extra_to_install(modules, module, extra):
    setup = DJANGO if module.startswith('huey.contrib.djhuey') else ''
    message = without(
        modules,
        f"""
        {setup}
        try:
            import {module}
        except ImportError as exc:
            print(exc)
        """,
    )
    assert f'pip install {extra}' in message, message


def test_cysqlite_huey_without_cysqlite():
    found = without(
        ['cysqlite'],
        """
        import huey.storage
        from huey import CySqliteHuey
        from huey.exceptions import ConfigurationError
        print(huey.storage.cysqlite is None)
        try:
            CySqliteHuey('x', filename='unused.db')
        except ConfigurationError as exc:
            print(exc)
        """,
    )
    assert found.splitlines() == [
        'True',
        '"cysqlite" not found. Run "pip install cysqlite" to install.',
    ]


def test_flask_panel_is_none_without_flask_peewee():
    found = without(
        ['flask_peewee'],
        """
        from huey.contrib.flask_admin import HueyPanel, enable_stats
        print(HueyPanel is None, callable(enable_stats))
        """,
    )
    assert found == 'True True'
