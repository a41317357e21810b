"""Sphinx extension: notebook execution never waits forever for a reply already received.

Executing a chapter (myst-nb in ``make book``; ``tests/test_rehearsal.py`` and
``tests/test_colab.py``) goes through nbclient, which waits for each cell's reply with
``await socket.poll(timeout)`` on an asyncio ZeroMQ socket (``jupyter_client``'s
``AsyncZMQSocketChannel.get_msg``). That wake-up is edge-triggered; when it is missed, the
reply sits in the socket while the client waits out the whole cell timeout with the kernel
idle. It happened here a few times under load, with ipykernel 6 and 7 (nbval, whose client
is synchronous, never showed it); nbclient issue #312 and nbconvert issue #2029 report the
same symptom around widget cells.

:func:`install` replaces ``get_msg`` by one that polls in slices of at most half a second
and, after each slice, asks the socket itself (``ZMQ_EVENTS``, level-triggered) whether a
message is waiting: a missed wake-up then costs half a second, not the cell timeout. The
timeout keeps its meaning (``queue.Empty`` when it passes with nothing received).
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any, Dict, Optional

SLICE_S = 0.5


async def get_msg(self, timeout: Optional[float] = None) -> Dict[str, Any]:
    """The next message on this channel; ``queue.Empty`` after ``timeout`` seconds."""
    import zmq

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = SLICE_S if deadline is None else max(0.0, deadline - time.monotonic())
        ready = await self.socket.poll(int(min(SLICE_S, left) * 1000))
        if not ready and self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            ready = True  # in the socket, but the wake-up was missed
        if ready:
            return await self._recv()
        if deadline is not None and time.monotonic() >= deadline:
            raise Empty


def install() -> None:
    """Patch ``jupyter_client``'s asyncio channels in this process (idempotent)."""
    from jupyter_client.channels import AsyncZMQSocketChannel

    AsyncZMQSocketChannel.get_msg = get_msg  # type: ignore[method-assign]


def setup(app) -> dict:
    install()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
