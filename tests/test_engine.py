"""The decoding engine: equal to transformers' greedy generate, prefix sharing, early exit,
statistics recorded while generating, and resumable identification."""

import pytest
import torch

from pkt import prompts
from pkt.artifacts import ArtifactStore
from pkt.dataset import Bench
from pkt.errors import PktError
from pkt.generation import GenConfig, chat_prompt, decode_batch, generate, prefix_groups
from pkt.hooks import Scope
from pkt.neurons import identify
from pkt.neurons.sites import shape
from pkt.neurons.stats import ActivationStats, collect_stats

PERSONAS = {"high": ["You are bold and curious about every new idea, art and place.",
                     "You are restless, imaginative and love strange books."],
            "low": ["You are careful, you like routine and familiar things.",
                    "You are practical and suspicious of novelty."]}
QS = ["What would you do on a free Sunday?", "A friend suggests a trip to a country you "
      "do not know. What do you say?", "Why?", "How do you pick a restaurant?",
      "What do you think about modern art and the people who make it?"]


def _bench(n=5):
    return Bench(trait="Openness", search=[{"question": q, "_line": i + 1}
                                           for i, q in enumerate((QS * 3)[:n])],
                 test=[], personas=PERSONAS, data_hash="x")


def test_prefix_groups_maximise_shared_tokens():
    a = [1] * 10 + [2, 3]
    b = [1] * 10 + [4, 5, 6]
    c = [7] * 20 + [8, 9]
    d = [7] * 20 + [1, 1]
    g = prefix_groups([a, b, c, d])
    assert g == [(0, 2, 10), (2, 4, 20)]
    # a prefix always leaves two tokens of the shortest row; short shared runs are not used

    assert prefix_groups([[1] * 9, [1] * 9]) == [(0, 1, 0), (1, 2, 0)]
    assert prefix_groups([[1] * 12, [1] * 12]) == [(0, 2, 10)]
    assert prefix_groups([[5, 6, 7]]) == [(0, 1, 0)]


@pytest.mark.parametrize("penalty", [1.0, 1.15])
def test_engine_equals_transformers_generate(tiny, penalty):
    tok = tiny.tokenizer
    texts = [chat_prompt(tok, prompts.roleplay(PERSONAS["high"][i % 2], q)) for i, q in enumerate(QS)]
    texts += [chat_prompt(tok, prompts.neutral(q)) for q in QS]
    gen = GenConfig(16, 4, penalty)
    ours = generate(tiny.model, tok, texts, gen, progress=False)
    ref = generate(tiny.model, tok, texts, GenConfig(16, 1, penalty), progress=False, engine="hf")
    assert [g.response_ids for g in ours] == [g.response_ids for g in ref]
    assert [g.prompt_ids for g in ours] == [g.prompt_ids for g in ref]


def test_finished_rows_leave_the_batch(tiny):
    """A token the model emits early is made the EOS: rows stop there and the others go on."""
    tok = tiny.tokenizer
    texts = [chat_prompt(tok, prompts.neutral(q)) for q in QS]
    free = generate(tiny.model, tok, texts, GenConfig(16, 5, 1.0), progress=False)
    stop = free[0].response_ids[3]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    outs = decode_batch(tiny.model, rows, GenConfig(16, 5, 1.0), {stop})
    for f, o in zip(free, outs):
        ids = f.response_ids
        want = ids[: ids.index(stop) + 1] if stop in ids else ids
        assert o == want
    assert any(len(o) < 16 for o in outs) and any(len(o) == 16 for o in outs)


def test_statistics_recorded_while_generating_equal_teacher_forced(spread_tiny):
    lm = spread_tiny
    bench = _bench()
    gen = GenConfig(10, 2, 1.1)
    st = identify.compute_statistics(lm, bench, 0, gen, progress=False)
    L, N = shape(lm.model)
    for aspect in identify.ASPECTS:
        texts = identify.roleplay_prompts(lm, bench, aspect, 0)
        gens = generate(lm.model, lm.tokenizer, texts, gen, progress=False)
        ref = collect_stats(lm.model, [(g.prompt_ids, g.response_ids) for g in gens], pad_id=0,
                            progress=False, stats=ActivationStats(L, N))
        assert st[f"{aspect}.tokens"] == ref.tokens == sum(len(g.response_ids) for g in gens)
        # the same activations up to float rounding: a value may cross a bin edge, rarely
        assert (st[f"{aspect}.counts"] != ref.counts).sum() <= 2
        assert torch.allclose(st[f"{aspect}.prob"], ref.prob(), atol=1.0 / ref.tokens + 1e-6)


def test_interrupted_identification_resumes_to_the_same_result(spread_tiny, tmp_path, monkeypatch):
    lm = spread_tiny
    bench = _bench(12)
    gen = GenConfig(8, 2, 1.1)
    whole = identify.load_or_compute(ArtifactStore(tmp_path / "a"), lm, bench, 0, gen,
                                     progress=False)[0]
    store = ArtifactStore(tmp_path / "b")
    real = identify.generate
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # one call per batch, two per chunk: the high aspect's last chunk
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(identify, "generate", flaky)
    with pytest.raises(identify.Interrupted, match=r"kept 8 of 12 persona answers \(high\)"):
        identify.load_or_compute(store, lm, bench, 0, gen, progress=False)
    key = identify.stats_key(lm, bench, 0, gen)
    assert (identify._checkpoint_dir(store, key) / "high.ckpt.safetensors").is_file()
    assert store.load("statistics", key) is None  # no half-made artifact
    calls["n"] = -100
    resumed, path, hit = identify.load_or_compute(store, lm, bench, 0, gen, progress=False)
    assert not hit and calls["n"] == -100 + 8  # the missing high chunk, then three low
    for k, v in whole.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, resumed[k]), k
        else:
            assert v == resumed[k], k
    assert not identify._checkpoint_dir(store, key).exists()


