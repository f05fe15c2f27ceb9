"""The few lines a finished run prints on the console: what was induced, the scores, where
the results are, and what to try next (the runner's last words; nothing here computes)."""

from __future__ import annotations

from pathlib import Path


def _num(x, fmt: str = ".2f") -> str:
    return "-" if x is None else format(float(x), fmt)


def run_summary(metrics: dict, run_dir: Path, wandb_dir: Path | None = None) -> list[str]:
    """Lines for the console from a run's metrics.json contents."""
    method = metrics.get("method", "?")
    what = (f"profile {metrics['profile'].get('label')}" if metrics.get("profile")
            else f"{metrics.get('trait')} ({metrics.get('aspect')})")
    lines = [f"pkt: done: {method}, {what}, on {metrics.get('model')} "
             f"({metrics.get('n', 0)} answers)"]
    strength = (metrics.get("params") or {}).get("strength")
    auto = metrics.get("strength_auto")
    if strength is not None:
        how = f" (strength=auto, within ppl <= {_num(auto.get('max_ppl_ratio'))} and MC >= " \
              f"{_num(auto.get('min_mc_ratio'))})" if auto else ""
        lines.append(f"  strength {_num(strength, 'g')}{how}")
    scorer = metrics.get("trait_scorer")
    for trait, row in (metrics.get("traits") or {}).items():
        score = (row.get("score") or {}).get("mean")
        base = (row.get("base") or {}).get("mean")
        vs = f", plain model {_num(base)} ({_num(row.get('delta'), '+.2f')})" if base is not None \
            else ""
        aspect = f" {row['aspect']}" if row.get("aspect") else ""
        lines.append(f"  {trait}{aspect}: trait score {_num(score)} of 5{vs}"
                     + (f" [{scorer}]" if scorer else ""))
    cap = metrics.get("capability") or {}
    if cap.get("mc_ratio") is not None or cap.get("ppl_ratio") is not None:
        lines.append(f"  capability with the intervention: MC accuracy ratio "
                     f"{_num(cap.get('mc_ratio'))}, perplexity ratio {_num(cap.get('ppl_ratio'))}"
                     f" (1.00 = the plain model)")
    if metrics.get("evaluation_error"):
        lines.append(f"  evaluation: {metrics['evaluation_error']}")
    pngs = sorted(p.name for p in Path(run_dir).glob("*.png"))
    lines.append(f"  results: {run_dir} (generations.jsonl, metrics.json"
                 + (f", {', '.join(pngs)}" if pngs else "") + ")")
    if wandb_dir is not None:
        lines.append(f"  W&B (offline): {wandb_dir}; upload with `make wandb-sync`")
    trait = metrics.get("trait") or "openness"
    lines.append(f"  next: python -m pkt.run method=base trait={trait}   (the plain model on "
                 f"the same questions)")
    lines.append(f"        python -m pkt.run -m method=prompt_p2,actadd,neuron trait={trait} "
                 f"aspect=high,low   then   python -m pkt.report <sweep dir>")
    return lines
