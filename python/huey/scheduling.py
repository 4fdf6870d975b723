"""Scheduled tasks: putting a task on the storage's schedule, and moving the due ones to the
queue (what the consumer's scheduler does on every pass)."""

import datetime
import logging

from huey import signals as S
from huey.reliable import crashpoint

logger = logging.getLogger('huey')


def add(huey, task):
    """``Huey.add_schedule``: the task runs at its eta (at once when it has none)."""
    data = huey.serialize_task(task)
    eta = task.eta or datetime.datetime.fromtimestamp(0)
    huey.storage.add_to_schedule(data, eta)
    logger.info('Added task %s to schedule, eta %s', task.id, eta)
    huey._emit(S.SIGNAL_SCHEDULED, task)


def move_due(huey, timestamp):
    """``Huey.move_due_to_queue``: SIGNAL_ENQUEUED goes out for each task before any worker
    can take it (the storage calls back once per message while it moves them), as huey
    3.5.4's scheduler does. Returns the moved tasks; an undecodable message is moved as it
    is, and set aside by the worker that takes it."""
    decoded = {}

    def on_due(data):
        crashpoint('mid_schedule_move')
        try:
            task = huey.deserialize_task(data)
        except Exception:
            return None
        decoded[bytes(data)] = task
        huey._emit(S.SIGNAL_ENQUEUED, task)
        return task.priority

    moved = huey.storage.move_due_to_queue(timestamp, on_due)
    if moved:
        crashpoint('mid_schedule_move')
    tasks = []
    for data in moved:
        task = decoded.get(bytes(data))
        if task is None:
            try:
                task = huey.deserialize_task(data)
            except Exception:
                continue  # undecodable: the worker that takes it sets it aside
            # A storage that moved it without calling on_due: announced late rather than
            # not at all.
            huey._emit(S.SIGNAL_ENQUEUED, task)
        tasks.append(task)
    return tasks
