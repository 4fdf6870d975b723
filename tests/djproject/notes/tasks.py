"""Tasks the consumer finds by auto-discovery (nothing else imports this module there)."""

import os

from huey import crontab
from huey.contrib.djhuey import db_periodic_task, db_task, on_commit_task

from notes.models import Note


@db_task()
def write_note(text):
    """Write a row from whichever process runs the task; return its id and that pid."""
    note = Note.objects.create(text=text, pid=os.getpid())
    return note.id, note.pid


@on_commit_task()
def write_note_on_commit(text):
    return Note.objects.create(text=text, pid=os.getpid()).id


@db_periodic_task(crontab(minute='0', hour='0', day='1', month='1'))
def yearly_cleanup():
    Note.objects.all().delete()