def test_recorded_positions_follow_rows_that_finish_early(spread_tiny):
    """Rows leave the batch at EOS: what is recorded is still exactly their producing positions."""
    from pkt.neurons.stats import recording

    lm = spread_tiny
    tok = lm.tokenizer
    texts = [chat_prompt(tok, prompts.neutral(q)) for q in QS]
    rows = sorted(tok(t, add_special_tokens=False)["input_ids"] for t in texts)
    free = decode_batch(lm.model, rows, GenConfig(12, 5, 1.0), set())
    stop = free[1][4]
    L, N = shape(lm.model)
    live = ActivationStats(L, N)
    scope = Scope.marked()
    with recording(lm.model, live, scope, count_tokens=True):
        outs = decode_batch(lm.model, rows, GenConfig(12, 5, 1.0), {stop}, scope=scope)
    assert any(len(o) < 12 for o in outs)
    ref = collect_stats(lm.model, list(zip(rows, outs)), pad_id=0, progress=False,
                        stats=ActivationStats(L, N))
    assert live.tokens == ref.tokens == sum(len(o) for o in outs)
    assert (live.counts != ref.counts).sum() <= 2


def test_slab_cache_layer_matches_concatenation():
    """The engine's in-place KV layer returns what concatenation would, and drops rows."""
    from pkt.kvcache import SlabLayer

    torch.manual_seed(0)
    steps = [torch.randn(3, 2, n, 4) for n in (5, 1, 1, 1)]
    layer = SlabLayer(None, None, capacity=6)  # one step past the capacity: it grows
    ref = None
    for i, s in enumerate(steps):
        s = s if i < 2 else s[:2]
        k, v = layer.update(s, -s)
        ref = s if ref is None else torch.cat([ref, s], 2)
        assert torch.equal(k, ref) and torch.equal(v, -ref)
        assert layer.get_seq_length() == ref.shape[2]
        if i == 1:
            layer.batch_select_indices(torch.tensor([0, 2]))
            ref = ref[[0, 2]]
            assert torch.equal(layer.keys, ref)


def test_identification_dtype_resolution(tiny):
    from pkt.generation import identification_dtype, native_bf16

    m = tiny.model
    assert identification_dtype(m, "model") == torch.float32
    assert identification_dtype(m, "bfloat16") == torch.bfloat16
    assert identification_dtype(m, "auto") == (torch.bfloat16 if native_bf16() else torch.float32)


def test_identification_in_bfloat16_keeps_the_model(spread_tiny):
    """search_gen.dtype=bfloat16: statistics from a half-width copy; the model itself is untouched
    and the cache key says which precision made them."""
    lm = spread_tiny
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    bench = _bench()
    gen = GenConfig(10, 2, 1.1, "bfloat16")
    st = identify.compute_statistics(lm, bench, 0, gen, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())
    assert next(lm.model.parameters()).dtype == torch.float32
    ref = identify.compute_statistics(lm, bench, 0, GenConfig(10, 2, 1.1), progress=False)
    for aspect in identify.ASPECTS:
        assert st[f"{aspect}.tokens"] > 0
        # the same process in another precision: the probabilities stay close
        assert (st[f"{aspect}.prob"] - ref[f"{aspect}.prob"]).abs().mean() < 0.1
    assert identify.stats_key(lm, bench, 0, gen)["dtype"] == "bfloat16"
    assert identify.stats_key(lm, bench, 0, GenConfig(10, 2, 1.1))["dtype"] == "float32"


def test_two_worker_identification_equals_one_process(spread_tiny, tmp_path):
    """search_gen.workers=2 answers the aspects in two forked processes: the same answers
    and statistics as one process (up to a rare bin-edge crossing), and the gen stats of
    both workers are counted."""
    from pkt.generation import GenStats

    lm = spread_tiny
    bench = _bench(9)
    one = identify.load_or_compute(ArtifactStore(tmp_path / "a"), lm, bench, 0,
                                   GenConfig(8, 2, 1.1, workers=1), progress=False)[0]
    gs = GenStats()
    two = identify.load_or_compute(ArtifactStore(tmp_path / "b"), lm, bench, 0,
                                   GenConfig(8, 2, 1.1, workers=2), progress=False,
                                   gen_stats=gs)[0]
    assert [r["response"] for r in two["responses"]] == [r["response"] for r in one["responses"]]
    for aspect in identify.ASPECTS:
        assert two[f"{aspect}.tokens"] == one[f"{aspect}.tokens"] > 0
        assert (two[f"{aspect}.counts"] != one[f"{aspect}.counts"]).sum() <= 2
        assert torch.allclose(two[f"{aspect}.p95"], one[f"{aspect}.p95"], atol=0.011)
    assert gs.tokens == one["high.tokens"] + one["low.tokens"]
    assert not list((tmp_path / "b" / "partial").glob("*"))  # the checkpoint is cleared
    assert identify.resolve_workers("auto", "cuda") == 1 and identify.resolve_workers(5, "cpu") == 2


def test_a_failing_worker_is_one_error(spread_tiny, tmp_path, monkeypatch):
    real = identify.generate

    def broken(model, tok, texts, gen, **k):
        if any("routine" in t or "suspicious" in t for t in texts):  # the low aspect
            raise RuntimeError("boom")
        return real(model, tok, texts, gen, **k)

    monkeypatch.setattr(identify, "generate", broken)
    with pytest.raises(PktError, match=r"^identification failed \(low\): RuntimeError: boom$"):
        identify.load_or_compute(ArtifactStore(tmp_path), spread_tiny, _bench(4), 0,
                                 GenConfig(8, 2, 1.1, workers=2), progress=False)
