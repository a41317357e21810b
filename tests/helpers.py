"""Small helpers several test files use (importable because pytest puts tests/ on the path)."""

from encnet_lite import presets


def tiny(out, **overrides) -> presets.TrainConfig:
    """The tiny ContextScenes run: 24 images of 64 px in batches of 4 (6 iterations per
    epoch), 2 epochs, no worker processes, no progress bars: about a second per epoch."""
    base = dict(num_train_images=24, num_val_images=8, image_size=64, batch_size=4, epochs=2,
                workers=0, out=str(out), progress=False)
    return presets.scenes_encnet_tiny(**{**base, **overrides})


def bars(ax):
    """The rectangles of an axes' bar charts, in drawing order."""
    from matplotlib.container import BarContainer

    return [p for c in ax.containers if isinstance(c, BarContainer) for p in c.patches]


def crash_during(cfg, monkeypatch, at: int) -> None:
    """Train ``cfg`` until a simulated crash inside iteration ``at`` (a ``RuntimeError``
    from ``train_step``, as from a GPU fault or a kill), then put ``train_step`` back."""
    import pytest

    from encnet_lite import train as train_mod

    real_step, calls = train_mod.train_step, []

    def crashing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise RuntimeError("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_mod.train(cfg)
    monkeypatch.setattr(train_mod, "train_step", real_step)


def local_server(handler):
    """Serve ``handler`` (an ``http.server.BaseHTTPRequestHandler`` class) on 127.0.0.1 in a
    background thread: a context manager yielding the base URL ``http://127.0.0.1:PORT/``.
    The download tests' only network: nothing leaves the machine."""
    import http.server
    import threading
    from contextlib import contextmanager

    @contextmanager
    def running():
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            server.server_close()

    return running()
