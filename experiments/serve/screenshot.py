"""A screenshot of the chat page on the embedded model: experiments/serve/chat.png.

    python experiments/serve/screenshot.py [--sliders extraversion=1.5,neuroticism=-1]
        [--method neuron] [--n-search 16] [--search-tokens 48] [--out experiments/serve/chat.png]

Starts ``python -m pkt.serve`` on a free port with the sliders' personality preloaded (the
NPTI identification runs before the page is opened, on pkt's cache: a second run reuses
it), opens the page in headless Chromium, sets the sliders and the method, asks the
question with "answer also without induction" on, waits for both streamed answers and
saves the screenshot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pkt.serve.browser import Chromium  # noqa: E402
from pkt.serve.launch import Launched  # noqa: E402

QUESTION = "A friend invites you to a party where you know nobody. What do you do?"


def parse_sliders(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        out[name.strip()] = float(value)
    return out


def shorthand(sliders: dict[str, float], method: str) -> str:
    terms = [f"{t}:{'high' if v > 0 else 'low'}:{abs(v):g}" for t, v in sliders.items() if v]
    return "+".join(terms) + f"@{method}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--sliders", default="extraversion=1.5,neuroticism=-1")
    ap.add_argument("--method", default="neuron")
    ap.add_argument("--n-search", type=int, default=16)
    ap.add_argument("--search-tokens", type=int, default=48)
    ap.add_argument("--question", default=QUESTION)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "serve" / "chat.png"))
    ap.add_argument("--log", default=str(ROOT / "outputs" / "serve" / "screenshot-server.log"),
                    help="the server's log")
    args = ap.parse_args()

    sliders = parse_sliders(args.sliders)
    out = Path(args.out)
    log = Path(args.log)
    overrides = [f"model={args.model}", f"serve.n_search={args.n_search}",
                 f"serve.search_max_new_tokens={args.search_tokens}",
                 f"serve.preload=[{shorthand(sliders, args.method)}]"]
    t0 = time.time()
    with Launched(overrides, log=log) as url, Chromium(width=1280, height=820) as b:
        print(f"server ready after {time.time() - t0:.0f} s at {url}", file=sys.stderr)
        b.open(url + "/")
        b.wait("document.body && document.body.dataset.ready === '1'")
        for trait, v in sliders.items():
            b.eval(f"(() => {{ const s = document.getElementById('slider-{trait}'); "
                   f"s.value = {v}; s.dispatchEvent(new Event('input')); }})()")
        b.eval(f"(() => {{ const m = document.getElementById('method'); m.value = "
               f"{json.dumps(args.method)}; m.dispatchEvent(new Event('change')); }})()")
        b.eval(f"document.getElementById('max_tokens').value = {args.max_tokens}")
        b.type("#input", args.question)
        b.click("#send")
        b.wait("document.querySelectorAll('.answer[data-done]').length === 2", timeout=1800,
               every=0.5)
        answers = b.eval("[...document.querySelectorAll('.answer')].map(a => "
                         "a.querySelector('.who').textContent + ': ' + "
                         "a.querySelector('.text').textContent)")
        b.screenshot(out)
    for a in answers:
        print(a, "\n", file=sys.stderr)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
