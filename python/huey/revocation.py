"""Revocation flags, kept in the storage's key/value store as huey 3.5.4 keeps them:
``r:{task id}`` revokes one task, ``rt:{task name}`` every task of a class; the value is the
serialized pair ``(revoke_until, revoke_once)``. A flag with ``revoke_until`` stops applying
at that time; a ``revoke_once`` flag is consumed by the first run it stops. A worker reads
both flags of a task with one ``storage.peek_many`` call before running it.
"""

import inspect

from huey.constants import EmptyData
from huey.result import Result
from huey.task import Task, TaskWrapper
from huey.utils import normalize_time


class Revocations:
    """The revocation flags of one Huey."""

    def __init__(self, huey):
        self.huey = huey
        self._class_keys = {}  # task class -> its 'rt:' key
        # Moves on every revoke or restore made in this process: flags read before it moved
        # may be out of date (see huey.execution._finish).
        self.changes = 0

    def class_key(self, task_class):
        """``rt:{name}`` for a task class or the TaskWrapper of one."""
        if isinstance(task_class, TaskWrapper):
            task_class = task_class.task_class
        key = self._class_keys.get(task_class)
        if key is None:
            registry = self.huey._registry
            name = registry._names.get(task_class) or registry.task_to_string(task_class)
            key = self._class_keys[task_class] = f'rt:{name}'
        return key

    def revoke(self, key, revoke_until, revoke_once):
        if revoke_until is not None:
            revoke_until = normalize_time(revoke_until, utc=self.huey.utc)
        self.changes += 1
        self.huey.put(key, (revoke_until, revoke_once))

    def restore(self, key):
        """Delete the flag ``key``; True when there was one."""
        self.changes += 1
        return self.huey.delete(key)

    def keys(self, target):
        """The flags that apply to a task, task class/wrapper, result or task id."""
        if isinstance(target, Task):
            return [target.revoke_id, self.class_key(type(target))]
        if isinstance(target, TaskWrapper) or inspect.isclass(target):
            return [self.class_key(target)]
        if isinstance(target, Result):
            return self.keys(target.task)
        return [Task(id=target).revoke_id]

    def is_revoked(self, target, timestamp=None, peek=True, stored=None):
        """``stored``: the flags already read (a dict as ``storage.peek_many`` returns)."""
        keys = self.keys(target)
        if stored is None:
            stored = self.huey.storage.peek_many(keys)
        if not stored:
            return False
        for key in keys:
            revoked, consumed = self._check(stored.get(key, EmptyData), timestamp, peek)
            if consumed:
                self.huey.delete(key)
            if revoked:
                return True
        return False

    def _check(self, data, timestamp, peek):
        """(revoked?, should the flag be deleted?) for one stored flag."""
        if data is EmptyData:
            return False, False
        revoke_until, revoke_once = self.huey.serializer.deserialize(data)
        if revoke_until is not None and timestamp is None:
            timestamp = self.huey._get_timestamp()
        if revoke_once:
            return True, not peek
        if revoke_until is not None and revoke_until <= timestamp:
            return False, not peek
        return True, False
