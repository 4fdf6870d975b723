"""``python manage.py create_huey_tables``: create the SQL storage's tables up front."""

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create the tables used by huey's SQL storage backends"

    def handle(self, *args, **options):
        from huey.contrib.djhuey import HUEY

        initialize_schema = getattr(HUEY.storage, 'initialize_schema', None)
        if initialize_schema is None:
            raise CommandError(f'{type(HUEY.storage).__name__} storage does not use SQL tables.')
        initialize_schema()
        self.stdout.write('huey tables created.')
