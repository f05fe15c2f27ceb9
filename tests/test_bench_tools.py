"""The benchmark's measuring instruments do what their figures claim (timings themselves are
not tested)."""

import importlib.util

import torch

from pkt.neurons.induce import Induction
from pkt.neurons.sites import neuron_sites, shape
from pkt.neurons.stats import padded_batch
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("run_bench", ROOT / "experiments/bench/run_bench.py")
run_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_bench)


def test_alternating_steps_hook_every_other_decode_step(tiny):
    L, N = shape(tiny.model)
    ind = Induction(tiny.model, run_bench.random_set(L, N, 40, 0), run_bench.random_set(L, N, 40, 1),
                    keep_prob=0.9)
    ids = torch.tensor([[1, 40, 41, 42], [1, 50, 51, 52]])
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    plain, hooked = run_bench.alternating_steps(tiny.model, enc, 0, ind, new_tokens=9, rounds=2)
    # 9 new tokens = prefill + 8 decode steps per call; each call times 8 steps, 4 of each kind
    assert len(plain) == len(hooked) == 8
    hooked_layers = sum(ind.has_add[i] or ind.has_opp[i] for i in range(L))
    assert ind.forwards == len(hooked) * hooked_layers  # the edit ran on hooked steps only
    assert all(len(s._forward_hooks) == 0 for s in neuron_sites(tiny.model))


def test_alternating_batches_and_pairs(tiny):
    seqs = [([1, 40, 41], [50, 51, 52, 2]), ([1, 60], [70, 71, 2])]
    batches = [padded_batch(seqs, 0, "cpu")]
    plain, rec = run_bench.alternating_batches(tiny.model, batches, rounds=3)
    assert len(plain) == len(rec) == 3 and min(plain + rec) > 0
    assert all(len(s._forward_hooks) == 0 for s in neuron_sites(tiny.model))
    calls = []
    r = run_bench.paired(lambda: calls.append("a") or 2.0, lambda: calls.append("b") or 1.0, 4)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # the order alternates
    assert r["ratio"] == 2.0 and r["ratio_min"] == r["ratio_max"] == 2.0

