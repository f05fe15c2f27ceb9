import torch

from pkt import prompts
from pkt.generation import GenConfig, chat_prompt, generate
from pkt.models import HFModel, TinyRandomModel


def test_tiny_random_is_deterministic():
    a, b = TinyRandomModel().load(), TinyRandomModel().load()
    assert a.fingerprint == b.fingerprint
    assert TinyRandomModel(init_seed=1).load().fingerprint != a.fingerprint
    assert a.tokenizer.padding_side == "left" and a.tokenizer.pad_token is not None


def test_saved_checkpoint_goes_through_the_gpu_code_path(tiny, tmp_path):
    """A local path through HFModel (what the GPU configs use) gives the same model."""
    tiny.model.save_pretrained(tmp_path / "ckpt")
    tiny.tokenizer.save_pretrained(tmp_path / "ckpt")
    lm = HFModel(name="local", path=str(tmp_path / "ckpt"), dtype="float32", device="auto").load()
    assert lm.fingerprint == tiny.fingerprint
    texts = [chat_prompt(lm.tokenizer, prompts.neutral("Hello?"))]
    a = generate(tiny.model, tiny.tokenizer, texts, GenConfig(8, 1, 1.0), progress=False)
    b = generate(lm.model, lm.tokenizer, texts, GenConfig(8, 1, 1.0), progress=False)
    assert a[0].response_ids == b[0].response_ids
    ids = torch.tensor([a[0].prompt_ids])
    with torch.no_grad():
        assert torch.allclose(tiny.model(ids).logits, lm.model(ids).logits, atol=1e-5)


def test_bf16_load(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "ckpt")
    tiny.tokenizer.save_pretrained(tmp_path / "ckpt")
    lm = HFModel(name="local", path=str(tmp_path / "ckpt"), dtype="bfloat16", device="cpu").load()
    assert next(lm.model.parameters()).dtype == torch.bfloat16
