"""The architecture matrix: every architecture of pkt's hook-site table
(:data:`pkt.neurons.sites.ARCHITECTURES`) as a tiny random model (2 layers, hidden 64, 128
MLP neurons, the byte tokenizer; :func:`pkt.models.tiny_model`), through everything pkt does
with a model:

- NPTI identification (``pkt.identify``, 4 search questions, 8 tokens per answer);
- NPTI induction landing on the selected neurons: at decode steps the activations change at
  the selected (layer, index) pairs only, and the prompt's positions are never touched;
- ActAdd changing the residual stream at decode steps only, by exactly its vector;
- one LoRA training step with target modules that exist in that architecture (names it
  lacks are refused);
- pkt's generation engine equal to transformers' greedy ``generate``, token for token;
- a two-trait NPTI profile (its edits stay inside the union of both traits' sets);
- one request served by ``pkt.serve`` (the same answer as the API's).

Mixture-of-experts models are refused with one line naming the architecture, and the engine
stays exact on sliding-window attention (windows shorter than the sequences).

Each architecture's model, cache and identification are built once (module-scoped
fixtures), on one thread.
"""

from __future__ import annotations

import time

import pytest
import torch

import pkt
from pkt import prompts
from pkt.errors import PktError
from pkt.generation import GenConfig, chat_prompt, generate
from pkt.hooks import hooked, site_modules
from pkt.methods.lora.adapter import DEFAULT_TARGETS
from pkt.models import TINY_ARCHS, TinyRandomModel, _finish, tiny_model
from pkt.neurons.sites import ARCHITECTURES, shape
from pkt.serve import Settings
from tests.test_serve import Running

ARCHS = list(ARCHITECTURES)
Q = "What do you do on a free evening?"
N_SEARCH, SEARCH_TOKENS = 4, 8
SEARCH = {"max_new_tokens": SEARCH_TOKENS, "workers": 1}
# LoRA targets per architecture (the default, Llama-style names, elsewhere)
LORA_TARGETS = {"phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
                "gpt2": ["c_attn", "c_proj", "c_fc"]}


class Arch:
    """One architecture's tiny model, with its identification done (cached on disk)."""

    def __init__(self, arch: str, cache):
        self.arch, self.cache = arch, cache
        self.lm = tiny_model(arch)
        self.sets = pkt.identify(self.lm, "extraversion", n_search=N_SEARCH,
                                 max_new_tokens=SEARCH_TOKENS, cache=cache, progress=False,
                                 workers=1)

    def personality(self, profile: str, method: str, lm=None, **params):
        if method in ("neuron", "lora"):
            params.setdefault("search_gen", SEARCH)
        return pkt.personality(lm or self.lm, profile, method, n_search=N_SEARCH,
                               cache=self.cache, **params)


@pytest.fixture(scope="module", params=ARCHS)
def arch(request, one_thread, tmp_path_factory) -> Arch:
    return Arch(request.param, tmp_path_factory.mktemp(f"cache-{request.param}"))


def _prompt(lm) -> str:
    return chat_prompt(lm.tokenizer, prompts.neutral(Q))


def _record(lm, site: str, apply, layers=None, n_tokens: int = 6) -> list[dict]:
    """Greedy generation of one answer with ``apply()`` open; per forward pass and layer at
    ``site``: the site's output before the intervention's hooks and after them."""
    mods = site_modules(lm.model, site)
    layers = range(len(mods)) if layers is None else layers
    rows: list[dict] = []

    def hidden(out):
        return out[0] if isinstance(out, tuple) else out

    def before(layer):
        def hook(_m, _i, out):
            rows.append({"layer": layer, "before": hidden(out).detach().clone()})
        return hook

    def after(layer):
        def hook(_m, _i, out):
            row = [r for r in rows if r["layer"] == layer][-1]
            row["after"] = hidden(out).detach().clone()
        return hook

    with hooked(lm.model, {(site, i): before(i) for i in layers}):
        with apply():
            with hooked(lm.model, {(site, i): after(i) for i in layers}):
                generate(lm.model, lm.tokenizer, [_prompt(lm)], GenConfig(n_tokens, 1, 1.0),
                         progress=False)
    assert rows and all("after" in r for r in rows)
    return rows


def _selected(lm, *sets) -> torch.Tensor:
    """The (layer, index) pairs of neuron sets, as a bool [layers, width] mask."""
    mask = torch.zeros(*shape(lm.model), dtype=torch.bool)
    for s in sets:
        mask[s.layer, s.index] = True
    return mask


def _lands_on(rows: list[dict], mask: torch.Tensor) -> int:
    """Checks NPTI's edits: none at prefill, at decode steps only at ``mask``'s neurons.
    Returns how many (decode step, neuron) values changed."""
    changed = 0
    for r in rows:
        diff = (r["after"] != r["before"])
        if r["before"].shape[-2] > 1:  # the prompt's prefill
            assert not diff.any(), "an NPTI edit touched a prompt position"
            continue
        hit = diff.reshape(-1, diff.shape[-1]).any(0)
        outside = hit & ~mask[r["layer"]]
        assert not outside.any(), f"edited neurons outside the selected sets: {outside.nonzero()}"
        changed += int(diff.sum())
    return changed


