"""_ext/kernel_replies.py: a reply already in the socket is read even if the wake-up is lost."""

import asyncio
import sys
import time
from pathlib import Path
from queue import Empty

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "_ext"))
import kernel_replies  # noqa: E402

zmq = pytest.importorskip("zmq")


class Channel:
    """A channel whose socket never wakes its poller (the lost edge-triggered event) but
    holds ``waiting`` messages, as ``ZMQ_EVENTS`` reports them."""

    get_msg = kernel_replies.get_msg

    def __init__(self, waiting):
        self.waiting, self.polls, self.started = list(waiting), [], []
        self.socket = self

    async def poll(self, timeout_ms):
        self.polls.append(timeout_ms)
        self.started.append(time.monotonic())
        await asyncio.sleep(timeout_ms / 1000)
        return 0  # the lost wake-up

    def getsockopt(self, option):
        assert option == zmq.EVENTS
        return zmq.POLLIN if self.waiting else 0

    async def _recv(self):
        return self.waiting.pop(0)


def test_a_message_whose_wake_up_was_lost_is_read_within_one_slice():
    channel = Channel([{"msg_type": "execute_reply"}])
    start = time.monotonic()
    msg = asyncio.run(channel.get_msg(timeout=600))
    assert msg == {"msg_type": "execute_reply"}
    assert time.monotonic() - start < 2 * kernel_replies.SLICE_S  # not the 600 s timeout
    assert channel.polls == [int(kernel_replies.SLICE_S * 1000)]


def test_the_timeout_still_means_nothing_arrived():
    channel = Channel([])
    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(channel.get_msg(timeout=1.2))
    elapsed_ms = 1000 * (time.monotonic() - start)
    assert 1200 <= elapsed_ms < 2500
    # The slices cover the timeout: the last one is what was left of it when it began, so
    # the slices miss what the time before the last slice exceeded the earlier slices by
    # (oversleeping, the loop; more on a loaded machine), plus < 1 ms each from int().
    missing = 1200 - sum(channel.polls)
    before_last = 1000 * (channel.started[-1] - start) - sum(channel.polls[:-1])
    assert 0 <= missing <= before_last + len(channel.polls), (channel.polls, before_last)
    assert max(channel.polls) <= 500
    with pytest.raises(Empty):
        asyncio.run(channel.get_msg(timeout=0))  # a non-blocking check stays one


def test_installed_it_executes_a_notebook_with_a_widget_cell(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.channels import AsyncZMQSocketChannel

    kernel_replies.install()
    assert AsyncZMQSocketChannel.get_msg is kernel_replies.get_msg
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import ipywidgets as w\nw.interact(lambda x: print(2 * x), x=3);"),
        nbformat.v4.new_code_cell("print('after the widget')"),
    ])
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    widget, after = nb.cells[0].outputs, nb.cells[1].outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in widget)
    assert [o.get("text") for o in after] == ["after the widget\n"]
