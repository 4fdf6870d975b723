"""``huey.contrib.djhuey.stats``: a Huey dashboard in the Django admin.

Add ``'huey.contrib.djhuey.stats'`` to INSTALLED_APPS (after ``'huey.contrib.djhuey'``) and
run ``manage.py migrate``. Every process that loads Django then records the signals of
``huey.contrib.djhuey.HUEY`` (``huey.contrib.stats``), and the admin gets a "Huey" section:
a dashboard (queue counts, throughput, per-task numbers, running tasks, recent events,
revoke/restore and flush buttons) and a searchable event log.

Settings (all optional)::

    HUEY_STATS = {
        'filename': 'huey-stats.db',  # Sqlite file for the events, relative to BASE_DIR
        'database': None,             # or a peewee Database / a database URL instead
        'retention_hours': 48,        # ... and any other HueyStats keyword argument
    }

Viewing needs the "view" permission on the dashboard (staff with it, or superusers);
the buttons need "change".
"""
