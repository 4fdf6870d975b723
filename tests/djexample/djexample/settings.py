"""huey's Django example (examples/django_ex in huey's repository), retold for the tests: the
admin, ``huey.contrib.djhuey`` with its stats dashboard app, Django's tasks framework on
HueyBackend, and a small app whose tasks the consumer runs.

As in huey's example the queue is a RedisHuey (or ``HUEY_DJEXAMPLE_CLASS``); here on the
test redis-server (``HUEY_DJEXAMPLE_REDIS_PORT``) under the queue ``HUEY_DJEXAMPLE_QUEUE``.
Everything written to disk goes to ``HUEY_DJEXAMPLE_DIR``: the Django database and the
stats database ``huey-stats.db`` (its default name, relative to BASE_DIR).

With ``HUEY_DJEXAMPLE_PG_DSN`` (a ``postgresql://`` URL naming a database of its own) all three
live in that PostgreSQL database instead: Django's tables, the queue (a PostgresHuey) and the
stats tables.
"""

import importlib.util
import os

import django

BASE_DIR = os.environ['HUEY_DJEXAMPLE_DIR']

DEBUG = False
SECRET_KEY = 'huey-rs-tests-only'
ALLOWED_HOSTS = ['testserver', '127.0.0.1', 'localhost']
USE_TZ = True
DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'

INSTALLED_APPS = [
    'django.contrib.admin',
    'django.contrib.auth',
    'django.contrib.contenttypes',
    'django.contrib.sessions',
    'django.contrib.messages',
    'django.contrib.staticfiles',
    'huey.contrib.djhuey',
    'huey.contrib.djhuey.stats',
    'shop',
]

MIDDLEWARE = [
    'django.contrib.sessions.middleware.SessionMiddleware',
    'django.middleware.common.CommonMiddleware',
    'django.middleware.csrf.CsrfViewMiddleware',
    'django.contrib.auth.middleware.AuthenticationMiddleware',
    'django.contrib.messages.middleware.MessageMiddleware',
]

TEMPLATES = [
    {
        'BACKEND': 'django.template.backends.django.DjangoTemplates',
        'DIRS': [],
        'APP_DIRS': True,
        'OPTIONS': {
            'context_processors': [
                'django.template.context_processors.debug',
                'django.template.context_processors.request',
                'django.contrib.auth.context_processors.auth',
                'django.contrib.messages.context_processors.messages',
            ]
        },
    }
]

DATABASES = {
    'default': {
        'ENGINE': 'django.db.backends.sqlite3',
        'NAME': os.path.join(BASE_DIR, 'djexample.db'),
    }
}

PG_DSN = os.environ.get('HUEY_DJEXAMPLE_PG_DSN')
if PG_DSN:
    from psycopg.conninfo import conninfo_to_dict

    _pg = conninfo_to_dict(PG_DSN)
    DATABASES['default'] = {
        'ENGINE': 'django.db.backends.postgresql',
        'NAME': _pg['dbname'],
        'USER': _pg.get('user', ''),
        'HOST': _pg.get('host', ''),
        'PORT': _pg.get('port', ''),
    }

ROOT_URLCONF = 'djexample.urls'
STATIC_URL = 'static/'

HUEY = {
    'huey_class': os.environ.get('HUEY_DJEXAMPLE_CLASS', 'huey.RedisHuey'),
    'name': os.environ.get('HUEY_DJEXAMPLE_QUEUE', 'djexample'),
    'immediate': False,
    'consumer': {'blocking': True, 'workers': 2, 'scheduler_interval': 1},
}
if PG_DSN:
    HUEY.update(huey_class='huey.PostgresHuey', connection={'dsn': PG_DSN})
else:
    HUEY['connection'] = {
        'host': '127.0.0.1',
        'port': int(os.environ['HUEY_DJEXAMPLE_REDIS_PORT']),
    }

# Flush recorded events often, so the tests see them soon.
HUEY_STATS = {'flush_interval': 0.1}
if PG_DSN:
    # peewee's URL scheme for its psycopg 3 driver.
    HUEY_STATS['database'] = 'psycopg3://' + PG_DSN.split('://', 1)[1]

# Django's tasks run on huey, where a tasks framework exists (Django 6, or the django-tasks
# backport; neither installs on Python 3.9).
if importlib.util.find_spec('django_tasks') or django.VERSION >= (6, 0):
    TASKS = {
        'default': {
            'BACKEND': 'huey.contrib.djhuey.tasks_backend.HueyBackend',
        },
    }

# Test-only: logins in the tests hash passwords, and the default hasher is slow on purpose.
PASSWORD_HASHERS = ['django.contrib.auth.hashers.MD5PasswordHasher']
