"""DPN-LE's neuron-level parts (method=dpn, :mod:`pkt.methods.dpn`): per-neuron moments of
the MLP down projection's input (``mlp.down_in``) over role-play prompts or persona answers,
the mean difference and Cohen's d, the selection by both criteria, the amounts added, and
the edit at generation."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from pkt.errors import PktError
from pkt.hooks import Scope, hooked, masked_add
from pkt.neurons import identify
from pkt.neurons.sites import decoder_layers, mlp_width, require_one_device
from pkt.rows import RowEdit, generating

ASPECTS = identify.ASPECTS
WEIGHT_RANGE = (0.75, 1.0)  # rank weighting: the smallest |d| gets 0.75, the largest 1.0
EPS = 1e-8  # added to the pooled variance (a neuron constant in both groups gets a finite d)


class _Stop(Exception):
    """Raised after the last layer's down projection input is read: the rest is not needed."""


# -- identification ------------------------------------------------------------------------
class Moments:
    """Per neuron (``[layers, width]``, float64): the count, the mean and the sum of squared
    deviations of the rows added so far (batches merged exactly, Chan et al.)."""

    def __init__(self, n_layers: int, width: int):
        self.n = 0
        self.mean = torch.zeros(n_layers, width, dtype=torch.float64)
        self.m2 = torch.zeros(n_layers, width, dtype=torch.float64)

    def add(self, rows: torch.Tensor) -> None:
        """``rows``: ``[k, layers, width]``."""
        x = rows.to(torch.float64)
        k = x.shape[0]
        if k == 0:
            return
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n = self.n + k
        delta = mean_b - self.mean
        self.mean += delta * (k / n)
        self.m2 += m2_b + delta**2 * (self.n * k / n)
        self.n = n

    def tensors(self, aspect: str) -> dict[str, torch.Tensor]:
        return {f"{aspect}.mean": self.mean, f"{aspect}.m2": self.m2,
                f"{aspect}.n": torch.tensor([self.n], dtype=torch.int64)}


@torch.no_grad()
def last_token_moments(model, tokenizer, texts: list[str], batch_size: int = 8,
                       progress: bool = True, desc: str = "activations") -> Moments:
    """The moments of every layer's ``mlp.down_in`` at the last token of each text
    (batches of texts of similar length, left padded, position ids from the mask)."""
    from pkt.hooks import position_ids

    layers = decoder_layers(model)
    n_layers, width = len(layers), mlp_width(model)
    device = next(model.parameters()).device
    mom = Moments(n_layers, width)
    captured: dict[int, torch.Tensor] = {}
    where: dict[str, torch.Tensor] = {}  # the batch's rows and last-token positions

    def make(layer: int):
        def hook(_mod, args):
            captured[layer] = args[0][where["rows"], where["last"]].float().cpu()
            if layer == n_layers - 1:
                raise _Stop

        return hook

    # by length: little padding (the moments do not depend on the order)
    lengths = [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = [texts[i] for i in sorted(range(len(texts)), key=lambda i: (lengths[i], i))]
    with hooked(model, {("mlp.down_in", i): make(i) for i in range(n_layers)}):
        for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            enc = tokenizer(order[s : s + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False)
            ids, attn = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            where["rows"] = torch.arange(ids.shape[0], device=device)
            where["last"] = (attn * torch.arange(attn.shape[1], device=device)).argmax(-1)
            captured.clear()
            try:
                model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn),
                      use_cache=False)
            except _Stop:
                pass
            mom.add(torch.stack([captured[i] for i in range(n_layers)], 1))
    return mom


@torch.no_grad()
def answer_moments(model, seqs: list[tuple[list[int], list[int]]], pad_id: int,
                   batch_size: int = 8, progress: bool = True,
                   desc: str = "activations") -> Moments:
    """The moments of every layer's ``mlp.down_in`` at the positions that produce the
    answer tokens of each (prompt ids, answer ids) pair, teacher-forced: the last prompt
    position up to the second-to-last answer token (:func:`pkt.neurons.stats.padded_batch`),
    the positions NPTI's statistics are recorded at. Pairs with no answer token are skipped."""
    from pkt.neurons.stats import padded_batch

    layers = decoder_layers(model)
    n_layers, width = len(layers), mlp_width(model)
    device = next(model.parameters()).device
    mom = Moments(n_layers, width)
    captured: dict[int, torch.Tensor] = {}
    where: dict[str, torch.Tensor] = {}

    def make(layer: int):
        def hook(_mod, args):
            captured[layer] = args[0][where["count"]].float().cpu()
            if layer == n_layers - 1:
                raise _Stop

        return hook

    seqs = [x for x in seqs if x[1]]
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i][0]) + len(seqs[i][1]), i))
    with hooked(model, {("mlp.down_in", i): make(i) for i in range(n_layers)}):
        for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            ids, attn, pos, count = padded_batch([seqs[i] for i in order[s : s + batch_size]],
                                                 pad_id, device)
            where["count"] = count
            captured.clear()
            try:
                model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
            except _Stop:
                pass
            mom.add(torch.stack([captured[i] for i in range(n_layers)], 1))
    return mom


