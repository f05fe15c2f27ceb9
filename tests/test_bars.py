"""Progress bars that move at every decode step (and per scored batch), without changing
any result."""

import io

import torch

from pkt import prompts
from pkt.bars import STEPS, AnswerBar
from pkt.generation import GenConfig, GenStats, chat_prompt, decode_batch, generate

QS = ["What would you do on a free Sunday?", "Why?", "How do you pick a restaurant?",
      "What do you think about modern art and the people who make it?",
      "A friend suggests a trip to a country you do not know. What do you say?"]


class Recorder:
    """A tqdm stand-in that records the updates."""

    def __init__(self, total, initial=0, **kw):
        self.total, self.n, self.updates, self.postfix, self.drawn = total, initial, [], "", 0

    def update(self, n):
        self.updates.append(n)
        self.n += n

    def set_postfix_str(self, s, refresh=True):
        self.postfix = s

    def refresh(self):  # (update() says it did not draw: None)
        self.drawn += 1

    def close(self):
        pass


def _texts(tok):
    return [chat_prompt(tok, prompts.neutral(q)) for q in QS]


def test_decode_batch_reports_every_step_and_decodes_the_same(tiny):
    tok = tiny.tokenizer
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in _texts(tok)]
    gen = GenConfig(12, 5, 1.0)
    plain = decode_batch(tiny.model, rows, gen, {2})
    stop = plain[0][3]  # a token the model emits early, made an EOS: rows stop unevenly
    plain = decode_batch(tiny.model, rows, gen, {stop})
    steps = []
    ticked = decode_batch(tiny.model, rows, gen, {stop}, on_step=lambda n, a: steps.append((n, a)))
    assert ticked == plain
    assert any(len(o) < 12 for o in plain) and any(len(o) == 12 for o in plain)
    # one call per generated token of the longest row; the tokens add up; rows only leave
    assert len(steps) == max(len(o) for o in plain)
    assert sum(n for n, _a in steps) == sum(len(o) for o in plain)
    assert steps[0][0] == len(rows) and steps[-1][1] == 0
    assert all(a <= n for n, a in steps)
    assert all(n == a_prev for (_n0, a_prev), (n, _a) in zip(steps, steps[1:]))


def test_answer_bar_moves_each_step_and_lands_exactly():
    ab = AnswerBar(7, "x", True, max_new_tokens=10, initial=2, factory=Recorder)
    ab.start(3)
    for k in range(10):  # one row stops after 4 tokens, another after 7
        alive = 3 - (k >= 3) - (k >= 6) if k < 9 else 0
        ab.step(3 if k < 4 else (2 if k < 7 else 1), alive)
        # never the batch's end before end(): a caller may save the batch first
        assert ab.bar.n < 5
    assert len(ab.bar.updates) == 10 and all(u > 0 for u in ab.bar.updates)
    assert "2/7 answers" in ab.bar.postfix
    assert ab.tokens == 21  # as the steps counted them
    ab.end(tokens=20)  # the answers' own count (a trailing pad stripped, say)
    assert ab.bar.n == 5  # exactly, not 4.999...
    assert ab.tokens == 20 and "5/7 answers" in ab.bar.postfix
    ab.start(2)  # a batch that never ticks (transformers' engine): jumps at its end
    ab.end(tokens=3)
    assert ab.bar.n == 7 and ab.tokens == 23
    assert ab.bar.drawn == 2  # each batch end is drawn, whatever the interval
    # every move is a whole number of 1/STEPS answer (so the sums are exact)
    assert all((u * STEPS).is_integer() for u in ab.bar.updates)


def test_generate_with_a_bar_is_bit_identical(tiny, monkeypatch):
    """The same generations and statistics with the bar on (drawn into a buffer) or off;
    the bar gets one move per decode step."""
    tok = tiny.tokenizer
    gen = GenConfig(16, 2, 1.15)
    s0, s1 = GenStats(), GenStats()
    off = generate(tiny.model, tok, _texts(tok), gen, progress=False, stats=s0)
    buf, bars = _drawn(monkeypatch)
    steps = []
    on = generate(tiny.model, tok, _texts(tok), gen, progress=True, stats=s1,
                  on_step=lambda n, a: steps.append(n))
    assert [(g.text, g.prompt_ids, g.response_ids) for g in on] == \
        [(g.text, g.prompt_ids, g.response_ids) for g in off]
    assert s1.tokens == s0.tokens == sum(len(g.response_ids) for g in off)
    assert sum(steps) >= s0.tokens  # every generated token was reported by a step
    (bar,) = bars
    assert bar.n == len(QS) and bar.total == len(QS)
    out = buf.getvalue()
    assert "5/5 answers" in out and "tok/s" in out
    # one redraw per step at least (each moves the count), plus the batch ends
    assert out.count("\r") >= len(steps)


