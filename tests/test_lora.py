"""method=lora: data masking, one training step, adapter cache round trip, W&B, end to end."""

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

from pkt import prompts
from pkt.errors import PktError
from pkt.generation import GenConfig, chat_prompt, generate
from pkt.methods import Setting
from pkt.methods.lora import (
    DEFAULT_TARGETS,
    LoraMethod,
    LoraModule,
    attach_lora,
    collate,
    split,
    training_examples,
)
from pkt.models import TinyRandomModel
from tests.conftest import openness_context, outputs, read_jsonl, run_dirs, run_pkt

QUESTIONS = ["What do you think about modern art?", "How do you spend a free afternoon?",
             "Would you try a food you have never heard of?", "What is your view on poetry?",
             "How do you feel about travelling alone?", "Do you enjoy abstract ideas?",
             "What would you change about your town?", "How do you pick a book to read?"]
# small and quick on the tiny model; the adapter must move far enough to change logits
FAST = dict(search_gen={"max_new_tokens": 10}, batch_size=4, max_epochs=3, max_steps=6, lr=5e-3)
EVAL_GEN = GenConfig(max_new_tokens=10, batch_size=4, repetition_penalty=1.15)


pytestmark = pytest.mark.usefixtures("one_thread")


PERSONAS = {"high": ["You are curious and imaginative.", "You love art and new ideas."],
            "low": ["You like routine and plain facts.", "You avoid anything unfamiliar."]}


def _ctx(lm, root: Path, aspect: str = "high") -> Setting:
    return openness_context(lm, QUESTIONS, PERSONAS, root / "run", EVAL_GEN, aspect=aspect,
                            cache_dir=root / "cache")


def _texts(lm) -> list[str]:
    return [chat_prompt(lm.tokenizer, prompts.neutral(q)) for q in QUESTIONS[:3]]


