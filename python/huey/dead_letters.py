"""The dead-letter queue, as Huey uses it: a message taken off the queue or the schedule that
cannot be decoded is set aside with its original bytes and the reason (the storage's
``put_dead_letter``; see ``BaseStorage``), logged once, and announced with
``SIGNAL_DEAD_LETTER``; the consumer goes on with the next message. An operator lists,
requeues or purges the letters through ``Huey.dead_letters()``, ``requeue_dead_letter(id)``
and ``purge_dead_letters()``.

A letter's ``deliveries`` counts how often that exact message was set aside. Requeueing puts
the original bytes back unchanged, so the count travels beside them in a storage counter
named after the message's digest (``{name}.dead-letter.{sha1}``), which survives a change of
consumer process and is read and deleted when the message is next set aside.
"""

import hashlib
import logging

from huey import signals as S

logger = logging.getLogger('huey')


def _first_bytes(data):
    return bytes(data[:32]) if isinstance(data, (bytes, bytearray, memoryview)) else data


class DeadLetters:
    """Setting undecodable messages aside, and the operator's view of them, for one Huey."""

    def __init__(self, huey):
        self.huey = huey

    def decode_or_set_aside(self, data):
        """The task in ``data`` (a message taken off the queue or schedule), or None when it
        cannot be decoded: then it is kept as a dead letter and ``SIGNAL_DEAD_LETTER`` sent."""
        try:
            return self.huey.deserialize_task(data)
        except Exception as exc:
            reason = f'{type(exc).__name__}: {exc}'
        storage = self.huey.storage
        try:
            letter_id = storage.put_dead_letter(data, reason, self._previous_deliveries(data) + 1)
        except Exception:
            # The message is already off the queue: say so loudly, and keep consuming.
            logger.exception(
                'Unable to deserialize a queued message (%s) and unable to set it aside in '
                '%s; it is lost. First bytes: %r',
                reason,
                type(storage).__name__,
                _first_bytes(data),
            )
            return None
        logger.error(
            'Unable to deserialize a queued message (%s); set aside as dead letter '
            '%s. First bytes: %r',
            reason,
            letter_id,
            _first_bytes(data),
        )
        self.huey._emit(S.SIGNAL_DEAD_LETTER, None, reason, letter_id)
        return None

    def decode_all(self, messages):
        """The tasks in ``messages`` taken off the queue or schedule; undecodable ones set
        aside."""
        tasks = []
        for data in messages:
            task = self.decode_or_set_aside(data)
            if task is not None:
                tasks.append(task)
        return tasks

    def decode_listing(self, messages):
        """The tasks in ``messages`` still in storage (a listing). Undecodable ones are
        skipped and left where they are, for the consumer to set aside when it takes them."""
        tasks = []
        for data in messages:
            try:
                tasks.append(self.huey.deserialize_task(data))
            except Exception as exc:
                logger.debug(
                    'Skipping an undecodable message in a listing (%s: %s)',
                    type(exc).__name__,
                    exc,
                )
        return tasks

    def _counter(self, data):
        digest = hashlib.sha1(data if isinstance(data, bytes) else repr(data).encode())
        return f'{self.huey.name}.dead-letter.{digest.hexdigest()}'

    def _previous_deliveries(self, data):
        """How many times this exact message was set aside before and then requeued (the
        counter is read and deleted)."""
        storage = self.huey.storage
        try:
            key = self._counter(data)
            previous = storage.incr(key, 0)
            storage.delete_counter(key)
            return previous
        except Exception:
            return 0

    def requeue(self, id):
        """Put letter ``id``'s original bytes back on the queue; True when there was one."""
        storage = self.huey.storage
        letter = storage.pop_dead_letter(id)
        if letter is None:
            return False
        data = letter['data']
        try:
            storage.incr(self._counter(data), letter['deliveries'])
            storage.enqueue(data)
        except BaseException:
            # Not lost: back into the dead-letter queue, then the error propagates.
            storage.put_dead_letter(data, letter['reason'], letter['deliveries'])
            raise
        return True

    def purge(self):
        """Delete every dead letter; returns how many there were."""
        storage = self.huey.storage
        count = storage.dead_letter_count()
        storage.flush_dead_letters()
        return count
