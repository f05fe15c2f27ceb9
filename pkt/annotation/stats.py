"""Agreement statistics on 1-5 ratings, with numpy only.

Every function returns ``None`` (never NaN) where the statistic is undefined: too few
values, or no variation to compare against.
"""

from __future__ import annotations

import math

import numpy as np


def _clean(x) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def mean_sd(values) -> dict:
    """``{"mean", "sd", "n"}`` of the non-missing values; sd is the sample sd (n - 1)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    sd = float(v.std(ddof=1)) if v.size > 1 else None
    return {"mean": float(v.mean()), "sd": sd, "n": int(v.size)}


def rankdata(values) -> np.ndarray:
    """Ranks 1..n, ties given the average of the ranks they span."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(v.size, dtype=float)
    sorted_v = v[order]
    start = 0
    for end in range(1, v.size + 1):
        if end == v.size or sorted_v[end] != sorted_v[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of start+1 .. end
            start = end
    return ranks


def pearson(x, y) -> float | None:
    """Pearson's r; None with fewer than two pairs or a constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    if den == 0:
        return None
    return _clean(float((dx * dy).sum()) / den)


def spearman(x, y) -> float | None:
    """Spearman's rho: Pearson's r of the average ranks (so ties are handled)."""
    if len(x) != len(y):
        raise ValueError("spearman needs two sequences of the same length")
    if len(x) < 2:
        return None
    return pearson(rankdata(x), rankdata(y))


def weighted_kappa(a, b, categories=range(1, 6)) -> float | None:
    """Cohen's kappa with quadratic weights for two raters' ratings of the same items.

    ``1 - sum(w * O) / sum(w * E)`` with ``w[i, j] = (i - j)^2``, ``O`` the observed joint
    proportions and ``E`` the product of the two raters' marginal proportions.
    """
    cats = list(categories)
    index = {c: i for i, c in enumerate(cats)}
    if len(a) != len(b):
        raise ValueError("weighted_kappa needs two sequences of the same length")
    if not a:
        return None
    observed = np.zeros((len(cats), len(cats)))
    for x, y in zip(a, b):
        observed[index[x], index[y]] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    pos = np.arange(len(cats), dtype=float)
    weights = (pos[:, None] - pos[None, :]) ** 2
    den = float((weights * expected).sum())
    if den == 0:
        return None
    return _clean(1.0 - float((weights * observed).sum()) / den)


def _coincidences(units, cats: list) -> np.ndarray:
    index = {c: i for i, c in enumerate(cats)}
    o = np.zeros((len(cats), len(cats)))
    for values in units:
        values = [v for v in values if v is not None]
        m = len(values)
        if m < 2:
            continue  # a unit with one value is not pairable
        counts = np.zeros(len(cats))
        for v in values:
            counts[index[v]] += 1
        o += (np.outer(counts, counts) - np.diag(counts)) / (m - 1)
    return o


def krippendorff_alpha(units, metric: str = "interval",
                       categories=range(1, 6)) -> float | None:
    """Krippendorff's alpha over ``units`` (one list of ratings per item, None = missing).

    ``metric`` is "interval" (delta = (c - k)^2) or "ordinal" (delta = the squared count of
    pairable values between c and k, the two ends counting half). ``1 - D_o / D_e`` from the
    coincidence matrix.
    """
    cats = list(categories)
    o = _coincidences(units, cats)
    n_c = o.sum(axis=1)
    n = float(n_c.sum())
    if n < 2:
        return None
    if metric == "interval":
        pos = np.asarray(cats, dtype=float)
        delta = (pos[:, None] - pos[None, :]) ** 2
    elif metric == "ordinal":
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        i, j = np.meshgrid(np.arange(len(cats)), np.arange(len(cats)), indexing="ij")
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        between = cum[hi + 1] - cum[lo] - (n_c[i] + n_c[j]) / 2.0
        delta = between ** 2
    else:
        raise ValueError(f"unknown metric '{metric}' (choose from: interval, ordinal)")
    d_o = float((o * delta).sum()) / n
    d_e = float((np.outer(n_c, n_c) * delta).sum()) / (n * (n - 1))
    if d_e == 0:
        return None
    return _clean(1.0 - d_o / d_e)
