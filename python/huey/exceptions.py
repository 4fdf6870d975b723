"""Exceptions raised by huey (same classes, bases and arguments as huey 3.5.4)."""


class HueyException(Exception):
    pass


class ConfigurationError(HueyException):
    pass


class TaskLockedException(HueyException):
    pass


class ResultTimeout(HueyException):
    pass


class TaskTimeout(HueyException):
    pass


class RateLimitExceeded(HueyException):
    """A rate limit was hit; ``delay`` is the wait before the window reopens."""

    def __init__(self, key, delay, retry=True):
        self.key = key
        self.delay = delay
        self.retry = retry
        super().__init__(key, delay, retry)

    def __str__(self):
        if self.retry:
            return f'Rate limit exceeded on "{self.key}", retry in {self.delay:0.1f}s'
        return f'Rate limit exceeded on "{self.key}"'


class CancelExecution(Exception):
    """Raised in a pre-execute hook (or a task) to cancel it; ``retry`` picks what follows."""

    def __init__(self, msg=None, retry=None):
        self.retry = retry
        super().__init__(*(() if msg is None else (msg,)))


class RetryTask(Exception):
    """Raised by a task to be retried, optionally at ``eta`` or after ``delay`` seconds."""

    def __init__(self, msg=None, eta=None, delay=None, *args, **kwargs):
        self.eta = eta
        self.delay = delay
        super().__init__(msg, *args, **kwargs)


class TaskException(Exception):
    """A task failed; ``metadata`` holds the error, traceback and retry information."""

    def __init__(self, metadata=None, *args):
        self.metadata = metadata or {}
        super().__init__(*args)

    def __str__(self):
        return self.metadata.get('error') or 'unknown error'


# Exceptions that mean "a retry is pending", not a failure.
RETRYING_EXCEPTIONS = (RetryTask, RateLimitExceeded, TaskLockedException)
