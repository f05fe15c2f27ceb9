"""Loading a model by hub id without the hub: one clear line naming ``model.path`` within
seconds (offline mode, an unreachable or a silent endpoint), instead of ~50 s of retried
requests; a model already in the Hugging Face cache still loads."""

from __future__ import annotations

import socket
import time

import pytest

# imported here, not first inside a test that switches the hub off: huggingface_hub reads
# HF_HUB_OFFLINE once, at import
from huggingface_hub import constants
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401 (not timed below)

from pkt.errors import PktError
from pkt.models import HFModel, TinyRandomModel

BOUND_S = 5.0  # a failure; the retries this replaces took ~50 s (~25 s for a cached model)
CACHED_BOUND_S = 15.0  # a cached model's load, which includes building it


@pytest.fixture()
def online_env(monkeypatch):
    """No offline switch in the environment (the tests set their own)."""
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return monkeypatch


def _fails_fast(path: str = "some-org/not-on-disk") -> str:
    t0 = time.perf_counter()
    with pytest.raises(PktError) as e:
        HFModel(name="offline_test", path=path, dtype="float32", device="cpu").load()
    took = time.perf_counter() - t0
    msg = str(e.value)
    assert took < BOUND_S, f"took {took:.1f}s"
    assert "\n" not in msg and "set model.path to a local checkpoint folder" in msg
    assert f"'{path}' is neither a local folder nor in the Hugging Face cache" in msg
    return msg


def test_offline_mode_fails_fast_naming_model_path(online_env):
    online_env.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE is set" in _fails_fast()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_hub_fails_fast(online_env):
    online_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    msg = _fails_fast()
    assert "the hub (http://127.0.0.1:" in msg and "cannot be reached" in msg


def test_a_silent_hub_is_given_up_after_the_probe_timeout(online_env):
    """An endpoint that accepts connections and never answers (a black-holed proxy)."""
    import pkt.models

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    try:
        online_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.getsockname()[1]}")
        online_env.setattr(pkt.models, "HUB_PROBE_S", 1.0)
        t0 = time.perf_counter()
        assert "cannot be reached" in _fails_fast()
        assert time.perf_counter() - t0 >= 1.0  # it did wait for an answer
    finally:
        srv.close()


def test_a_cached_hub_model_still_loads_without_the_hub(online_env, tmp_path):
    """A hub id that is in the Hugging Face cache loads from it, also with the hub out of
    reach (transformers is asked for cached files only, without requests; its look-up of a
    PEFT adapter config needs that said separately, or it retries for ~25 s)."""
    model, tok = TinyRandomModel().build()
    snap = tmp_path / "hub" / "models--pkt-test--tiny" / "snapshots" / ("0" * 40)
    model.save_pretrained(snap)
    tok.save_pretrained(snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    online_env.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    online_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.perf_counter()
    lm = HFModel(name="cached", path="pkt-test/tiny", dtype="float32", device="cpu").load()
    assert time.perf_counter() - t0 < CACHED_BOUND_S
    assert lm.fingerprint == TinyRandomModel().load().fingerprint
