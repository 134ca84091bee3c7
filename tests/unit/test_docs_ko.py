"""The Korean pages (README.ko.md, docs/ko/*.md) stay twins of their English pages: each links the other at the
top, the headings match in count, level and order, and the fenced code blocks (with any doc-test marker before
them) are identical. When an English page changes its sections or commands, this says which Korean page to
update and where; `python tests/unit/test_docs_ko.py` copies changed code blocks (and their doc-test comments)
into the Korean pages when only the blocks changed."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KO_DIR = ROOT / "docs" / "ko"

# The pages translated so far; more may join (any docs/ko/*.md is checked), none may silently go missing.
REQUIRED = {
    "README.ko.md",
    "docs/ko/run-control.md",
    "docs/ko/slurm.md",
    "docs/ko/storage.md",
    "docs/ko/operate.md",
    "docs/ko/kubernetes.md",
    "docs/ko/fleet.md",
    "docs/ko/parallelism.md",
    "docs/ko/planning.md",
    "docs/ko/data.md",
    "docs/ko/pipeline.md",
    "docs/ko/curate.md",
    "docs/ko/walkthrough.md",
}

OPEN_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
HEADING = re.compile(r"^(#{1,6})\s+\S")
MARKER = re.compile(r"^\s*<!--\s*doc-test:")
HEAD_LINES = 6  # the twin link sits right under the title


def _load_links_module():
    """The link checker of the English pages, reused so both languages follow the same anchor rules."""
    spec = importlib.util.spec_from_file_location("_docs_links", Path(__file__).with_name("test_docs_links.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_links = _load_links_module()


def korean_pages() -> list[Path]:
    pages = sorted(KO_DIR.glob("*.md")) if KO_DIR.is_dir() else []
    readme = ROOT / "README.ko.md"
    return ([readme] if readme.exists() else []) + pages


def english_twin(page: Path) -> Path:
    return ROOT / "README.md" if page.name == "README.ko.md" else ROOT / "docs" / page.name


def link_to(src: Path, dest: Path) -> str:
    """The relative link from src to dest, as written in the pages (../x.md, ko/x.md, README.ko.md)."""
    return Path(os.path.relpath(dest, src.parent)).as_posix()


def directives_before(lines: list[str], fence: int) -> tuple[int, tuple[str, ...]]:
    """The doc-test HTML comments right before the fence at index `fence` (blank lines between them allowed; a
    comment may span lines, e.g. a setup script), in order, and the index of the first one's first line."""
    found: list[str] = []
    start, j = fence, fence - 1
    while j >= 0:
        if not lines[j].strip():
            j -= 1
            continue
        if not lines[j].rstrip().endswith("-->"):
            break
        k = j
        while k >= 0 and not lines[k].lstrip().startswith("<!--"):
            k -= 1
        if k < 0 or not MARKER.match(lines[k]):
            break
        found.append("\n".join(lines[k : j + 1]))
        start, j = k, k - 1
    return start, tuple(reversed(found))


Block = tuple[tuple[str, ...], str, str]  # doc-test comments before it, info string, body


def scan(lines: list[str]) -> tuple[list[int], list[tuple[Block, int, int]]]:
    """Heading levels in order, and each fenced block with the index of its first line (its first doc-test
    comment, else the fence) and of its closing fence."""
    levels: list[int] = []
    blocks: list[tuple[Block, int, int]] = []
    i = 0
    while i < len(lines):
        m = OPEN_FENCE.match(lines[i])
        if m:
            _, fence, info = m.groups()
            close = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
            first, directives = directives_before(lines, i)
            opening = i
            i += 1
            while i < len(lines) and not close.match(lines[i]):
                i += 1
            blocks.append(((directives, info.strip(), "\n".join(lines[opening + 1 : i])), first, i))
        elif HEADING.match(lines[i]):
            levels.append(len(HEADING.match(lines[i]).group(1)))
        i += 1
    return levels, blocks


def parse(text: str) -> tuple[list[int], list[Block]]:
    """Heading levels in order, and the fenced blocks as (doc-test comments before it, info string, body)."""
    levels, blocks = scan(text.splitlines())
    return levels, [block for block, _, _ in blocks]


def sync_blocks(page: Path) -> int:
    """Copy the English twin's fenced blocks (with their doc-test comments) over the Korean page's, in order: for
    an English page whose commands or markers changed while its sections did not. Returns how many changed;
    refuses (ValueError) when the block counts differ, which needs a translator, not a copy."""
    ko_lines = page.read_text().splitlines()
    en_lines = english_twin(page).read_text().splitlines()
    _, ko_blocks = scan(ko_lines)
    _, en_blocks = scan(en_lines)
    if len(ko_blocks) != len(en_blocks):
        raise ValueError(f"{_rel(page)}: {len(ko_blocks)} code blocks, its English twin {len(en_blocks)}")
    changed = 0
    for (ko, k0, k1), (en, e0, e1) in reversed(list(zip(ko_blocks, en_blocks, strict=True))):
        if ko != en:
            ko_lines[k0 : k1 + 1] = en_lines[e0 : e1 + 1]
            changed += 1
    if changed:
        page.write_text("\n".join(ko_lines) + "\n")
    return changed


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def test_the_translated_pages_exist():
    have = {_rel(p) for p in korean_pages()}
    missing = sorted(REQUIRED - have)
    assert not missing, f"Korean pages missing: {missing}"


