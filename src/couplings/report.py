"""Report writer: ``metrics.json``, ``report.md`` and ``report.html`` for one experiment run,
and an index of several runs.

The layout of ``DIR/NAME/``::

    metrics.json   metrics, config, seed, versions, wall time, tables (machine-readable)
    report.md      the same results for people: notes, tables, figures, config
    report.html    the same, standalone, figures linked as <img src="NAME.png">
    *.png          one file per figure

Tables render :class:`~couplings.experiments.base.Compared` cells as two adjacent columns, ours
and the reference (a paper's number or a theory bound), so that they can be read side by side.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import atomic_write, atomic_write_text
from .experiments.base import Compared, ExperimentResult, Table

__all__ = [
    "IndexEntry",
    "ReportFiles",
    "format_cell",
    "to_jsonable",
    "versions",
    "write_index",
    "write_report",
]

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 72em; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
.ref { background: #eef4fb; }
.caption { color: #555; font-size: 0.9em; margin-bottom: 1.5em; }
img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
.fail { color: #b00; } .ok { color: #070; }
"""


@dataclasses.dataclass(frozen=True)
class ReportFiles:
    """Paths written by :func:`write_report`."""

    metrics: Path
    markdown: Path
    html: Path
    figures: tuple[Path, ...]


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    """One experiment's line in the index written by :func:`write_index`.

    Attributes:
        name: experiment name; its report is ``NAME/report.md`` relative to the index.
        description: one line.
        ok: whether the run completed.
        wall_time_s: seconds the run took.
        headline: key results (from :attr:`ExperimentResult.headline`).
        error: the error message of a failed run.
    """

    name: str
    description: str
    ok: bool
    wall_time_s: float | None = None
    headline: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str = ""