# -- the matrix ------------------------------------------------------------------------------

def test_every_architecture_has_a_tiny_config():
    assert list(TINY_ARCHS) == ARCHS
    for a in ARCHS:
        lm = tiny_model(a)
        assert lm.model.config.model_type == a and shape(lm.model) == (2, 128)


def test_identification(arch):
    L, W = shape(arch.lm.model)
    for aspect in ("high", "low"):
        s = arch.sets[aspect]
        assert len(s) > 0, (arch.arch, aspect)
        assert 0 <= int(s.layer.min()) and int(s.layer.max()) < L
        assert 0 <= int(s.index.min()) and int(s.index.max()) < W
        assert bool((s.diff > 0).all())
    # the method reuses the identification (the same cached statistics)
    p = arch.personality("extraversion:high", "neuron", strength=4.0)
    assert p.identified() == []
    assert p.method_obj.sets["high"].rows() == arch.sets["high"].rows()


def test_npti_edits_only_the_selected_neurons_at_decode_steps(arch):
    p = arch.personality("extraversion:high", "neuron", strength=4.0)
    sets = p.method_obj.sets
    rows = _record(arch.lm, "mlp.act", p.apply)
    assert _lands_on(rows, _selected(arch.lm, sets["high"], sets["low"])) > 0
    assert any(r["before"].shape[-2] > 1 for r in rows)  # a prefill was seen (and left alone)


def test_actadd_changes_the_residual_stream_at_decode_steps_only(arch):
    p = arch.personality("extraversion:high", "actadd")
    adds = p.method_obj.additions()
    assert list(adds) == [1]  # the middle block of two
    rows = _record(arch.lm, "resid.post", p.apply)
    decode = 0
    for r in rows:
        delta = (r["after"].float() - r["before"].float())
        if r["before"].shape[-2] > 1 or r["layer"] not in adds:
            assert not delta.any(), (r["layer"], r["before"].shape)
            continue
        decode += 1
        want = adds[r["layer"]].float().expand_as(delta)
        assert torch.allclose(delta, want, atol=1e-5, rtol=1e-4)
    assert decode > 0 and float(adds[1].norm()) > 0


