"""SqliteStorage as it runs on a sqlite library older than 3.35 (Debian bullseye's 3.34 under
Python 3.9): ``has_returning`` is False, and its connections refuse ``RETURNING`` with the
syntax error that library gives, so a statement that still uses it fails the test."""

import sqlite3

from huey.storage import SqliteStorage


class _RefusesReturning(sqlite3.Connection):
    def execute(self, sql, *args):
        if ' returning ' in f' {sql.lower()} ':
            raise sqlite3.OperationalError('near "returning": syntax error')
        return super().execute(sql, *args)


class SqliteBefore335(SqliteStorage):
    has_returning = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, factory=_RefusesReturning, **kwargs)
