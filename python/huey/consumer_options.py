"""Consumer configuration: defaults, command-line options and logging setup."""

import logging
import optparse
from collections import namedtuple

from huey.constants import WORKER_THREAD, WORKER_TYPES

config_defaults = (
    ('workers', 1),
    ('worker_type', WORKER_THREAD),
    ('initial_delay', 0.1),
    ('backoff', 1.15),
    ('max_delay', 10.0),
    ('check_worker_health', True),
    ('health_check_interval', 10),
    ('scheduler_interval', 1),
    ('periodic', True),
    ('logfile', None),
    ('verbose', None),
    ('simple_log', None),
    ('flush_locks', False),
    ('extra_locks', None),
    ('max_tasks', None),
    ('shutdown_timeout', None),
    ('graceful_signal', 'INT'),
    ('metrics', None),
    ('prefetch', None),
)
config_keys = [name for name, _ in config_defaults]


def option(name, **options):
    """(short flag, long flag, optparse keyword arguments) for one option. ``name`` is a
    dest such as ``'max_delay'`` (-m/--max-delay) or a ``(letter, long name)`` pair."""
    if isinstance(name, tuple):
        letter, long_name = name
    else:
        long_name = name.replace('_', '-')
        letter = name[0]
        options.setdefault('dest', name)
    return (f'-{letter}', f'--{long_name}', options)


class OptionParserHandler:
    """Builds the ``huey_consumer`` option parser (also used by the Django command)."""

    def get_worker_options(self):
        return (
            option('workers', type='int', help='number of worker threads/processes (default=1)'),
            option(
                ('k', 'worker-type'),
                choices=WORKER_TYPES,
                dest='worker_type',
                help='worker execution model (thread, greenlet, process). Use process '
                'for CPU-intensive workloads, and greenlet for IO-heavy workloads. '
                'When in doubt, thread is the safest choice.',
            ),
            option(
                'delay',
                dest='initial_delay',
                metavar='SECONDS',
                type='float',
                help='minimum time to wait when polling queue (default=.1)',
            ),
            option(
                'max_delay',
                metavar='SECONDS',
                type='float',
                help='maximum time to wait when polling queue (default=10)',
            ),
            option(
                'backoff',
                metavar='FACTOR',
                type='float',
                help='factor used to back-off polling interval when queue is empty '
                '(default=1.15, must be >= 1)',
            ),
            option(
                ('c', 'health-check-interval'),
                type='float',
                dest='health_check_interval',
                metavar='SECONDS',
                help='minimum time to wait between worker health checks (default=10)',
            ),
            option(
                ('C', 'disable-health-check'),
                action='store_false',
                dest='check_worker_health',
                help='disable health check that monitors worker health, restarting any '
                'worker that crashes unexpectedly.',
            ),
            option(
                'flush_locks',
                action='store_true',
                dest='flush_locks',
                help='flush all locks when starting consumer.',
            ),
            option(
                ('L', 'extra-locks'),
                dest='extra_locks',
                help='additional locks to flush, separated by comma.',
            ),
            option(
                ('M', 'max-tasks'),
                dest='max_tasks',
                metavar='COUNT',
                type='int',
                help='restart worker after it has executed COUNT tasks',
            ),
            option(
                ('t', 'shutdown-timeout'),
                dest='shutdown_timeout',
                metavar='SECONDS',
                type='float',
                help='seconds to wait for workers to finish on graceful shutdown before '
                'interrupting them (default=wait forever)',
            ),
            option(
                ('g', 'graceful-signal'),
                dest='graceful_signal',
                choices=('INT', 'TERM'),
                help='signal that triggers graceful shutdown, INT or TERM (default=INT). '
                'The other signal interrupts running tasks.',
            ),
            option(
                ('p', 'prefetch'),
                dest='prefetch',
                metavar='COUNT',
                type='int',
                help='messages one fetch may take from the queue; workers of a process '
                'share those beyond the first (default=$HUEY_PREFETCH if set, else '
                'workers + 1, 1 for process workers; 1 is one message at a time, as huey '
                '3.5.4 takes them)',
            ),
            option(
                ('P', 'metrics'),
                dest='metrics',
                metavar='HOST:PORT',
                help='serve OpenMetrics (Prometheus) on HOST:PORT, e.g. 127.0.0.1:9100 '
                '(needs prometheus_client: pip install huey-rs[metrics])',
            ),
        )

    def get_scheduler_options(self):
        return (
            option('scheduler_interval', type='int', help='Granularity of scheduler in seconds.'),
            option(
                'no_periodic',
                action='store_false',
                dest='periodic',
                help='do NOT enqueue periodic tasks',
            ),
        )

    def get_logging_options(self):
        return (
            option('logfile', metavar='FILE'),
            option(
                'verbose', action='store_true', help='verbose logging (includes DEBUG statements)'
            ),
            option('quiet', action='store_false', dest='verbose', help='minimal logging'),
            option(
                ('S', 'simple'),
                action='store_true',
                dest='simple_log',
                help='simple logging format (time message)',
            ),
        )

    def get_option_parser(self):
        parser = optparse.OptionParser('Usage: %prog [options] path.to.huey_instance')
        groups = (
            ('Logging', 'The following options pertain to logging.', self.get_logging_options()),
            (
                'Workers',
                'By default huey uses a single worker thread. To specify a different '
                'number of workers, or a different execution model (such as multiple processes '
                'or greenlets), use the options below.',
                self.get_worker_options(),
            ),
            (
                'Scheduler',
                'By default Huey will run the scheduler once every second to check '
                'for tasks scheduled in the future, or tasks set to run at specific intervals '
                '(periodic tasks). Use the options below to configure the scheduler or to '
                'disable periodic task scheduling.',
                self.get_scheduler_options(),
            ),
        )
        for title, description, options in groups:
            group = parser.add_option_group(title, description)
            for short, long, kwargs in options:
                group.add_option(short, long, **kwargs)
        return parser


