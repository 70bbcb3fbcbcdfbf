"""The repository's own docs: every ``docs/<page>.md#<section>`` that code, configs or docs cite,
and every relative link of the README and docs/, leads to a file and a heading that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["README.md", "MLproject", *(f"{d}/**/*.{ext}" for d in
           ("pipeline", "tracking", "selection", "bench", "tests", "docs", "configs")
           for ext in ("py", "md", "yaml"))]
CITATION = re.compile(r"docs/([\w-]+\.md)#([\w-]+)")
LINK = re.compile(r"\]\(([^)#\s]*)(?:#([\w-]+))?\)")


def anchors(page: Path) -> set[str]:
    """The heading anchors GitHub renders for ``page``: lower case, punctuation dropped,
    spaces as hyphens, a repeated heading numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6}\s+(.+)", line)
        if fenced or heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_anchors_follow_github():
    page = REPO / "docs" / "design.md"
    assert {"identity-specs-and-hashes", "records-what-each-run-holds"} <= anchors(page)


def _files() -> list[Path]:
    return sorted({p for pattern in SOURCES for p in REPO.glob(pattern) if p.is_file()})


def test_cited_doc_sections_exist():
    cited = [(path, page, anchor) for path in _files()
             for page, anchor in CITATION.findall(path.read_text(errors="replace"))]
    assert cited, "no docs/<page>.md#<section> citation found: the pattern is wrong"
    missing = [f"{path.relative_to(REPO)}: docs/{page}#{anchor}" for path, page, anchor in cited
               if not (REPO / "docs" / page).is_file()
               or anchor not in anchors(REPO / "docs" / page)]
    assert not missing, "citations of sections that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", ["README.md", *(str(p.relative_to(REPO))
                                                  for p in sorted((REPO / "docs").glob("*.md")))])
def test_relative_links_resolve(page):
    source = REPO / page
    broken = []
    for target, anchor in LINK.findall(source.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        linked = (source.parent / target) if target else source
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}#{anchor} (no such heading)")
    assert not broken, f"{page}: " + ", ".join(broken)