def test_lora_one_training_step(arch):
    lm = tiny_model(arch.arch)  # LoRA wraps the model in place: a model of its own
    targets = LORA_TARGETS.get(arch.arch, list(DEFAULT_TARGETS))
    p = arch.personality("extraversion:high", "lora", lm=lm, max_steps=1, batch_size=4,
                         target_modules=targets)
    assert p.info["figures"]["lora_steps"] == 1
    peft = p.method_obj.peft
    wrapped = {n.rsplit(".", 1)[-1] for n, m in peft.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(targets), wrapped
    ids = torch.tensor([lm.tokenizer(_prompt(lm), add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        plain = lm.model(input_ids=ids).logits
        with p.apply():
            adapted = lm.model(input_ids=ids).logits
        again = lm.model(input_ids=ids).logits
    assert not torch.equal(plain, adapted) and torch.equal(plain, again)


@pytest.mark.parametrize("model_type", ["phi3", "gpt2"])
def test_lora_refuses_target_names_the_model_lacks(model_type, one_thread, tmp_path):
    """Found by this matrix: peft skips target names that match nothing, so the default
    Llama-style list trained Phi-3's o_proj and down_proj alone (its q/k/v and gate/up
    projections are fused), silently. Now every name must exist, in one line."""
    lm = tiny_model(model_type)
    with pytest.raises(PktError) as e:
        pkt.personality(lm, "extraversion:high", "lora", n_search=2, cache=tmp_path,
                        search_gen=SEARCH, max_steps=1)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("method.target_modules: no module named q_proj")
    assert f"({model_type}; its projections: " in msg
    for name in LORA_TARGETS[model_type]:
        assert name in msg


def test_engine_equals_transformers_generate(arch):
    lm = arch.lm
    qs = [Q, "Why?", "How do you pick a restaurant?", "A friend suggests a trip. What do you say?"]
    texts = [chat_prompt(lm.tokenizer, prompts.roleplay("You are bold and curious.", q))
             for q in qs] + [chat_prompt(lm.tokenizer, prompts.neutral(q)) for q in qs]
    ours = generate(lm.model, lm.tokenizer, texts, GenConfig(10, 8, 1.15), progress=False)
    ref = generate(lm.model, lm.tokenizer, texts, GenConfig(10, 1, 1.15), progress=False,
                   engine="hf")
    assert [g.response_ids for g in ours] == [g.response_ids for g in ref]


def test_two_trait_profile(arch):
    p = arch.personality("extraversion:high+neuroticism:low", "neuron", strength=2.0)
    parts = p.method_obj.parts
    assert [m.ctx.bench.trait for m in parts] == ["Extraversion", "Neuroticism"]
    sets = [s for m in parts for s in (m.sets["high"], m.sets["low"])]
    rows = _record(arch.lm, "mlp.act", p.apply)
    assert _lands_on(rows, _selected(arch.lm, *sets)) > 0
    assert p.answer([Q], max_new_tokens=6)[0] is not None


def test_one_served_request(arch):
    lm = arch.lm
    settings = Settings(n_search=N_SEARCH, search_max_new_tokens=SEARCH_TOKENS,
                        cache_dir=str(arch.cache), max_tokens=8)
    with Running(lm, settings) as srv:
        r = srv.chat(personality="extraversion:high@neuron", max_tokens=8)
        assert r.status_code == 200, r.text
        served = r.json()["choices"][0]["message"]["content"]
    api = arch.personality("extraversion:high", "neuron")  # the model's own strength (1.0)
    assert served == api.answer([Q], max_new_tokens=8, batch_size=1)[0]


# -- what is refused, and what the engine must keep exact ------------------------------------

MOE = {"mixtral": "MixtralConfig", "qwen2_moe": "Qwen2MoeConfig", "qwen3_moe": "Qwen3MoeConfig"}


@pytest.mark.parametrize("model_type", list(MOE))
def test_mixture_of_experts_is_refused_in_one_line(model_type, one_thread, tmp_path):
    import transformers

    from pkt.models import byte_tokenizer

    tok = byte_tokenizer()
    cfg = getattr(transformers, MOE[model_type])(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    for k in ("moe_intermediate_size", "shared_expert_intermediate_size"):
        if hasattr(cfg, k):
            setattr(cfg, k, 32)
    for k in ("num_experts", "num_local_experts"):
        if hasattr(cfg, k):
            setattr(cfg, k, 4)
    lm = _finish(model_type, transformers.AutoModelForCausalLM.from_config(cfg), tok, "cpu")
    t0 = time.perf_counter()
    for method in ("neuron", "actadd"):
        with pytest.raises(PktError) as e:
            pkt.personality(lm, "extraversion:high", method, n_search=2, cache=tmp_path,
                            **({"search_gen": SEARCH} if method == "neuron" else {}))
        msg = str(e.value)
        assert "\n" not in msg
        assert f"model_type '{model_type}' is a mixture of experts" in msg
    assert time.perf_counter() - t0 < 20  # refused before any answer is generated at length


@pytest.mark.parametrize("model_type,extra", [
    ("mistral", {"sliding_window": 8}),
    ("gemma2", {"sliding_window": 8}),
    ("gemma3_text", {"sliding_window": 8}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}),
])
def test_engine_is_exact_with_short_sliding_windows(model_type, extra, one_thread):
    """Sequences longer than the attention window: prompts that share a persona prefix are
    not split into prefix and rest (the padding between them would sit inside the window),
    and the engine equals transformers' ``generate``. Found by this matrix: the prefix's
    sliding cache kept only the window and the engine failed with a shape error."""
    t = TinyRandomModel(arch=model_type)
    t.kw.update(extra)
    model, tok = t.build()
    lm = _finish(model_type, model, tok, "cpu")
    texts = [chat_prompt(tok, prompts.roleplay("You are bold and curious about every new idea.", q))
             for q in (Q, "Why?", "How do you pick a restaurant?")]
    for bs in (1, 3):
        ours = generate(lm.model, tok, texts, GenConfig(12, bs, 1.0), progress=False)
        ref = generate(lm.model, tok, texts, GenConfig(12, 1, 1.0), progress=False, engine="hf")
        assert [g.response_ids for g in ours] == [g.response_ids for g in ref], bs


def test_sliding_window_models_still_share_a_prefix_that_fits(one_thread):
    """With a window longer than the whole cache (the default Gemma 2 window, 4096), a
    shared persona prefix is still computed once, and the answers are the same."""
    lm = tiny_model("gemma2")
    prefills = []
    handle = lm.model.register_forward_pre_hook(
        lambda _m, _a, kw: prefills.append(kw["input_ids"].shape) if kw["input_ids"].shape[-1] > 1
        else None, with_kwargs=True)
    texts = [chat_prompt(lm.tokenizer, prompts.roleplay("You are bold and curious about every new idea.", q))
             for q in (Q, "Why?")]
    try:
        ours = generate(lm.model, lm.tokenizer, texts, GenConfig(8, 2, 1.0), progress=False)
    finally:
        handle.remove()
    assert len(prefills) == 2 and prefills[0][0] == 1  # the shared prefix, then both rests
    ref = generate(lm.model, lm.tokenizer, texts, GenConfig(8, 1, 1.0), progress=False, engine="hf")
    assert [g.response_ids for g in ours] == [g.response_ids for g in ref]
