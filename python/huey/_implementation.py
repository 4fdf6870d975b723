"""Which huey this is, and a refusal to run from a ``huey/`` folder mixed with huey's files.

huey-rs installs the import package ``huey``, as huey does. pip keeps track of files per
distribution, not per folder: when some other package requires ``huey`` and only ``huey-rs``
is installed, pip unpacks huey's wheel into the same ``huey/`` folder, over ours. Half the
modules are then huey's and half ours, and uninstalling either one breaks the other. Every
huey release ships ``huey/storage.py``; huey-rs has a ``huey/storage/`` package instead, so
that file beside our package means huey's files are mixed in. Importing this module checks
(one stat): ``huey/__init__.py`` imports it first (huey-rs installed over huey), and so does
``huey/storage/__init__.py``, the one module of ours that huey's own ``__init__`` still
reaches when huey was installed over huey-rs.
"""

import os
import re
from collections import namedtuple

NAME = 'huey-rs'
VERSION = '0.1.0'  # the huey-rs release; pyproject.toml and Cargo.toml carry the same
API_VERSION = '3.5.4'  # the huey release whose API, messages and storage layouts we keep

Implementation = namedtuple('Implementation', 'name version')
IMPLEMENTATION = Implementation(NAME, VERSION)

# The huey-named build of huey-rs (``make wheel``) is ``huey==3.5.4+rs.<our version>``.
HUEY_DISTRIBUTION_VERSION = f'{API_VERSION}+rs.{VERSION}'

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class MixedInstallError(ImportError):
    """huey's and huey-rs's files are installed into one ``huey/`` folder."""


def check_single_install(package_dir=PACKAGE_DIR):
    """Raise ``MixedInstallError`` naming the fix if huey's files sit beside ours."""
    if os.path.exists(os.path.join(package_dir, 'storage.py')):
        raise MixedInstallError(mixed_install_message(package_dir))


def mixed_install_message(package_dir):
    site_dir = os.path.dirname(package_dir)
    found = ', '.join(huey_distributions(site_dir)) or 'a huey release (its metadata is gone)'
    dependents = packages_requiring_huey(site_dir)
    why = (
        f'pip installed huey because {", ".join(dependents)} require(s) it'
        if dependents
        else 'pip installed huey after huey-rs (or huey-rs after huey)'
    )
    return (
        f'huey-rs {VERSION} and {found} are installed into the same folder, {package_dir}: '
        f'the huey package there mixes files of both and cannot run ({why}). Fix: remove '
        'both, then install huey-rs as the distribution named huey, which satisfies every '
        'package that requires huey (see "One implementation per install" in the README):\n'
        '    pip uninstall -y huey huey-rs\n'
        f"    pip install 'huey=={HUEY_DISTRIBUTION_VERSION}'  "
        '# from your index or --find-links (`make wheel` builds it)'
    )


_DIST_INFO = re.compile(r'^(?P<name>[^-]+)-(?P<version>[^-]+)\.dist-info$')


def _dist_infos(site_dir):
    try:
        entries = os.listdir(site_dir)
    except OSError:
        return
    for entry in sorted(entries):
        match = _DIST_INFO.match(entry)
        if match:
            yield match['name'].lower().replace('_', '-'), match['version'], entry


def huey_distributions(site_dir):
    """'huey 3.5.4'-style names of the distributions in ``site_dir`` that are not huey-rs."""
    return [
        f'{name} {version}'
        for name, version, _ in _dist_infos(site_dir)
        if name == 'huey' and '+rs.' not in version
    ]


def packages_requiring_huey(site_dir):
    """Names of the distributions in ``site_dir`` whose requirements name ``huey``."""
    requires = re.compile(r'^Requires-Dist:\s*huey(?![\w.-])', re.I | re.M)
    found = []
    for name, version, entry in _dist_infos(site_dir):
        try:
            with open(os.path.join(site_dir, entry, 'METADATA'), encoding='utf8') as f:
                metadata = f.read()
        except OSError:
            continue
        if requires.search(metadata):
            found.append(f'{name} {version}')
    return found


check_single_install()
