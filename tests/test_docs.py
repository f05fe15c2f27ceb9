"""The documentation: the README stays a short guide, every relative link resolves, every
study in experiments/ says how to repeat it, and the MkDocs site builds strictly."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

README_MAX_LINES = 350
# [text](target) and ![alt](target); the target up to a space or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def markdown_files() -> list[Path]:
    """README.md, every page under docs/ and every README of a study."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
            *sorted((ROOT / "experiments").glob("*/README.md"))]


def relative_links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith(("#", "/"))]


def test_readme_is_a_short_guide():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "<!-- api-example -->\n```python\n" in text  # tests/test_api.py runs that block


def test_every_relative_link_points_to_a_file():
    broken = []
    for md in markdown_files():
        for target in relative_links(md):
            path = target.split("#", 1)[0]
            if path and not (md.parent / path).exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)
    assert relative_links(ROOT / "README.md"), "the link check found no links at all"


def test_every_study_has_a_readme_with_its_provenance():
    studies = sorted(p for p in (ROOT / "experiments").iterdir() if p.is_dir())
    assert studies
    for study in studies:
        readme = study / "README.md"
        assert readme.is_file(), f"{study.relative_to(ROOT)} has no README.md"
        text = readme.read_text(encoding="utf-8")
        assert "## Repeat it" in text and "```bash" in text, readme
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{readme}: no date"
        assert re.search(r"`[0-9a-f]{7,40}`", text), f"{readme}: no commit"
        assert "annotated" in text, f"{readme}: does not say who annotated"


def test_no_committed_text_points_outside_the_repository():
    for path in [*(ROOT / "conf").rglob("*.yaml"), *markdown_files(), ROOT / "mkdocs.yml"]:
        assert "../shared/" not in path.read_text(encoding="utf-8"), path


def test_site_builds_strictly(tmp_path):
    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None
               or importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the docs tools are not installed ({', '.join(missing)}): "
                    f"pip install -e '.[docs]' (make docs does it)")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                        "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for page in ("index.html", "config/index.html", "api/index.html", "history/index.html",
                 "experiments/leakage/index.html", "experiments/leakage/leakage.png"):
        assert (site / page).is_file(), page
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "pkt.api.identify" in api  # the API pages come from the docstrings
