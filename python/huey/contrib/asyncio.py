"""Awaiting task results from asyncio code.

Storages have no awaitable "result ready" notification, so a result is polled: each poll is a
quick storage read, and the wait between polls is an ``asyncio.sleep`` (growing by ``backoff``
from 0.1s up to ``max_delay``), so the event loop keeps running other coroutines meanwhile.
"""

import asyncio
import time

from huey.constants import EmptyData
from huey.exceptions import ResultTimeout

_FIRST_DELAY = 0.1


async def aget_result(res, backoff=1.15, max_delay=1.0, preserve=False, timeout=None):
    """Wait for ``res`` (a ``Result``) without blocking the event loop and return its value.

    A failed task raises ``TaskException``, as ``Result.get`` does; with ``timeout`` (seconds)
    a result that is still missing then raises ``ResultTimeout``. ``preserve=True`` leaves the
    result in the store.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = _FIRST_DELAY
    while res._get(preserve) is EmptyData:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ResultTimeout('timed out waiting for result')
            await asyncio.sleep(min(delay, left))
        else:
            await asyncio.sleep(delay)
        delay = min(delay * backoff, max_delay)
    # The value is cached on the handle now; get() turns a stored Error into TaskException.
    return res.get(preserve=preserve)


async def aget_result_group(rg, *args, **kwargs):
    """Wait for every result of ``rg`` (a ``ResultGroup``) concurrently; values in order.

    Extra arguments go to ``aget_result``. If one wait fails (task error, timeout or
    cancellation), the other waits are cancelled before the exception propagates.
    """
    waits = [asyncio.ensure_future(aget_result(res, *args, **kwargs)) for res in rg]
    try:
        return await asyncio.gather(*waits)
    except BaseException:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        raise
