"""The report writer: metrics.json, report.md, report.html, figures, index."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from couplings.experiments.base import Compared, ExperimentResult, Table
from couplings.report import (
    IndexEntry,
    format_cell,
    table_html,
    table_markdown,
    to_jsonable,
    write_index,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _figure():
    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.plot([1, 2, 3], [3, 1, 2])
    return fig


@dataclasses.dataclass(frozen=True)
class _Config:
    n: int = 3
    eps: tuple[float, ...] = (0.1, 0.01)


def _result():
    paper = Table(
        "Accuracy (%)",
        ["method", "MNIST", "note"],
        [["ours", Compared(98.1, 97.9), "x|y"], ["baseline", Compared(91.0, None), None]],
        caption="Numbers of the paper beside ours.",
    )
    plain = Table("Errors", ["eps", "error"], [[0.1, 0.0123], [0.01, float("nan")]])
    return ExperimentResult(
        metrics={"error": torch.tensor([0.5, 0.25]), "count": np.int64(3), "bad": float("inf"),
                 "nested": {"ok": True, "pair": (1, 2.5)}},
        tables=[paper, plain],
        figures={"loss curve": _figure()},
        notes=["First paragraph <with> markup-like text."],
        headline={"accuracy": 98.1},
    )


def test_format_cell():
    assert format_cell(0.012345) == "0.0123"
    assert format_cell(1234567.0) == "1.23e+06"
    assert format_cell(0.00012) == "1.20e-04"
    assert format_cell(0.0) == "0"
    assert format_cell(7) == "7"
    assert format_cell(np.int64(7)) == "7"
    assert format_cell(True) == "yes"
    assert format_cell(None) == "–"
    assert format_cell(float("nan")) == "nan"
    assert format_cell("text") == "text"


def test_to_jsonable_is_strict_json():
    data = to_jsonable({"t": torch.tensor([1.0, float("nan")]), "a": np.arange(2),
                        "s": np.float32(0.5), "tup": (1, 2), "cfg": _Config(),
                        "inf": -math.inf, "dtype": torch.float32})
    text = json.dumps(data, allow_nan=False)  # raises on NaN/inf
    assert json.loads(text) == {"t": [1.0, "NaN"], "a": [0, 1], "s": 0.5, "tup": [1, 2],
                                "cfg": {"n": 3, "eps": [0.1, 0.01]}, "inf": "-Infinity",
                                "dtype": "float32"}
    with pytest.raises(TypeError, match="JSON"):
        to_jsonable(object())


def test_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="row 1 has 1 cells but there are 2 columns"):
        Table("t", ["a", "b"], [[1, 2], [3]])


def test_compared_cells_render_side_by_side():
    table = _result().tables[0]
    md = table_markdown(table)
    lines = md.splitlines()
    assert lines[0] == "### Accuracy (%)"
    assert lines[2] == "| method | MNIST (ours) | MNIST (paper) | note |"
    assert lines[4] == "| ours | 98.1 | 97.9 | x\\|y |"  # pipes escaped
    assert lines[5] == "| baseline | 91 | – | – |"
    assert "Numbers of the paper beside ours." in md

    custom = Table("bound", ["eps", "gap"], [[0.1, Compared(0.05, 0.07)]],
                   reference_label="theory bound")
    assert "| eps | gap (ours) | gap (theory bound) |" in table_markdown(custom)
    html = table_html(custom)
    assert '<th class="ref">gap (theory bound)</th>' in html
    assert '<td class="ref">0.07</td>' in html


def test_write_report_files(tmp_path):
    files = write_report(tmp_path / "demo", name="demo", description="A demo run.",
                         result=_result(), config=_Config(), seed=7, quick=True,
                         wall_time_s=1.5, run_info={"resumed_units": 0})
    out = tmp_path / "demo"
    assert files.metrics == out / "metrics.json"
    assert [p.name for p in files.figures] == ["loss_curve.png"]
    png = out / "loss_curve.png"
    assert png.read_bytes()[:8] == PNG_MAGIC

    record = json.loads(files.metrics.read_text())
    assert record["experiment"] == "demo"
    assert record["seed"] == 7 and record["quick"] is True
    assert record["config"] == {"n": 3, "eps": [0.1, 0.01]}
    assert record["metrics"]["error"] == [0.5, 0.25]
    assert record["metrics"]["count"] == 3
    assert record["metrics"]["bad"] == "Infinity"
    assert record["metrics"]["nested"] == {"ok": True, "pair": [1, 2.5]}
    assert record["versions"]["torch"] == torch.__version__
    assert "couplings" in record["versions"]
    assert record["wall_time_s"] == 1.5
    assert record["run"] == {"resumed_units": 0}
    assert record["tables"][0]["rows"][0][1] == {"ours": 98.1, "reference": 97.9}
    assert record["figures"] == ["loss_curve.png"]

    md = files.markdown.read_text()
    assert md.startswith("# demo\n")
    assert "| method | MNIST (ours) | MNIST (paper) | note |" in md
    assert "| 0.01 | nan |" in md
    assert "![loss curve](loss_curve.png)" in md
    assert "First paragraph <with> markup-like text." in md
    assert '"eps": [' in md  # the config

    html = files.html.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert '<img src="loss_curve.png" alt="loss curve">' in html
    assert "First paragraph &lt;with&gt; markup-like text." in html  # escaped
    assert "<th>MNIST (ours)</th>" in html
    assert '<a href="metrics.json">' in html


def test_write_report_copies_a_png_path(tmp_path):
    source = tmp_path / "made_elsewhere.png"
    _figure().savefig(source)
    result = ExperimentResult({"x": 1}, figures={"external": source})
    files = write_report(tmp_path / "exp", name="exp", description="d", result=result,
                         config={"n": 1}, seed=0)
    assert (tmp_path / "exp" / "made_elsewhere.png").read_bytes()[:8] == PNG_MAGIC
    assert "![external](made_elsewhere.png)" in files.markdown.read_text()

    missing = ExperimentResult({"x": 1}, figures={"gone": tmp_path / "nope.png"})
    with pytest.raises(FileNotFoundError, match="gone"):
        write_report(tmp_path / "exp2", name="exp2", description="d", result=missing,
                     config={}, seed=0)


def test_write_index_links_reports(tmp_path):
    entries = [
        IndexEntry("good", "works", ok=True, wall_time_s=2.0, headline={"criterion": True}),
        IndexEntry("bad", "breaks", ok=False, wall_time_s=0.1, error="RuntimeError: boom"),
    ]
    md_path, html_path = write_index(tmp_path, entries)
    md = md_path.read_text()
    assert "1 of 2 experiments completed." in md
    assert "| [good](good/report.md) | works | ok | 2 | criterion: yes |" in md
    assert "| bad | breaks | FAILED: RuntimeError: boom |" in md
    assert "bad/report.md" not in md
    html = html_path.read_text()
    assert '<a href="good/report.html">good</a>' in html
    assert "bad/report.html" not in html
    assert "FAILED: RuntimeError: boom" in html
