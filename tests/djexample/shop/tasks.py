"""The example's tasks: huey tasks for the consumer, and Django tasks run through HueyBackend.

The consumer imports this module by auto-discovery.
"""

import os

from huey import crontab
from huey.contrib.djhuey import db_task, periodic_task, task

try:
    from django.tasks import task as django_task
except ImportError:
    try:
        from django_tasks import task as django_task
    except ImportError:  # Python 3.9: neither Django 6 nor the django-tasks backport installs
        django_task = None


@task()
def add(a, b):
    return a + b


@task(retries=1, retry_delay=0, context=True)
def flaky(task=None):
    """Fails on its first attempt and succeeds on the retry."""
    if task.retries > 0:
        raise RuntimeError('flaky failed on purpose')
    return 'recovered'


@db_task()
def count_users():
    from django.contrib.auth.models import User

    return User.objects.count()


@periodic_task(crontab(minute='0', hour='3'))
def nightly():
    return 'done'


if django_task is not None:  # Django tasks, run through HueyBackend

    @django_task
    def multiply(a, b):
        return {'product': a * b, 'pid': os.getpid()}

    @django_task(takes_context=True)
    def attempt_number(context, label):
        return [label, context.attempt]

    @django_task
    def explode():
        raise ValueError('exploded on purpose')
