"""Bar charts of the benchmark tables' ratios, as SVG files the docs show next to the tables.

Each bench script calls [`charted`][] on the markdown it writes to docs/benchmarks.md: every
table under a ``#### title`` heading that has the ratio column gets a horizontal bar chart
(one bar per row, the reference row drawn apart), written to ``docs/img/``, and an image
line after the table. The SVG is plain text made here (no script, no font or style sheet
from elsewhere), the same bytes for the same table.

Usage (from the project root)::

    python bench/charts.py     # redraw every chart from the tables now in docs/benchmarks.md
"""

from __future__ import annotations

import html
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
IMAGES = ROOT / "docs" / "img"

CHARTS = {
    # the marker of a script's section in docs/benchmarks.md: (chart name, ratio column)
    "bench": ("fanout", "x limit"),
    "scaleout": ("scaleout", "x in-process fast"),
    "mailbox": ("mailbox", "x push to routers"),
    "mailbox-postgres": ("mailbox-postgres", "x push to routers"),
}
NAMES = {
    "fanout": "Fan-out",
    "scaleout": "Scaling out",
    "mailbox": "Clients behind NAT",
    "mailbox-postgres": "Clients behind NAT (PostgreSQL)",
}
"""Which column of which script's tables is drawn."""

_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)x\s*$")
_WIDTH, _LABEL, _ROW, _TOP = 760, 360, 24, 34
_BAR = _WIDTH - _LABEL - 130  # room for the value after the longest bar


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower().replace(",", "")).strip("-")


def svg(title: str, column: str, rows: list[tuple[str, float | None]]) -> str:
    """A horizontal bar chart: one bar per ``(label, ratio)``; ``None`` is the reference (1x)."""
    values = [1.0 if value is None else value for _, value in rows]
    scale = max([*values, 1.0])
    height = _TOP + _ROW * len(rows) + 26
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" role="img" font-family="sans-serif" font-size="12">',
        f"<title>{html.escape(title)}: {html.escape(column)}</title>",
        f'<text x="0" y="16" font-size="14" font-weight="bold">{html.escape(title)}</text>',
    ]
    one = _LABEL + _BAR / scale
    for n, ((label, value), shown) in enumerate(zip(rows, values, strict=True)):
        y = _TOP + n * _ROW
        colour = "#888888" if value is None else "#2f6db5"
        width = max(_BAR * shown / scale, 1.0)
        text = "1.00x (reference)" if value is None else f"{value:.2f}x"
        parts += [
            f'<text x="{_LABEL - 8}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>',
            f'<rect x="{_LABEL}" y="{y + 4}" width="{width:.1f}" height="{_ROW - 8}" '
            f'fill="{colour}"/>',
            f'<text x="{_LABEL + width + 6:.1f}" y="{y + 15}">{text}</text>',
        ]
    bottom = _TOP + _ROW * len(rows)
    parts += [
        f'<line x1="{one:.1f}" y1="{_TOP}" x2="{one:.1f}" y2="{bottom}" stroke="#444444" '
        'stroke-dasharray="3,3"/>',
        f'<text x="{_LABEL}" y="{bottom + 18}" fill="#444444">{html.escape(column)} '
        "(longer is better; the dashed line is 1x)</text>",
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def _table_rows(table: list[str], column: str) -> list[tuple[str, float | None]] | None:
    header = _cells(table[0])
    if column not in header:
        return None
    at = header.index(column)
    rows: list[tuple[str, float | None]] = []
    for line in table[2:]:
        cells = _cells(line)
        if len(cells) <= at:
            continue
        label = cells[0].replace("**", "")
        found = _RATIO.match(cells[at])
        if found is not None:
            rows.append((label, float(found[1])))
        elif cells[at] == "-" and re.match(r"^[\d,.]+$", cells[1]):
            rows.append((label, None))  # measured, and the row the column compares with
    return rows or None


def _is_chart(lines: list[str]) -> bool:
    return bool(lines) and lines[0].startswith("![") and "(img/bench-" in lines[0]


def charted(text: str, name: str, column: str, images: Path | None = IMAGES) -> str:
    """``text`` with an image line after each table that has ``column``; writes the SVGs.

    Args:
        text: Markdown with ``#### title`` headings above tables.
        name: The chart files' prefix (``bench-NAME-TITLE.svg``).
        column: The header of the ratio column to draw.
        images: Where the SVG files go (``docs/img``); ``None`` writes none (a run whose
            tables do not go into the docs must not change their charts either).
    """
    lines = text.split("\n")
    out: list[str] = []
    title = name
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#### "):
            title = line[5:].strip()
        if not line.startswith("|"):
            out.append(line)
            index += 1
            continue
        end = index
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        table = lines[index:end]
        out += table
        index = end
        rows = _table_rows(table, column)
        if rows is None:
            continue
        file = f"bench-{name}-{_slug(title)}.svg"
        if images is not None:
            images.mkdir(parents=True, exist_ok=True)
            heading = f"{NAMES.get(name, name)}, {title}"
            (images / file).write_text(svg(heading, column, rows), encoding="utf-8")
        image = f"![{title}: {column}](img/{file})"
        if lines[index : index + 1] == [""] and _is_chart(lines[index + 1 : index + 2]):
            index += 2  # the chart line of an earlier run: replaced
        out += ["", image]
    return "\n".join(out)


def main() -> None:
    """Redraw every chart from the tables now in docs/benchmarks.md (and its image lines)."""
    page = DOCS.read_text(encoding="utf-8")
    for marker, (name, column) in CHARTS.items():
        begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
        if begin not in page or end not in page:
            continue
        before, rest = page.split(begin, 1)
        inside, after = rest.split(end, 1)
        page = before + begin + charted(inside, name, column) + end + after
    DOCS.write_text(page, encoding="utf-8")


if __name__ == "__main__":
    main()