# --------------------------------------------------------------------------------------------
# values


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` to JSON-able data.

    Tensors and arrays become (nested) lists, NumPy scalars Python numbers, tuples lists,
    dataclasses dicts, paths strings; non-finite floats become the strings ``"NaN"``,
    ``"Infinity"`` and ``"-Infinity"`` so that the file is strict JSON.
    """
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, torch.Tensor | np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Compared):
        return {"ours": to_jsonable(obj.ours), "reference": to_jsonable(obj.reference)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    raise TypeError(f"cannot write a {type(obj).__name__} to JSON: {obj!r}")


def format_cell(value: Any) -> str:
    """Text of a table cell: numbers to 3 significant digits, ``None`` as a dash.

    Example:
        >>> [format_cell(v) for v in (0.012345, 1234567.0, 3, True, None, float("nan"))]
        ['0.0123', '1.23e+06', '3', 'yes', '–', 'nan']
    """
    if value is None:
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        value = float(value)
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.3g}"
    return str(value)


def _expand(table: Table) -> tuple[list[str], list[bool], list[list[str]]]:
    """Header, 'is a reference column' flags and text rows, with Compared columns split."""
    compared = [any(isinstance(row[j], Compared) for row in table.rows)
                for j in range(len(table.columns))]
    header: list[str] = []
    is_ref: list[bool] = []
    for name, split in zip(table.columns, compared, strict=True):
        if split:
            header += [f"{name} (ours)", f"{name} ({table.reference_label})"]
            is_ref += [False, True]
        else:
            header.append(name)
            is_ref.append(False)
    rows = []
    for row in table.rows:
        cells: list[str] = []
        for value, split in zip(row, compared, strict=True):
            if split:
                pair = value if isinstance(value, Compared) else Compared(value, None)
                cells += [format_cell(pair.ours), format_cell(pair.reference)]
            else:
                cells.append(format_cell(value))
        rows.append(cells)
    return header, is_ref, rows


# --------------------------------------------------------------------------------------------
# markdown and html


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> str:
    """A GitHub-flavoured markdown table, titled, with its caption."""
    header, _, rows = _expand(table)
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    if table.caption:
        lines += ["", table.caption]
    return "\n".join(lines) + "\n"


def table_html(table: Table) -> str:
    """An HTML table, titled, with its caption; reference columns are shaded."""
    header, is_ref, rows = _expand(table)
    e = html.escape

    def cls(j):
        return ' class="ref"' if is_ref[j] else ""

    out = [f"<h3>{e(table.title)}</h3>", "<table>", "<tr>"]
    out += [f"<th{cls(j)}>{e(h)}</th>" for j, h in enumerate(header)]
    out.append("</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls(j)}>{e(c)}</td>" for j, c in enumerate(row))
                   + "</tr>")
    out.append("</table>")
    if table.caption:
        out.append(f'<p class="caption">{e(table.caption)}</p>')
    return "\n".join(out) + "\n"


def _html_page(title: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------------------------
# files


def versions() -> dict[str, str]:
    """Versions of Python, couplings, torch, NumPy and POT, and the platform."""
    try:
        couplings_version = importlib.metadata.version("couplings")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        couplings_version = "unknown"
    out = {
        "couplings": couplings_version,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import ot

        out["pot"] = ot.__version__
    except ImportError:
        pass
    return out


def _figure_file_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "figure"
    return stem if stem.lower().endswith(".png") else f"{stem}.png"


def _save_figures(figures: dict[str, Any], out_dir: Path) -> list[tuple[str, Path]]:
    """Save matplotlib figures as PNG (closing them), copy given image files; (name, path)."""
    saved = []
    for name, fig in figures.items():
        target = out_dir / _figure_file_name(name)
        if hasattr(fig, "savefig"):
            atomic_write(target, lambda f, fig=fig: fig.savefig(f, format="png", dpi=110))
            if "matplotlib.pyplot" in sys.modules:  # release figures made with pyplot
                sys.modules["matplotlib.pyplot"].close(fig)
        else:
            source = Path(fig)
            if not source.is_file():
                raise FileNotFoundError(f"figure {name!r}: no image file at {source}.")
            target = out_dir / source.name
            if source.resolve() != target.resolve():
                shutil.copyfile(source, target)
        saved.append((name, target))
    return saved


def write_report(
    out_dir: str | os.PathLike,
    *,
    name: str,
    description: str,
    result: ExperimentResult,
    config: Any,
    seed: int,
    quick: bool = False,
    wall_time_s: float | None = None,
    run_info: dict[str, Any] | None = None,
) -> ReportFiles:
    """Write ``metrics.json``, ``report.md``, ``report.html`` and the figures into ``out_dir``.

    Args:
        out_dir: the experiment's directory ``DIR/NAME`` (created if needed).
        name: experiment name.
        description: one line.
        result: what the run returned.
        config: the config dataclass the run used.
        seed: the run's seed.
        quick: whether the quick setting was used.
        wall_time_s: seconds the run took.
        run_info: extra facts about the run (e.g. units resumed from a checkpoint).

    Returns:
        The paths written.

    Example:
        >>> import tempfile
        >>> from couplings.experiments.base import ExperimentResult, Table
        >>> result = ExperimentResult({"error": 0.01}, [Table("t", ["eps", "error"], [[1, 0.01]])])
        >>> files = write_report(tempfile.mkdtemp(), name="demo", description="a demo",
        ...                      result=result, config={"n": 3}, seed=0)
        >>> "| 1 | 0.01 |" in files.markdown.read_text()
        True
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = _save_figures(result.figures, out_dir)
    config_json = to_jsonable(config)
    record = {
        "experiment": name,
        "description": description,
        "seed": seed,
        "quick": quick,
        "config": config_json,
        "metrics": to_jsonable(result.metrics),
        "headline": to_jsonable(result.headline),
        "tables": [to_jsonable(t) for t in result.tables],
        "figures": [p.name for _, p in figures],
        "versions": versions(),
        "wall_time_s": wall_time_s,
        "run": to_jsonable(run_info or {}),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    metrics_path = out_dir / "metrics.json"
    atomic_write_text(metrics_path, json.dumps(record, indent=2, allow_nan=False) + "\n")

    facts = [f"seed {seed}", "quick setting" if quick else "full setting"]
    if wall_time_s is not None:
        facts.append(f"wall time {wall_time_s:.1f} s")
    v = record["versions"]
    facts.append(f"couplings {v['couplings']}, torch {v['torch']}")
    config_text = json.dumps(config_json, indent=2, allow_nan=False)

    md = [f"# {name}", "", description, "", "*" + "; ".join(facts) + ".*", ""]
    md += [p + "\n" for p in result.notes]
    if result.tables:
        md += ["## Tables", ""] + [table_markdown(t) for t in result.tables]
    if figures:
        md += ["## Figures", ""] + [f"![{n}]({p.name})\n" for n, p in figures]
    md += ["## Configuration", "", "```json", config_text, "```", "",
           "All numbers: [metrics.json](metrics.json).", ""]
    markdown_path = out_dir / "report.md"
    atomic_write_text(markdown_path, "\n".join(md))

    e = html.escape
    body = [f"<h1>{e(name)}</h1>", f"<p>{e(description)}</p>",
            f"<p><em>{e('; '.join(facts))}.</em></p>"]
    body += [f"<p>{e(p)}</p>" for p in result.notes]
    if result.tables:
        body += ["<h2>Tables</h2>"] + [table_html(t) for t in result.tables]
    if figures:
        body.append("<h2>Figures</h2>")
        body += [
            f'<figure><img src="{e(p.name)}" alt="{e(n)}"><figcaption>{e(n)}</figcaption>'
            "</figure>"
            for n, p in figures
        ]
    body += ["<h2>Configuration</h2>", f"<pre>{e(config_text)}</pre>",
             '<p>All numbers: <a href="metrics.json">metrics.json</a>.</p>']
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, _html_page(f"couplings: {name}", body))
    return ReportFiles(metrics_path, markdown_path, html_path, tuple(p for _, p in figures))


def _headline_text(headline: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {format_cell(v)}" for k, v in headline.items())


def write_index(out_dir: str | os.PathLike, entries: Sequence[IndexEntry]) -> tuple[Path, Path]:
    """Write ``index.md`` and ``index.html`` in ``out_dir``, linking each ``NAME/report.*``.

    Returns:
        The paths of ``index.md`` and ``index.html``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_ok = sum(e.ok for e in entries)
    summary = f"{n_ok} of {len(entries)} experiments completed."

    md = ["# couplings: reproduced experiments", "", summary, "",
          "| experiment | description | status | wall time (s) | key results |",
          "|:---|:---|:---|---:|:---|"]
    for entry in entries:
        status = "ok" if entry.ok else f"FAILED: {entry.error}"
        link = f"[{entry.name}]({entry.name}/report.md)" if entry.ok else entry.name
        md.append(
            f"| {link} | {_md_escape(entry.description)} | "
            f"{_md_escape(status)} | {format_cell(entry.wall_time_s)} | "
            f"{_md_escape(_headline_text(entry.headline))} |"
        )
    md_path = out_dir / "index.md"
    atomic_write_text(md_path, "\n".join(md) + "\n")

    e = html.escape
    rows = ["<tr><th>experiment</th><th>description</th><th>status</th>"
            "<th>wall time (s)</th><th>key results</th></tr>"]
    for entry in entries:
        status = ('<span class="ok">ok</span>' if entry.ok
                  else f'<span class="fail">FAILED: {e(entry.error)}</span>')
        link = (f'<a href="{e(entry.name)}/report.html">{e(entry.name)}</a>' if entry.ok
                else e(entry.name))
        rows.append(
            f"<tr><td>{link}</td>"
            f"<td>{e(entry.description)}</td><td>{status}</td>"
            f"<td>{e(format_cell(entry.wall_time_s))}</td>"
            f"<td>{e(_headline_text(entry.headline))}</td></tr>"
        )
    body = ["<h1>couplings: reproduced experiments</h1>", f"<p>{e(summary)}</p>",
            "<table>", *rows, "</table>"]
    html_path = out_dir / "index.html"
    atomic_write_text(html_path, _html_page("couplings: reproduced experiments", body))
    return md_path, html_path