def test_identification_bars_tick_in_both_workers(tiny, tmp_path, capfd, monkeypatch):
    """Identification's two forked workers each draw their aspect's bar at every decode
    step (through the shared stderr); the statistics are those of a run without bars."""
    import re

    import pkt.bars
    from pkt.artifacts import ArtifactStore
    from pkt.neurons import identify
    from tests.test_engine import _bench

    monkeypatch.setattr(pkt.bars, "MININTERVAL", 0)
    bench = _bench(6)
    gen = GenConfig(8, 2, 1.1, workers=2)
    off = identify.load_or_compute(ArtifactStore(tmp_path / "a"), tiny, bench, 0, gen,
                                   progress=False)[0]
    capfd.readouterr()
    on = identify.load_or_compute(ArtifactStore(tmp_path / "b"), tiny, bench, 0, gen,
                                  progress=True)[0]
    err = capfd.readouterr().err
    assert on["responses"] == off["responses"]
    for aspect in identify.ASPECTS:
        assert on[f"{aspect}.tokens"] == off[f"{aspect}.tokens"]
        assert torch.equal(on[f"{aspect}.counts"], off[f"{aspect}.counts"])
        draws = re.findall(rf"persona answers \({aspect}\):\s+(\d+)%[^\r\n]*?(\d+)/6 answers",
                           err)
        # more distinct percentages than the 3 batches: it moved within batches
        assert len({p for p, _n in draws}) > 4, err
        assert draws[-1] == ("100", "6"), err


def _drawn(monkeypatch):
    """Bars drawn into a buffer at every move; returns (buffer, the bars made)."""
    import pkt.bars

    buf, bars, real = io.StringIO(), [], pkt.bars.tqdm

    def factory(**kw):
        bars.append(real(file=buf, **kw))
        return bars[-1]

    monkeypatch.setattr(pkt.bars, "tqdm", factory)
    monkeypatch.setattr(pkt.bars, "MININTERVAL", 0)
    return buf, bars


def test_likelihood_batches_count_every_item(tiny):
    from pkt.eval.likelihood import choice_logprobs, continuation_logprobs

    seqs = [([1, 2, 3], [4, 5]), ([1], []), ([7, 8], [9]), ([3, 3, 3, 3], [5, 6, 7])] * 3
    ticks = []
    got = continuation_logprobs(tiny.model, seqs, 0, 5, on_batch=ticks.append)
    assert got == continuation_logprobs(tiny.model, seqs, 0, 5)
    assert ticks == [5, 5, 2]
    items = [([5, 6, 7], [[8], [9, 10]]), ([4], [[8], [9]]), ([5, 6], [[], []]),
             ([3, 4, 5, 6], [[7, 8], [9]])] * 2
    ticks = []
    got = choice_logprobs(tiny.model, items, 0, 3, on_batch=ticks.append)
    assert got == choice_logprobs(tiny.model, items, 0, 3)
    # the short contexts and the empty choices first, then batches of 3 items
    assert ticks == [4, 3, 1]


def test_capability_probe_bar_counts_its_items(tiny, monkeypatch):
    from pkt.eval import capability

    plain = capability.measure(tiny, 12, 4)
    buf, bars = _drawn(monkeypatch)
    shown = capability.measure(tiny, 12, 4, progress=True, desc="NPTI strength=auto: 1.5 (MC)")
    assert shown == plain
    (bar,) = bars
    assert bar.n == bar.total == 12 + len(capability.paragraphs())
    out = buf.getvalue()
    assert "NPTI strength=auto: 1.5 (MC)" in out and out.count("\r") >= 4
    assert capability.measure(tiny, 12, 4, mc=False, progress=True)["ppl"] == plain["ppl"]
    assert bars[-1].n == bars[-1].total == len(capability.paragraphs())


def test_strength_auto_draws_a_bar_per_probe_naming_its_strength(tiny, tmp_path, monkeypatch):
    from tests.test_selection import _auto_method

    ref = _auto_method(tiny, tmp_path / "a", max_ppl_ratio=1e9, min_mc_ratio=0.9)
    want = ref._auto_strength("high")
    buf, bars = _drawn(monkeypatch)
    m = _auto_method(tiny, tmp_path / "b", max_ppl_ratio=1e9, min_mc_ratio=0.9)
    m.ctx.progress = True
    assert m._auto_strength("high") == want
    out = buf.getvalue()
    trials = want[1]
    # the plain model, one perplexity bar per strength of the scan (in order), then one MC
    # bar per strength the bisection probed
    descs = [b.desc for b in bars]
    n = 1 + len(trials)
    assert descs[:n] == ["capability (plain model)"] + \
        [f"NPTI strength=auto: {t['strength']:g} (perplexity)" for t in trials]
    assert sorted(descs[n:]) == sorted(f"NPTI strength=auto: {t['strength']:g} (MC)"
                                       for t in trials if t["mc_ratio"] is not None)
    assert len(descs) > n and all(b.n == b.total for b in bars)
    assert "NPTI strength=auto: 64 (perplexity)" in out
