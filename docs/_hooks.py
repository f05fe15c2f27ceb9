"""MkDocs hook: the site also carries the repository's experiments/ and conf/ folders.

The pages link into the repository with ordinary relative paths (``../experiments/...``
from ``docs/results.md``), which work on disk and in a repository browser. MkDocs only
knows the files under ``docs/``, so this hook adds every file of ``experiments/`` and
``conf/`` to the site at the same place relative to the docs root, and rewrites each link
that leaves ``docs/`` into the site's layout before MkDocs resolves it. A link to any other
file outside ``docs/`` is left as it is, and ``mkdocs build --strict`` fails on it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
TREES = ("experiments", "conf")
# inline links and images: [text](target) / ![alt](target), target without spaces
LINK = re.compile(r"(\]\()([^)\s]+)(\))")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def on_files(files, config):
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                rel = path.relative_to(ROOT).as_posix()
                files.append(File(rel, str(ROOT), config["site_dir"],
                                  config["use_directory_urls"]))
    return files


def _in_repo(src_uri: str) -> str:
    """Where the page's source lies in the repository."""
    return src_uri if src_uri.split("/")[0] in TREES else f"docs/{src_uri}"


def _relink(text: str, src_uri: str) -> str:
    here = posixpath.dirname(_in_repo(src_uri))
    page_dir = posixpath.dirname(src_uri) or "."

    def fix(m: re.Match) -> str:
        url = m.group(2)
        if "://" in url or url.startswith(("#", "/", "mailto:")):
            return m.group(0)
        path, sep, anchor = url.partition("#")
        target = posixpath.normpath(posixpath.join(here, path))
        if target.startswith("docs/"):
            site = target[len("docs/"):]
        elif target.split("/")[0] in TREES:
            site = target
        else:
            return m.group(0)
        return m.group(1) + posixpath.relpath(site, page_dir) + sep + anchor + m.group(3)

    return LINK.sub(fix, text)


def on_page_markdown(markdown, page, config, files):
    out, last = [], 0
    for m in FENCE.finditer(markdown):  # code blocks are left alone
        out += [_relink(markdown[last:m.start()], page.file.src_uri), m.group(0)]
        last = m.end()
    out.append(_relink(markdown[last:], page.file.src_uri))
    return "".join(out)