def answer_statistics(lm, bench, seed: int, responses: list[dict], batch_size: int = 8,
                      progress: bool = True) -> dict:
    """Both aspects' moments over the persona answers ``responses`` (NPTI's, with their
    ``response_ids``; one per search question and aspect, in the search split's order)."""
    pad = lm.tokenizer.pad_token_id
    if pad is None:
        pad = lm.tokenizer.eos_token_id or 0
    out = {}
    for aspect in ASPECTS:
        rows = [r for r in responses if r["aspect"] == aspect]
        if len(rows) != len(bench.search) or any("response_ids" not in r for r in rows):
            raise PktError("method.source=answers needs NPTI's persona answers with their token "
                           "ids (statistics made before they were kept): identify the trait "
                           "again with method=neuron method.recompute=true")
        texts = identify.roleplay_prompts(lm, bench, aspect, seed)
        ids = lm.tokenizer(texts, add_special_tokens=False)["input_ids"]
        seqs = [(list(p), [int(t) for t in r["response_ids"]]) for p, r in zip(ids, rows)]
        if sum(len(a) for _, a in seqs) < 2:
            raise PktError("method=dpn needs at least 2 answer tokens per aspect (Cohen's d "
                           "uses the variance)")
        mom = answer_moments(lm.model, seqs, pad, batch_size, progress,
                             desc=f"down_proj inputs over answers ({aspect})")
        out.update(mom.tensors(aspect))
    return out


def statistics(lm, bench, seed: int, batch_size: int = 8, progress: bool = True) -> dict:
    """Both aspects' moments over the role-play prompts of the search questions."""
    out = {}
    for aspect in ASPECTS:
        texts = identify.roleplay_prompts(lm, bench, aspect, seed)
        if len(texts) < 2:
            raise PktError(f"method=dpn needs at least 2 search questions per aspect (Cohen's d "
                           f"uses the variance), got {len(texts)}")
        mom = last_token_moments(lm.model, lm.tokenizer, texts, batch_size, progress,
                                 desc=f"down_proj inputs ({aspect})")
        out.update(mom.tensors(aspect))
    return out


def effect_sizes(st: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(delta, d)`` per neuron ``[layers, width]`` (float64): the mean difference high -
    low and Cohen's d with the pooled standard deviation."""
    nh, nl = int(st["high.n"]), int(st["low.n"])
    delta = st["high.mean"] - st["low.mean"]
    pooled = (st["high.m2"] + st["low.m2"]) / max(nh + nl - 2, 1)
    d = torch.nan_to_num(delta / torch.sqrt(pooled.clamp_min(0.0) + EPS))
    return delta, d


def select(delta: torch.Tensor, d: torch.Tensor, layers: list[int], quantile: float,
           d_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The high- and low-exclusive neurons (bool ``[layers, width]``): in each of ``layers``,
    ``|delta|`` above the layer's ``quantile`` of ``|delta|`` and ``d > d_threshold``
    (high) or ``d < -d_threshold`` (low); nothing outside ``layers``."""
    high = torch.zeros(delta.shape, dtype=torch.bool)
    low = torch.zeros(delta.shape, dtype=torch.bool)
    for layer in layers:
        mag = delta[layer].abs()
        big = mag > torch.quantile(mag, float(quantile))
        high[layer] = big & (d[layer] > d_threshold)
        low[layer] = big & (d[layer] < -d_threshold)
    return high, low


def rank_weights(d: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Per layer, :data:`WEIGHT_RANGE` spread linearly over the ranks of ``|d|`` among the
    ``chosen`` neurons (ties by index; one neuron alone gets the top weight); 0 elsewhere."""
    lo, hi = WEIGHT_RANGE
    w = torch.zeros(d.shape, dtype=torch.float64)
    for layer in range(d.shape[0]):
        idx = chosen[layer].nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        if idx.numel() == 1:
            w[layer, idx] = hi
            continue
        order = torch.sort(d[layer, idx].abs(), stable=True).indices
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(idx.numel())
        w[layer, idx] = lo + (hi - lo) * ranks.double() / (idx.numel() - 1)
    return w


def unit_edit(delta: torch.Tensor, d: torch.Tensor, high: torch.Tensor, low: torch.Tensor,
              aspect: str, neuron_mode: str = "both", weighting: str = "none") -> torch.Tensor:
    """The amount added per neuron at strength 1 (float32 ``[layers, width]``, 0 where
    nothing is edited): ``sign * delta * w`` on the edited neurons."""
    sign = 1.0 if aspect == "high" else -1.0
    if neuron_mode == "both":
        chosen = high | low
    else:
        chosen = high if aspect == "high" else low
    w = rank_weights(d, chosen) if weighting == "rank" else chosen.double()
    return (sign * delta * w * chosen).float()


def band_layers(n_layers: int, band) -> list[int]:
    """The decoder blocks ``l`` with ``start <= l / n_layers < end``."""
    start, end = (float(x) for x in band)
    tol = 1e-9
    return [i for i in range(n_layers) if start - tol <= i / n_layers < end - tol]


# -- editing ------------------------------------------------------------------------------
def steer_down_in(model, adds: dict[int, torch.Tensor], include_prompt: bool = False,
                  scope: Scope | None = None):
    """Context manager: ``adds[l]`` (``[width]``) added to the input of layer ``l``'s down
    projection at the positions of ``scope`` (default: decode steps, or every position with
    ``include_prompt``), in the activations' own dtype; hooks removed on exit."""
    require_one_device(model, "method=dpn")
    if scope is None:  # generation: pkt.rows, as the server's batch
        return generating(model, RowEdit.vectors("mlp.down_in", adds, include_prompt))
    if include_prompt:
        scope = Scope.every()

    def make(vec: torch.Tensor):
        add = masked_add(vec, scope)

        def hook(_mod, args):
            h = add(args[0])
            return None if h is None else (h, *args[1:])

        return hook

    return hooked(model, {("mlp.down_in", i): make(v) for i, v in adds.items()})
