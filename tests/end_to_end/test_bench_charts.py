"""The docs' pictures: bench/charts.py's charts of docs/benchmarks.md are drawn from its
tables and committed as drawn; every picture a page shows is committed and loads nothing."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

from helpers.bench import bench_module

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "benchmarks.md"
SVG = "{http://www.w3.org/2000/svg}"


def _charts() -> ModuleType:
    return bench_module("charts")


TABLE = """#### 1,000 receivers

| peer | deliveries/s (median) | x limit | runs |
|---|---|---|---|
| bare streams | 16,896 | - | 3 |
| flnotify Notifier | 10,986 | 0.65x | 3 |
| broken peer | failed: refused | | |
| **pull / push** | 2.5x | 3.20x | |
"""


def test_a_table_becomes_a_bar_per_row_and_an_image_line(tmp_path: Path) -> None:
    charts = _charts()
    text = charts.charted(TABLE, "fanout", "x limit", images=tmp_path)
    assert text.endswith("|\n\n![1,000 receivers: x limit](img/bench-fanout-1000-receivers.svg)\n")
    drawn = (tmp_path / "bench-fanout-1000-receivers.svg").read_text(encoding="utf-8")
    root = ET.fromstring(drawn)  # noqa: S314 - a file this test just drew
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "bare streams" in labels
    assert "1.00x (reference)" in labels
    assert "0.65x" in labels
    assert "pull / push" in labels
    assert "3.20x" in labels
    assert "broken peer" not in labels  # no ratio, no bar
    assert len(list(root.iter(f"{SVG}rect"))) == 3
    assert charts.charted(text, "fanout", "x limit", images=tmp_path) == text  # redrawn once
    assert (tmp_path / "bench-fanout-1000-receivers.svg").read_text(encoding="utf-8") == drawn


def test_a_table_without_the_column_gets_no_chart(tmp_path: Path) -> None:
    text = TABLE.replace("x limit", "x other")
    assert _charts().charted(text, "fanout", "x limit", images=tmp_path) == text
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_the_committed_charts_are_the_tables_drawn(tmp_path: Path) -> None:
    charts = _charts()
    page = PAGE.read_text(encoding="utf-8")
    shown = re.findall(r"\]\((img/bench-[\w-]+\.svg)\)", page)
    assert len(shown) >= 6  # fan-out, scaling out and the mailbox each show theirs
    for marker, (name, column) in charts.CHARTS.items():
        begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
        inside = page.split(begin, 1)[1].split(end, 1)[0]
        assert charts.charted(inside, name, column, images=tmp_path) == inside, marker
    for image in shown:
        committed = (ROOT / "docs" / image).read_text(encoding="utf-8")
        assert (tmp_path / Path(image).name).read_text(encoding="utf-8") == committed, image
        assert not re.search(r"(?:href|src)=|@import|<script", committed)  # nothing loaded


def test_every_picture_a_page_shows_is_committed_and_loads_nothing() -> None:
    shown = {
        (page.name, image)
        for page in (ROOT / "docs").glob("*.md")
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text(encoding="utf-8"))
    }
    assert ("delivery.md", "img/send-life.svg") in shown
    assert ("clients-behind-nat.md", "img/send-life.svg") in shown
    for page, image in shown:
        assert not image.startswith(("http:", "https:", "//")), f"{page}: {image}"
        svg = (ROOT / "docs" / image).read_text(encoding="utf-8")
        ET.fromstring(svg)  # noqa: S314 - a committed file, well-formed
        assert not re.search(r"(?:href|src)=\"(?!#)|@import|<script", svg), image


def test_a_run_that_writes_no_docs_draws_no_chart_files() -> None:
    # bench scripts run with --no-write pass no directory: the committed chart of the same
    # title stays as it is, though the text still names it
    committed = ROOT / "docs" / "img" / "bench-fanout-1000-receivers.svg"
    before = committed.read_bytes()
    text = _charts().charted(TABLE, "fanout", "x limit", None)
    assert "![1,000 receivers: x limit](img/bench-fanout-1000-receivers.svg)" in text
    assert committed.read_bytes() == before
