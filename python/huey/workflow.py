"""Workflows: ``group`` (tasks run in parallel) and ``chord`` (a group plus a callback that
receives all of its results, in member order)."""

from huey.task import signature


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
