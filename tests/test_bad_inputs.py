"""Bad inputs that need a model or a run: one clear error line, nothing corrupted on disk."""

import json

import pytest
import torch

from pkt.errors import PktError
from pkt.neurons.sites import neuron_sites
from tests.conftest import read_jsonl, run_dirs, run_pkt, stderr_lines

TINY = ["model=tiny_random", "gen.max_new_tokens=6", "search_gen.max_new_tokens=8",
        "data.n_search=6", "data.n_test=3", "eval=none", "logger=none", "trait=openness"]


def test_unknown_architecture_names_its_mlp():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    m = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                         intermediate_size=64, vocab_size=100))
    with pytest.raises(PktError, match=r"unsupported architecture: model_type 'gpt_neox' \(MLP class"):
        neuron_sites(m)


def test_gpt2_sites_are_act_of_c_fc():
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100))
    sites = neuron_sites(m)
    assert len(sites) == 2 and sites[0] is m.transformer.h[0].mlp.act
    seen = []
    h = sites[1].register_forward_hook(lambda mod, i, o: seen.append(o))
    x = torch.randn(1, 3, 32)
    with torch.no_grad():
        m.transformer.h[1].mlp(x)
    h.remove()
    mlp = m.transformer.h[1].mlp
    assert torch.allclose(seen[0], mlp.act(mlp.c_fc(x)))


def _neuron_run(tmp_path, cache, *extra):
    r = run_pkt(["method=neuron", *TINY, *extra], tmp_path, cache=cache)
    return r


def test_neuron_artifact_from_another_model_and_truncated(tmp_path):
    cache = tmp_path / "cache"
    r = _neuron_run(tmp_path, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    (d,) = run_dirs(tmp_path)
    key = json.loads((d / "run_info.json").read_text())["artifacts"]["neuron_sets"]
    art = cache / "artifacts" / "neuron_sets" / key
    # the same sets applied to a model with other weights: refused
    r = _neuron_run(tmp_path, cache, "model.init_seed=1", f"method.neurons_from={art}")
    lines = stderr_lines(r)
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "was made for another model" in lines[0]
    # the published-format export in the run dir applies to the right model
    r = _neuron_run(tmp_path, cache, f"method.neurons_from={d / 'neurons'}")
    assert r.returncode == 0, r.stderr[-2000:]
    # a truncated artifact: refused, and left as it is
    f = art / "sets.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    r = _neuron_run(tmp_path, cache, f"method.neurons_from={art}")
    lines = stderr_lines(r)
    assert r.returncode != 0 and len(lines) == 1 and "corrupt artifact" in lines[0], r.stderr
    assert f.stat().st_size == 100


def test_release_indices_out_of_range_via_cli(tmp_path):
    folder = tmp_path / "published"
    folder.mkdir()
    rows = {"0": [[0, 5, 0.3, 0.5, 1.0]], "40": [[40, 7, 0.2, 0.4, 1.0]]}
    (folder / "Openness_dict.json").write_text(json.dumps(rows))
    (folder / "Openness_reversed_dict.json").write_text(json.dumps({"1": [[1, 3, 0.2, 0.4, 1.0]]}))
    r = run_pkt(["method=neuron", *TINY, f"method.neurons_from={folder}"], tmp_path)
    lines = stderr_lines(r)
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "layer index 40 out of range for a model with 2 layers" in lines[0]


def test_interrupted_identification_leaves_nothing_readable(tmp_path):
    """A half-written artifact (what a killed run leaves) is never read; the next run recomputes."""
    cache = tmp_path / "cache"
    stray = cache / "artifacts" / "statistics" / ".tmp-deadbeef-x"
    stray.mkdir(parents=True)
    (stray / "statistics.safetensors").write_bytes(b"half")
    r = _neuron_run(tmp_path, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    (d,) = run_dirs(tmp_path)
    assert json.loads((d / "metrics.json").read_text())["neuron_stats_cached"] is False


def test_same_config_and_seed_repeat_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for t in (a, b):
        t.mkdir()
        r = _neuron_run(t, t / "cache", "data.n_test=4")
        assert r.returncode == 0, r.stderr[-2000:]
    ga = read_jsonl(run_dirs(a)[0] / "generations.jsonl")
    gb = read_jsonl(run_dirs(b)[0] / "generations.jsonl")
    assert [g["response"] for g in ga] == [g["response"] for g in gb]
    info = json.loads((run_dirs(a)[0] / "run_info.json").read_text())
    assert {"data_hash", "model_fingerprint", "artifacts", "seed", "versions", "overrides"} <= set(info)
    assert (run_dirs(a)[0] / ".hydra" / "config.yaml").exists()


def test_judge_endpoint_down_keeps_generations_and_marks_metrics(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    r = run_pkt(["method=base", *[a for a in TINY if a != "eval=none"], "eval/judge=openai",
                 f"eval.judge.base_url=http://127.0.0.1:{port}/v1", "eval.judge.max_retries=1",
                 "eval.capability=false",
                 "eval.judge.preflight=false"], tmp_path)
    # progress bars ran before; the failure itself is one line, the last one
    errors = [x for x in stderr_lines(r) if "error" in x.lower() or "Traceback" in x]
    assert r.returncode != 0 and len(errors) == 1, r.stderr
    assert errors[0] == stderr_lines(r)[-1]
    assert errors[0].startswith("pkt: error: judge endpoint") and "unreachable" in errors[0]
    (d,) = run_dirs(tmp_path)
    gens = read_jsonl(d / "generations.jsonl")
    assert len(gens) == 3 and all(g["response"] is not None for g in gens)
    m = json.loads((d / "metrics.json").read_text())
    assert "unreachable" in m["evaluation_error"] and m["n"] == 3


def test_model_spread_over_devices_is_one_clear_error():
    """NPTI hooks and statistics keep per-layer tensors on one device: a model that
    device_map spread over several is refused with one line, not a device-mismatch trace."""
    from pkt.models import TinyRandomModel
    from pkt.neurons.induce import Induction
    from pkt.neurons.select import NeuronSet
    from pkt.neurons.stats import collect_stats

    lm = TinyRandomModel().load()
    one = NeuronSet(torch.tensor([0]), torch.tensor([1]), torch.tensor([0.2]),
                    torch.tensor([0.5]), torch.tensor([1.0]))
    Induction(lm.model, one, one)  # one device: fine
    lm.model.hf_device_map = {"model.layers.0": 0, "model.layers.1": 1}
    with pytest.raises(PktError, match=r"neuron induction needs the model on one device; .* "
                                       r"over 2 \(0, 1\) by model.device_map"):
        Induction(lm.model, one, one)
    with pytest.raises(PktError, match="neuron statistics needs the model on one device"):
        collect_stats(lm.model, [([1, 2], [3, 4])], pad_id=0, progress=False)
