"""Workflows: ``group`` (tasks run in parallel), ``chord`` (a group plus a callback that
receives all of its results, in member order), and their bookkeeping.

A chord is enqueued as its members, the last task of each member's pipeline carrying a
``ChordConfig`` (chord id, size, member index, callback). When a member's pipeline ends (its
last task completed, or any task in it failed for good or was skipped), the value is stored
under ``chord:{cid}:{idx}`` and the counter ``chord:{cid}`` incremented; the member that brings
it to the chord's size collects the values and enqueues the callback.
"""

import copy
import uuid

from huey.result import ChordResult, Result, ResultGroup
from huey.task import signature
from huey.utils import ChordConfig


class group:
    def __init__(self, tasks):
        self.tasks = tasks

    def then(self, task, *args, **kwargs):
        """Turn the group into a chord whose callback is ``task``."""
        return chord(self.tasks, signature(task, args, kwargs))

    def error(self, *args, **kwargs):
        for task in self.tasks:
            task.error(*args, **kwargs)
        return self


class chord:
    def __init__(self, tasks, callback):
        self.tasks = tasks
        self.callback = signature(callback)

    def then(self, task, *args, **kwargs):
        self.callback.then(task, *args, **kwargs)
        return self

    def error(self, task, *args, **kwargs):
        self.callback.error(task, *args, **kwargs)
        return self


def pipeline_results(huey, task):
    """A ``Result`` for ``task`` and for each task chained after it with ``then``."""
    results = []
    while task is not None:
        results.append(Result(huey, task))
        task = task.on_complete
    return results


def enqueue_chord(huey, chord_obj):
    """Enqueue a chord's members (each reporting to the chord); the callback is enqueued
    by the member that completes the chord (at once for an empty chord)."""
    cid = str(uuid.uuid4())
    size = len(chord_obj.tasks)
    results = []
    for idx, member in enumerate(chord_obj.tasks):
        if isinstance(member, group):
            raise ValueError(
                'cannot use `group` as a chord member - use .then() to convert to a `chord` first.'
            )
        config = ChordConfig(cid, size, idx, chord_obj.callback)
        results.append(_enqueue_member(huey, member, config))
    if not size:
        callback = copy.copy(chord_obj.callback)
        callback.extend_data(([],))
        huey.enqueue(callback)
    pipeline = pipeline_results(huey, chord_obj.callback)
    return ChordResult(results, pipeline[0], ResultGroup(pipeline) if len(pipeline) > 1 else None)


def _enqueue_member(huey, member, config):
    head = member.callback if isinstance(member, chord) else member
    tail = head
    while tail.on_complete is not None:
        tail = tail.on_complete
    tail.chord_config = config  # the member reports to the chord when its pipeline ends
    if isinstance(member, chord):
        enqueue_chord(huey, member)
    else:
        huey.enqueue(head)
    return Result(huey, tail)


def report_to_chord(huey, config, value):
    """Record a member's ``value``; the last member to report enqueues the callback with
    every member's value, in member order."""
    counter_key = f'chord:{config.cid}'
    huey.put_result(f'chord:{config.cid}:{config.idx}', value)
    if huey.storage.incr(counter_key) != config.size:
        return
    huey.storage.delete_counter(counter_key)
    results = []
    for idx in range(config.size):
        key = f'chord:{config.cid}:{idx}'
        results.append(huey.get(key, peek=True))  # peek + delete: expiring storages
        huey.delete(key)
    callback = config.callback
    callback.extend_data((results,))
    huey.enqueue(callback)


def abort_chord_member(huey, task, value):
    """The rest of ``task``'s pipeline won't run: report ``value`` to its chord, if any."""
    while task is not None:
        if task.chord_config is not None:
            return report_to_chord(huey, task.chord_config, value)
        task = task.on_complete
    return None
