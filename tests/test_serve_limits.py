"""The demo's limits without a server: a busy port, the next free one, and the per-request time limit."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from minnow.core.errors import EnvironmentFault
from minnow.core.recipe import Serve
from minnow.export.generate import Partial
from minnow.serve import app


@pytest.fixture
def busy_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_busy_port_is_an_environment_fault(busy_port):
    with pytest.raises(EnvironmentFault, match=f"port {busy_port} on 127.0.0.1 already in use.*--next-free-port"):
        app.free_port("127.0.0.1", busy_port, 1)


def test_next_free_port_skips_a_busy_one(busy_port):
    port = app.free_port("127.0.0.1", busy_port, app.PORT_TRIES)
    assert port > busy_port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_time_limit_skips_the_variants_not_reached(monkeypatch):
    """A clock that advances one second per reading: the first variant answers, the limit passes during it."""
    ticks = iter(range(1000))
    monkeypatch.setattr(app, "time", SimpleNamespace(monotonic=lambda: float(next(ticks))))
    monkeypatch.setattr(app, "stream_text", lambda variant, *args: iter([Partial("an answer", 2, 10.0, 0.5)]))
    variants = [SimpleNamespace(label=name) for name in ("teacher", "student", "onnx fp32")]
    *_, last = app._compare(variants, "a prompt", 1, Serve(time_limit_s=2.5))
    assert last[0] == "an answer"
    for skipped in (last[3], last[6]):
        assert "skipped: the request reached the demo's time limit of 2.5 s" in skipped


def test_time_limit_applies_to_search(monkeypatch):
    ticks = iter(range(1000))
    monkeypatch.setattr(app, "time", SimpleNamespace(monotonic=lambda: float(next(ticks))))
    hits = [SimpleNamespace(id="a", text="a text", score=0.9)]
    monkeypatch.setattr(app, "search", lambda *args: SimpleNamespace(hits=hits, latency_ms=1.0))
    group = SimpleNamespace(corpus="corpus.jsonl", variants=[SimpleNamespace(label=n) for n in ("teacher", "student")])
    *_, last = app._search([group], "a query", 1, Serve(time_limit_s=1.5))
    assert last[0].startswith("1. `0.900` a text") and last[2] == "1.00"
    assert "student skipped: the request reached the demo's time limit of 1.5 s" in last[3]
