"""``python manage.py run_huey``: the consumer for ``huey.contrib.djhuey.HUEY``.

Takes the ``huey_consumer`` options, except that verbose logging is ``-V/--huey-verbose``
(Django owns ``-v``). Defaults come from ``settings.HUEY['consumer']`` when HUEY is a dict;
command-line options override them.
"""

import logging
from importlib import import_module

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils.module_loading import autodiscover_modules

from huey.consumer_options import ConsumerConfig, OptionParserHandler, config_keys

TASKS_BACKEND = 'huey.contrib.djhuey.tasks_backend'

# optparse names types by string; argparse wants the callable.
_TYPES = {'int': int, 'float': float, 'string': str}


def _uses_tasks_backend():
    """Whether settings.TASKS sends Django tasks to HueyBackend."""
    backends = getattr(settings, 'TASKS', None) or {}
    return any(
        str(config.get('BACKEND', '')).startswith(TASKS_BACKEND + '.')
        for config in backends.values()
        if isinstance(config, dict)
    )


class Command(BaseCommand):
    help = 'Run the huey consumer'

    def add_arguments(self, parser):
        handler = OptionParserHandler()
        for options in (
            handler.get_logging_options(),
            handler.get_worker_options(),
            handler.get_scheduler_options(),
        ):
            for short, long, kwargs in options:
                kwargs = dict(kwargs)
                if short == '-v':
                    short, long = '-V', '--huey-verbose'
                if 'type' in kwargs:
                    kwargs['type'] = _TYPES[kwargs['type']]
                # None means "not given", so settings.HUEY['consumer'] is not overridden.
                kwargs.setdefault('default', None)
                parser.add_argument(long, short, **kwargs)
        parser.add_argument(
            '-A',
            '--disable-autoload',
            action='store_true',
            dest='disable_autoload',
            help='do not import the "tasks" module of each installed app',
        )

    def handle(self, *args, **options):
        from huey.contrib.djhuey import HUEY

        consumer_options = {}
        configured = getattr(settings, 'HUEY', None)
        if isinstance(configured, dict):
            consumer_options.update(configured.get('consumer', {}))
        # Django's own options (verbosity, settings, ...) are not consumer options.
        consumer_options.update(
            (key, value)
            for key, value in options.items()
            if value is not None and key in config_keys
        )

        if not options.get('disable_autoload'):
            autodiscover_modules('tasks')
        if _uses_tasks_backend():
            # Registers huey's "djtasks.run" even when no tasks module imported the backend.
            import_module(TASKS_BACKEND)

        config = ConsumerConfig(**consumer_options)
        config.validate()
        huey_logger = logging.getLogger('huey')
        # Respect a "huey" logger configured through Django's LOGGING (no duplicate lines).
        if not huey_logger.handlers:
            config.setup_logger(huey_logger)

        HUEY.create_consumer(**config.values).run()