class ConsumerConfig(namedtuple('_ConsumerConfig', config_keys)):
    """Consumer settings with huey's defaults for anything not given."""

    def __new__(cls, **kwargs):
        # Unknown keys are ignored, as huey does (Django settings often carry extras).
        config = dict(config_defaults)
        config.update(kwargs)
        return super().__new__(cls, *(config[key] for key in config_keys))

    def validate(self):
        if self.backoff < 1:
            raise ValueError('The backoff must be at least 1.')
        if not (0 < self.scheduler_interval <= 60):
            raise ValueError(
                'The scheduler must run at least once per minute, and at most '
                'once per second (1-60).'
            )
        if 60 % self.scheduler_interval != 0:
            raise ValueError(
                'The scheduler interval must be a factor of 60: 1, 2, 3, 4, 5, '
                '6, 10, 12, 15, 20, 30, or 60'
            )
        if self.graceful_signal not in ('INT', 'TERM'):
            raise ValueError('The graceful signal must be INT or TERM.')
        if self.workers < 1:
            raise ValueError(f'The number of workers must be at least 1, got {self.workers}.')
        if self.worker_type not in WORKER_TYPES:
            raise ValueError(f'The worker type must be one of {", ".join(WORKER_TYPES)}.')
        if self.metrics is not None:
            from huey.metrics import parse_bind

            parse_bind(self.metrics, '--metrics')

    @property
    def loglevel(self):
        if self.verbose is None:
            return logging.INFO
        return logging.DEBUG if self.verbose else logging.WARNING

    def setup_logger(self, logger=None):
        worker = '%(process)d' if self.worker_type == 'process' else '%(threadName)s'
        if self.simple_log:
            datefmt, logformat = '%H:%M:%S', '%(asctime)s %(message)s'
        else:
            datefmt = None
            logformat = f'[%(asctime)s] %(levelname)s:%(name)s:{worker}:%(message)s'
        if logger is None:
            logger = logging.getLogger()
        handler = logging.FileHandler(self.logfile) if self.logfile else logging.StreamHandler()
        handler.setFormatter(logging.Formatter(logformat, datefmt))
        logger.addHandler(handler)
        logger.setLevel(self.loglevel)

    @property
    def values(self):
        """The keyword arguments for ``Consumer``."""
        return {
            key: getattr(self, key)
            for key in config_keys
            if key not in ('logfile', 'verbose', 'simple_log')
        }
