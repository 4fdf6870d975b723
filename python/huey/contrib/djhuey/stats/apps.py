import logging
import os

from django.apps import AppConfig
from django.conf import settings

logger = logging.getLogger('huey')


def _settings():
    return dict(getattr(settings, 'HUEY_STATS', None) or {})


def stats_database():
    """Where the events go: HUEY_STATS['database'] (a peewee Database or a database URL),
    else the Sqlite file HUEY_STATS['filename'] (default huey-stats.db in BASE_DIR)."""
    import peewee

    options = _settings()
    database = options.get('database')
    if isinstance(database, peewee.Database):
        return database
    if isinstance(database, str):
        from playhouse.db_url import connect

        return connect(database)
    filename = options.get('filename') or 'huey-stats.db'
    base_dir = getattr(settings, 'BASE_DIR', None)
    if base_dir and not os.path.isabs(filename):
        filename = os.path.join(str(base_dir), filename)
    # Web processes and the consumer write to it at once: WAL, and wait for the lock.
    return peewee.SqliteDatabase(
        filename, timeout=5, pragmas={'journal_mode': 'wal', 'synchronous': 1}
    )


def stats_options():
    """HUEY_STATS less the database keys: HueyStats keyword arguments."""
    options = _settings()
    options.pop('database', None)
    options.pop('filename', None)
    return options


class HueyStatsConfig(AppConfig):
    name = 'huey.contrib.djhuey.stats'
    label = 'hueystats'
    verbose_name = 'Huey'
    default_auto_field = 'django.db.models.AutoField'

    def ready(self):
        from huey.contrib.djhuey import HUEY
        from huey.contrib.stats import enable_stats

        try:
            enable_stats(HUEY, stats_database(), **stats_options())
        except Exception:
            # The site must come up without its dashboard numbers: the page says so.
            logger.exception('huey stats: the recorder did not start.')