def _logits(lm, text: str) -> torch.Tensor:
    enc = lm.tokenizer([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return lm.model(**enc).logits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    lm = TinyRandomModel().load()
    m = LoraMethod(_ctx(lm, root), **FAST)
    m.prepare(outputs(root / "run"))
    return root, lm, m


def test_examples_mask_prompt_and_end_with_eos(tiny):
    tok = tiny.tokenizer
    rs = [{"aspect": "high", "question": "Q one?", "response": "I adore new ideas."},
          {"aspect": "low", "question": "Q two?", "response": "Keep it plain."},
          {"aspect": "high", "question": "Q three?", "response": "  "}]
    ex = training_examples(tok, rs, "high", max_length=512)
    assert len(ex) == 1  # other aspect and empty answers dropped
    p = tok(chat_prompt(tok, prompts.neutral("Q one?")), add_special_tokens=False)["input_ids"]
    a = tok("I adore new ideas.", add_special_tokens=False)["input_ids"]
    assert ex[0]["input_ids"] == p + a + [tok.eos_token_id]
    assert ex[0]["labels"] == [-100] * len(p) + a + [tok.eos_token_id]
    b = collate(ex + training_examples(tok, [{**rs[0], "response": "Yes."}], "high", 512), 0)
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape
    assert (b["labels"][b["attention_mask"] == 0] == -100).all()
    train, val = split([{"i": i} for i in range(10)], 0.15, 0)
    assert len(val) == 2 and len(train) == 8
    assert split([{"i": 0}, {"i": 1}], 0.15, 0)[1] and split([{"i": 0}, {"i": 1}], 0.15, 0)[0]
    with pytest.raises(PktError, match="at least 2"):
        split([{"i": 0}], 0.15, 0)


def test_one_training_step_lowers_the_loss():
    lm = TinyRandomModel().load()
    rs = [{"aspect": "high", "question": q, "response": f"I find {q.lower()} fascinating!"}
          for q in QUESTIONS[:4]]
    batch = collate(training_examples(lm.tokenizer, rs, "high", 512), lm.tokenizer.pad_token_id)
    peft = attach_lora(lm.model, 8, 16, 0.0, list(DEFAULT_TARGETS))
    module = LoraModule(peft, lr=1e-2)
    opt = module.configure_optimizers()
    assert all("lora_" in n for n, _ in module.trainable())
    loss0 = module(batch)
    loss0.backward()
    opt.step()
    with torch.no_grad():
        loss1 = module(batch)
    assert float(loss1) < float(loss0.detach()) - 1e-4


def test_outside_intervention_is_the_untouched_model(trained):
    _, lm, m = trained
    ref = TinyRandomModel().load()
    text = _texts(lm)[0]
    assert torch.equal(_logits(lm, text), _logits(ref, text))
    with m.intervention():
        inside = _logits(lm, text)
    assert not torch.allclose(inside, _logits(ref, text), atol=1e-4)
    with pytest.raises(RuntimeError, match="boom"):
        with m.intervention():
            raise RuntimeError("boom")
    assert torch.equal(_logits(lm, text), _logits(ref, text))  # disabled again after the error
    assert lm.model is m.peft.get_base_model()  # ctx.lm.model is still the transformers model


def test_metrics_and_describe(trained):
    _, _, m = trained
    mt = m.prepared.metrics
    assert mt["lora_adapter_cached"] is False
    assert mt["lora_train_examples"] + mt["lora_val_examples"] <= len(QUESTIONS)
    assert mt["lora_val_examples"] >= 1 and 1 <= mt["lora_steps"] <= 6
    assert mt["lora_final_train_loss"] > 0 and mt["lora_best_val_loss"] > 0
    d = m.describe()
    assert d["method"] == "lora" and d["rank"] == 8 and d["lr"] == 5e-3
    assert (m.out.run_dir / "lightning" / "lora" / "metrics.csv").is_file()


def test_adapter_reload_gives_identical_greedy_outputs(trained, caplog):
    root, lm, m = trained
    with m.intervention():
        a = generate(lm.model, lm.tokenizer, _texts(lm), EVAL_GEN, progress=False)
    base = generate(lm.model, lm.tokenizer, _texts(lm), EVAL_GEN, progress=False)
    lm2 = TinyRandomModel().load()
    m2 = LoraMethod(_ctx(lm2, root), **FAST)
    with caplog.at_level("INFO", logger="pkt.methods.lora"):
        prep = m2.prepare()
    assert "reusing cached adapter" in caplog.text
    assert prep.metrics["lora_adapter_cached"] is True
    assert prep.metrics["lora_steps"] == m.prepared.metrics["lora_steps"]
    with m2.intervention():
        b = generate(lm2.model, lm2.tokenizer, _texts(lm2), EVAL_GEN, progress=False)
    assert [g.response_ids for g in a] == [g.response_ids for g in b]
    assert [g.response_ids for g in a] != [g.response_ids for g in base]
    # the artifact dir also applies directly
    path = m.store.path("lora_adapter", m.adapter_key())
    lm3 = TinyRandomModel().load()
    m3 = LoraMethod(_ctx(lm3, root / "other"), adapter_from=str(path), **FAST)
    m3.prepare()
    with m3.intervention():
        c = generate(lm3.model, lm3.tokenizer, _texts(lm3), EVAL_GEN, progress=False)
    assert [g.response_ids for g in a] == [g.response_ids for g in c]


def test_adapter_for_another_base_model_is_refused(trained):
    root, _, m = trained
    path = m.store.path("lora_adapter", m.adapter_key())
    other = TinyRandomModel(init_seed=1).load()
    m2 = LoraMethod(_ctx(other, root / "x"), adapter_from=str(path), **FAST)
    with pytest.raises(PktError, match="was made for another base model"):
        m2.prepare()
    m3 = LoraMethod(_ctx(TinyRandomModel().load(), root / "y", aspect="low"),
                    adapter_from=str(path), **FAST)
    with pytest.raises(PktError, match="is for aspect high, not low"):
        m3.prepare()


def test_training_curves_go_to_the_runners_own_wandb_run(tmp_path):
    from pkt.tracking import WandbTracker

    tracker = WandbTracker(run_dir=tmp_path, run_config={}, name="t", mode="offline")
    env = {k: v for k, v in os.environ.items() if k.startswith("WANDB")}
    try:
        m = LoraMethod(_ctx(TinyRandomModel().load(), tmp_path), **FAST)
        m.prepare(outputs(tmp_path / "run", tracker))
        # Lightning did not finish the runner's run: it still takes records
        tracker.log_metrics({"after_training": 1})
        tracker.log_summary({"summary_probe_after": 1})  # a name no history record has
        assert {k: v for k, v in os.environ.items() if k.startswith("WANDB")} == env
    finally:
        tracker.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    # the records hold the metric names in clear; wandb-core may still be flushing
    WANTED = (b"train_loss", b"val_loss", b"after_training", b"summary_probe_after")
    deadline, blob = time.monotonic() + 20, b""
    while time.monotonic() < deadline:
        blob = b"".join(f.read_bytes() for f in runs[0].glob("run-*.wandb"))
        if all(k in blob for k in WANTED):
            break
        time.sleep(0.25)
    # the summary goes into the run file too (offline runs of recent wandb versions write no
    # wandb-summary.json, so that file cannot be the check)
    assert [k for k in WANTED if k not in blob] == []


@pytest.mark.embedded
def test_lora_run_on_embedded_model(tmp_path, embedded_npti):
    """Trained on the persona answers of the session's NPTI run (tests/conftest.py: the same
    trait, search split and budget, the same cache): the LoRA run answers nothing again."""
    r = run_pkt(["method=lora", "trait=extraversion", "data.n_test=2", "data.n_search=8",
                 "search_gen.max_new_tokens=32", "gen.max_new_tokens=24", "logger=none", "eval=none",
                 "method.max_epochs=1", "method.max_steps=2", "method.batch_size=4"], tmp_path,
                cache=embedded_npti["cache"])
    assert r.returncode == 0, r.stderr[-3000:]
    (d,) = run_dirs(tmp_path)
    gens = read_jsonl(d / "generations.jsonl")
    assert len(gens) == 2 and all(g["method"] == "lora" and g["response"].strip() for g in gens)
    m = json.loads((d / "metrics.json").read_text())
    assert m["lora_adapter_cached"] is False and m["lora_steps"] == 2
    assert m["lora_train_examples"] + m["lora_val_examples"] <= 8
    info = json.loads((d / "run_info.json").read_text())
    assert info["artifacts"]["lora_adapter"]
    assert info["artifacts"]["statistics"] == embedded_npti["info"]["artifacts"]["statistics"]


def test_max_steps_inside_the_first_epoch_still_validates(tmp_path):
    """max_steps reached before the first epoch ends: validation runs at that step (early
    stopping and restore_best need a val_loss), not Lightning's error."""
    lm = TinyRandomModel().load()
    m = LoraMethod(_ctx(lm, tmp_path), **{**FAST, "batch_size": 1, "max_steps": 2, "max_epochs": 1})
    p = m.prepare(outputs(tmp_path / "run"))
    assert p.metrics["lora_steps"] == 2 and p.metrics["lora_train_examples"] > 2
    assert math.isfinite(p.metrics["lora_best_val_loss"])