PAGES = korean_pages()


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_twins_link_each_other_at_the_top(page: Path):
    en = english_twin(page)
    assert en.exists(), f"{_rel(page)}: no English twin {_rel(en)}"
    ko_head = "\n".join(page.read_text().splitlines()[:HEAD_LINES])
    en_head = "\n".join(en.read_text().splitlines()[:HEAD_LINES])
    assert f"]({link_to(page, en)})" in ko_head, f"{_rel(page)}: no link to {link_to(page, en)} under the title"
    assert f"]({link_to(en, page)})" in en_head, f"{_rel(en)}: no link to {link_to(en, page)} under the title"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_headings_match_in_count_level_and_order(page: Path):
    ko_levels, _ = parse(page.read_text())
    en_levels, _ = parse(english_twin(page).read_text())
    for n, (ko, en) in enumerate(zip(ko_levels, en_levels, strict=False), start=1):
        assert ko == en, f"{_rel(page)}: heading {n} is level {ko}, the English one level {en}"
    assert len(ko_levels) == len(en_levels), (
        f"{_rel(page)}: {len(ko_levels)} headings, {_rel(english_twin(page))} has {len(en_levels)}"
    )


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_code_blocks_are_identical(page: Path):
    _, ko_blocks = parse(page.read_text())
    _, en_blocks = parse(english_twin(page).read_text())
    for n, (ko, en) in enumerate(zip(ko_blocks, en_blocks, strict=False), start=1):
        first = (en[2].splitlines() or [""])[0]
        assert ko == en, f"{_rel(page)}: code block {n} (English starts {first!r}) differs from the English one"
    assert len(ko_blocks) == len(en_blocks), (
        f"{_rel(page)}: {len(ko_blocks)} code blocks, {_rel(english_twin(page))} has {len(en_blocks)}"
    )


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_links_resolve_and_prefer_korean_twins(page: Path):
    own_twin = english_twin(page).resolve()
    problems = []
    for target in _links.relative_links(page):
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in _links.anchors(dest):
            problems.append(f"{target}: no heading with anchor #{fragment} in {_rel(dest)}")
        elif dest != own_twin and dest.parent == ROOT / "docs" and (KO_DIR / dest.name).exists():
            problems.append(f"{target}: a Korean page exists, link {link_to(page, KO_DIR / dest.name)}")
    assert not problems, f"{_rel(page)}: " + "; ".join(problems)


def test_parse_sees_directives_fences_and_headings():
    text = (
        "# T\n\n## A\n\n<!-- doc-test: rc=75 -->\n<!-- doc-test: setup\nprintf 'x' > f\n-->\n\n"
        "```bash\nls\n```\n\n<!-- a note -->\n```\n# not a heading\n```\n### B\n"
    )
    levels, blocks = parse(text)
    assert levels == [1, 2, 3]
    assert blocks == [
        (("<!-- doc-test: rc=75 -->", "<!-- doc-test: setup\nprintf 'x' > f\n-->"), "bash", "ls"),
        ((), "", "# not a heading"),
    ]


def test_sync_blocks_copies_changed_blocks_and_their_comments(tmp_path, monkeypatch):
    (tmp_path / "docs" / "ko").mkdir(parents=True)
    en = tmp_path / "docs" / "x.md"
    ko = tmp_path / "docs" / "ko" / "x.md"
    en.write_text("# X\n\n<!-- doc-test: rc=75 -->\n```bash\nmltrain stop demo\n```\n\n```text\nok\n```\n")
    ko.write_text("# 엑스\n\n```bash\nmltrain stop old\n```\n\n설명입니다.\n\n```text\nok\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert sync_blocks(ko) == 1
    assert parse(ko.read_text())[1] == parse(en.read_text())[1]
    assert "설명입니다." in ko.read_text()
    en.write_text(en.read_text() + "\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="2 code blocks, its English twin 3"):
        sync_blocks(ko)


if __name__ == "__main__":  # python tests/unit/test_docs_ko.py: carry the English pages' code blocks over
    for ko_page in korean_pages():
        try:
            n = sync_blocks(ko_page)
        except ValueError as e:
            print(f"not synced: {e}")
        else:
            print(f"{_rel(ko_page)}: {n} block(s) copied from {_rel(english_twin(ko_page))}")
