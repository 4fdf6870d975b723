"""Task registry and the wire format of a task (``Message``).

``Message`` keeps huey 3.5.4's name, module, fields and field order: messages are pickled
namedtuples, so either package can read what the other wrote.
"""

from collections import namedtuple

from huey.exceptions import HueyException
from huey.utils import ChordConfig

Message = namedtuple(
    'Message',
    (
        'id',
        'name',
        'eta',
        'retries',
        'retry_delay',
        'priority',
        'args',
        'kwargs',
        'on_complete',
        'on_error',
        'expires',
        'expires_resolved',
        'timeout',
        'chord_config',
        'retry_backoff',
    ),
)
# Fields missing from messages written by older versions read as None.
Message.__new__.__defaults__ = (None,) * len(Message._fields)


class Registry:
    """Maps task names (``module.name``) to task classes and converts tasks to messages."""

    def __init__(self):
        self._registry = {}
        self._periodic_tasks = []
        self._names = {}  # task class -> registered name, for the per-message lookup

    def task_to_string(self, task_class):
        return f'{task_class.__module__}.{task_class.__name__}'

    def register(self, task_class):
        name = self.task_to_string(task_class)
        if name in self._registry:
            raise ValueError(
                f'Attempting to register a task with the same identifier as '
                f'existing task. Specify a different name= to register this '
                f'task. "{name}"'
            )
        self._registry[name] = task_class
        self._names[task_class] = name
        if hasattr(task_class, 'validate_datetime'):
            self._periodic_tasks.append(task_class)
        return True

    def unregister(self, task_class):
        name = self.task_to_string(task_class)
        if self._registry.pop(name, None) is None:
            return False
        self._names.pop(task_class, None)
        self._periodic_tasks = [t for t in self._periodic_tasks if t is not task_class]
        return True

    def string_to_task(self, name):
        try:
            return self._registry[name]
        except KeyError:
            raise HueyException(f'{name} not found in TaskRegistry') from None

    def create_message(self, task):
        name = self._names.get(type(task))
        if name is None:
            raise HueyException(f'{self.task_to_string(type(task))} not found in TaskRegistry')
        kwargs = task.kwargs
        if kwargs and kwargs.get('task') is task:
            kwargs.pop('task')  # an injected context-task instance is never serialized
        on_complete = task.on_complete
        on_error = task.on_error
        chord_config = task.chord_config
        if chord_config is not None:
            chord_config = (
                chord_config.cid,
                chord_config.size,
                chord_config.idx,
                self.create_message(chord_config.callback),
            )
        return Message(
            task.id,
            name,
            task.eta,
            task.retries,
            task.retry_delay,
            task.priority,
            task.args,
            kwargs,
            None if on_complete is None else self.create_message(on_complete),
            None if on_error is None else self.create_message(on_error),
            task.expires,
            task.expires_resolved,
            task.timeout,
            chord_config,
            task.retry_backoff,
        )

    def create_task(self, message):
        task_class = self.string_to_task(message.name)
        on_complete = message.on_complete
        on_error = message.on_error
        chord_config = message.chord_config
        if chord_config is not None:
            cid, size, idx, callback = chord_config
            chord_config = ChordConfig(cid, size, idx, self.create_task(callback))
        return task_class(
            message.args,
            message.kwargs,
            message.id,
            message.eta,
            message.retries,
            message.retry_delay,
            message.priority,
            message.expires,
            None if on_complete is None else self.create_task(on_complete),
            None if on_error is None else self.create_task(on_error),
            message.expires_resolved,
            message.timeout,
            chord_config,
            message.retry_backoff,
        )

    @property
    def periodic_tasks(self):
        return [task_class() for task_class in self._periodic_tasks]
