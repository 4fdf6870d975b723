"""Worker types and the empty-value sentinel storages return."""

WORKER_THREAD = 'thread'
WORKER_GREENLET = 'greenlet'
WORKER_PROCESS = 'process'
WORKER_TYPES = (WORKER_THREAD, WORKER_GREENLET, WORKER_PROCESS)


class EmptyData:
    """Returned by storages when a key holds no value (distinct from a stored ``None``)."""
