"""The chat page in a real headless Chromium (DevTools protocol over a websocket): load it,
move a slider with the mouse, send a message, wait for both streamed answers (induced and
without induction), save a screenshot. Tiny random model."""

from __future__ import annotations

import pytest
import torch

from pkt.models import TinyRandomModel
from pkt.serve import Settings
from pkt.serve.browser import Chromium, find_chromium
from tests.test_serve import TINY, Running

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="chromium is not installed (make browser installs it)")
pytest.importorskip("websocket", reason="websocket-client is not installed (pip install -e '.[dev]')")


def test_chat_page_slider_message_answer_screenshot(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lm = TinyRandomModel().load()
        with Running(lm, Settings(cache_dir=str(tmp_path / "cache"), **TINY)) as s, \
                Chromium() as b:
            b.open(s.url + "/")
            b.wait("document.body && document.body.dataset.ready === '1'")
            assert b.eval("document.querySelectorAll('input[type=range]').length") == 5
            assert b.eval("document.getElementById('meta').textContent").startswith("tiny_random")
            b.click("#slider-extraversion", fx=0.85)  # a real mouse click on the track
            value = float(b.eval("document.getElementById('slider-extraversion').value"))
            assert 0.5 < value <= 2.0
            assert "extraversion:high" in b.eval("document.getElementById('spec').textContent")
            assert b.eval("document.getElementById('compare').checked") is True
            b.eval("document.getElementById('max_tokens').value = 24")
            b.type("#input", "What do you do on a free evening?")
            b.click("#send")
            b.wait("document.querySelectorAll('.answer[data-done]').length === 2", timeout=60)
            answers = b.eval("[...document.querySelectorAll('.answer')].map(a => "
                             "[a.className, a.querySelector('.who').textContent, "
                             "a.querySelector('.text').textContent, "
                             "a.querySelector('.note').textContent])")
            (c1, who1, t1, n1), (c2, who2, t2, n2) = answers
            assert "induced" in c1 and "error" not in c1 and who1.startswith("extraversion:high")
            assert "base" in c2 and "error" not in c2 and who2 == "without induction"
            assert t1 and t2 and t1 != t2
            assert "identified extraversion" in n1 and "24 tokens" in n1
            h = s.healthy()
            assert h["completed"] == 2 and h["identified"] == [{"trait": "extraversion",
                                                                "method": "neuron"}]
            png = b.screenshot(tmp_path / "chat.png")
            data = png.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    finally:
        torch.set_num_threads(n)
