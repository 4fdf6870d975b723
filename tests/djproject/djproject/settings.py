"""A minimal Django project for the djhuey tests.

Everything it writes lives in ``$HUEY_DJPROJECT_DIR``: the Django database ``db.sqlite3`` and
the queue ``huey.db`` (a SqliteHuey). ``HUEY_DJPROJECT_DEBUG=1`` turns DEBUG on; with
``HUEY_DJPROJECT_IMMEDIATE`` unset, ``HUEY['immediate']`` is left to follow DEBUG.
"""

import os

DATA_DIR = os.environ['HUEY_DJPROJECT_DIR']

SECRET_KEY = 'huey-rs-tests-only'
DEBUG = os.environ.get('HUEY_DJPROJECT_DEBUG') == '1'
USE_TZ = True
INSTALLED_APPS = ['huey.contrib.djhuey', 'notes']
DATABASES = {
    'default': {
        'ENGINE': 'django.db.backends.sqlite3',
        'NAME': os.path.join(DATA_DIR, 'db.sqlite3'),
    },
}
DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'

HUEY = {
    'huey_class': 'huey.SqliteHuey',
    'name': 'djproject',
    'results': True,
    'connection': {'filename': os.path.join(DATA_DIR, 'huey.db')},
    'consumer': {'workers': 2, 'initial_delay': 0.01, 'max_delay': 0.05},
}
if 'HUEY_DJPROJECT_IMMEDIATE' in os.environ:
    HUEY['immediate'] = os.environ['HUEY_DJPROJECT_IMMEDIATE'] == '1'
