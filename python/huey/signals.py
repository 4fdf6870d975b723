"""Signal names and the dispatcher that calls connected receivers."""

import logging

logger = logging.getLogger('huey')

SIGNAL_CANCELED = 'canceled'
SIGNAL_COMPLETE = 'complete'
SIGNAL_ERROR = 'error'
SIGNAL_EXECUTING = 'executing'
SIGNAL_EXPIRED = 'expired'
SIGNAL_LOCKED = 'locked'
SIGNAL_RETRYING = 'retrying'
SIGNAL_REVOKED = 'revoked'
SIGNAL_SCHEDULED = 'scheduled'
SIGNAL_INTERRUPTED = 'interrupted'
SIGNAL_ENQUEUED = 'enqueued'
SIGNAL_TIMEOUT = 'timeout'
SIGNAL_RATE_LIMITED = 'rate-limited'
# An undecodable message was set aside: sent with task=None, then the reason and letter id.
SIGNAL_DEAD_LETTER = 'dead-letter'

ALL_SIGNALS = frozenset(
    (
        SIGNAL_CANCELED,
        SIGNAL_COMPLETE,
        SIGNAL_ERROR,
        SIGNAL_EXECUTING,
        SIGNAL_EXPIRED,
        SIGNAL_LOCKED,
        SIGNAL_RETRYING,
        SIGNAL_REVOKED,
        SIGNAL_SCHEDULED,
        SIGNAL_INTERRUPTED,
        SIGNAL_ENQUEUED,
        SIGNAL_TIMEOUT,
        SIGNAL_RATE_LIMITED,
        SIGNAL_DEAD_LETTER,
    )
)


class Signal:
    """Receivers per signal name; ``'any'`` receivers hear every signal."""

    __slots__ = ('receivers', 'active', '_targets', '_any')

    def __init__(self):
        self.receivers = {'any': []}
        self.active = False  # any receiver connected? (lets send() return at once)
        self._targets = {}  # signal -> its receivers then the 'any' ones, as a tuple
        self._any = ()

    def _changed(self):
        self._any = tuple(self.receivers['any'])
        self._targets = {
            name: tuple(group) + self._any
            for name, group in self.receivers.items()
            if name != 'any'
        }
        self.active = self.has_receivers()

    def connect(self, receiver, *signals):
        if not callable(receiver):
            raise TypeError(f'signal receiver must be callable, got {receiver!r}')
        for name in signals or ('any',):
            if name != 'any' and name not in ALL_SIGNALS:
                raise ValueError(
                    f'unknown signal {name!r}; expected one of {", ".join(sorted(ALL_SIGNALS))}'
                )
            self.receivers.setdefault(name, []).append(receiver)
        self._changed()

    def disconnect(self, receiver, *signals):
        for name in signals or list(self.receivers):
            try:
                self.receivers.get(name, []).remove(receiver)
            except ValueError:
                pass
        self._changed()

    def has_receivers(self):
        return any(self.receivers.values())

    def send(self, signal, task, *args, **kwargs):
        targets = self._targets.get(signal, self._any)
        if not targets:
            return
        for receiver in targets:
            try:
                receiver(signal, task, *args, **kwargs)
            except Exception:
                logger.exception(
                    'Error occurred in receiver "%s" for signal "%s"',
                    getattr(receiver, '__name__', repr(receiver)),
                    signal,
                )
