"""README.zh-CN.md stays in step with README.md.

The Chinese README translates prose only: headings, code blocks, tables and inline code are the same
as in README.md. A README.md change that is not carried over to README.zh-CN.md fails here.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EN = ROOT / "README.md"
ZH = ROOT / "README.zh-CN.md"

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{2,3})\s")
SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")


@dataclass
class Outline:
    headings: list[str] = field(default_factory=list)  # "##" / "###", in order
    code_blocks: list[str] = field(default_factory=list)  # fence line + contents + closing fence
    tables: list[tuple[int, int]] = field(default_factory=list)  # (columns, rows incl. header)
    inline_code: Counter[str] = field(default_factory=Counter)


def outline(path: Path) -> Outline:
    out = Outline()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    block: list[str] | None = None
    table: list[str] = []

    def end_table() -> None:
        if table:
            seps = [row for row in table if SEPARATOR.match(row.strip())]
            assert seps, f"{path.name}: a table without a |---| row: {table[0]!r}"
            out.tables.append((seps[0].strip().count("|") - 1, len(table)))
            table.clear()

    for line in lines:
        if block is not None:
            block.append(line)
            if FENCE.match(line) and line.strip() == block[0].strip()[:3]:
                out.code_blocks.append("".join(block))
                block = None
            continue
        if FENCE.match(line):
            end_table()
            block = [line]
            continue
        if line.startswith("|"):
            table.append(line)
        else:
            end_table()
        if m := HEADING.match(line):
            out.headings.append(m.group(1))
        for m in INLINE_CODE.finditer(line):
            out.inline_code[m.group(2)] += 1
    end_table()
    assert block is None, f"{path.name}: a code block is never closed"
    return out


@pytest.fixture(scope="module")
def en() -> Outline:
    return outline(EN)


@pytest.fixture(scope="module")
def zh() -> Outline:
    return outline(ZH)


def test_headings_in_step(en: Outline, zh: Outline) -> None:
    assert en.headings, "README.md has no ##/### headings: the parser is broken"
    assert zh.headings == en.headings


def test_code_blocks_byte_identical(en: Outline, zh: Outline) -> None:
    assert en.code_blocks, "README.md has no fenced code blocks: the parser is broken"
    assert len(zh.code_blocks) == len(en.code_blocks)
    for i, (e, z) in enumerate(zip(en.code_blocks, zh.code_blocks, strict=True)):
        assert z == e, f"code block {i + 1} differs between README.md and README.zh-CN.md"


def test_tables_in_step(en: Outline, zh: Outline) -> None:
    assert en.tables, "README.md has no tables: the parser is broken"
    assert zh.tables == en.tables, "tables (columns, rows) differ"


def test_inline_code_in_step(en: Outline, zh: Outline) -> None:
    # Commands, flags and paths are never translated; word order may move them within a sentence.
    missing = en.inline_code - zh.inline_code
    extra = zh.inline_code - en.inline_code
    assert not missing and not extra, (
        f"inline code missing in README.zh-CN.md: {dict(missing)}; extra: {dict(extra)}"
    )


def test_each_links_to_the_other() -> None:
    en_lines = EN.read_text(encoding="utf-8").splitlines()
    zh_lines = ZH.read_text(encoding="utf-8").splitlines()
    assert "中文说明：[README.zh-CN.md](README.zh-CN.md)" in en_lines[:4]
    assert "English: [README.md](README.md)" in zh_lines[:4]
