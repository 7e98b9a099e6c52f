"""Run experiments: checkpoint, time, write the report, finalise the checkpoint.

:func:`run_experiment` runs one experiment into ``DIR/NAME/`` and :func:`reproduce` runs several
and writes ``DIR/index.md`` and ``DIR/index.html``. Both are what the ``couplings`` command calls.

A run resumes from ``DIR/NAME/checkpoint.pt`` when that checkpoint was written by a run with the
same experiment, config and seed (``fresh=True`` ignores it), and deletes it once the report is
written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint
from ..report import IndexEntry, ReportFiles, to_jsonable, write_index, write_report
from .base import Experiment, ExperimentResult, RunContext

__all__ = ["RunRecord", "fingerprint", "reproduce", "run_experiment"]

CHECKPOINT_NAME = "checkpoint.pt"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What a completed run produced.

    Attributes:
        name: experiment name.
        out_dir: ``DIR/NAME``.
        files: paths of ``metrics.json``, ``report.md``, ``report.html`` and the figures.
        result: the experiment's result.
        wall_time_s: seconds this process spent on the run.
        resumed_units: units of work loaded from a checkpoint instead of computed.
    """

    name: str
    out_dir: Path
    files: ReportFiles
    result: ExperimentResult
    wall_time_s: float
    resumed_units: int


def fingerprint(experiment: Experiment, config: Any, seed: int) -> str:
    """A string identifying a run's settings: experiment name, config and seed (as JSON)."""
    return json.dumps(
        {"experiment": experiment.name, "config": to_jsonable(config), "seed": int(seed)},
        sort_keys=True,
    )


def run_experiment(
    experiment: Experiment,
    config: Any = None,
    *,
    seed: int = 0,
    out: str | os.PathLike = "results",
    quick: bool = False,
    fresh: bool = False,
    show_progress: bool | None = None,
) -> RunRecord:
    """Run ``experiment`` and write its report into ``out/NAME/``.

    Args:
        experiment: the experiment.
        config: an instance of ``experiment.config_type``; ``None`` for the full setting, or the
            quick one when ``quick``.
        seed: non-negative seed of the run.
        out: results directory.
        quick: whether this is the quick setting (recorded in the report; selects the config
            when ``config`` is ``None``).
        fresh: ignore an existing checkpoint.
        show_progress: force progress bars on/off; ``None`` shows them on a terminal.

    Returns:
        A :class:`RunRecord`.

    Raises:
        TypeError: if ``config`` is not an ``experiment.config_type``, or the run does not
            return an :class:`ExperimentResult`.
    """
    if config is None:
        config = experiment.config(quick=quick)
    if not isinstance(config, experiment.config_type):
        raise TypeError(
            f"experiment {experiment.name!r} needs a {experiment.config_type.__name__} config, "
            f"got {type(config).__name__}."
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    out_dir = Path(out) / experiment.name
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(
        out_dir / CHECKPOINT_NAME, fingerprint=fingerprint(experiment, config, seed), fresh=fresh
    )
    if checkpoint.resumed_units:
        print(
            f"couplings: {experiment.name}: resuming from {checkpoint.path} "
            f"({checkpoint.resumed_units} units done).",
            file=sys.stderr,
        )
    ctx = RunContext(seed=seed, out_dir=out_dir, checkpoint=checkpoint,
                     show_progress=show_progress)
    start = time.perf_counter()
    result = experiment.run(config, ctx)
    if not isinstance(result, ExperimentResult):
        raise TypeError(
            f"experiment {experiment.name!r} returned {type(result).__name__}, expected an "
            "ExperimentResult."
        )
    checkpoint.flush()
    wall_time_s = time.perf_counter() - start
    files = write_report(
        out_dir,
        name=experiment.name,
        description=experiment.description,
        result=result,
        config=config,
        seed=seed,
        quick=quick,
        wall_time_s=wall_time_s,
        run_info={
            "resumed_units": checkpoint.resumed_units,
            "units": len(checkpoint.completed),
            "command": " ".join(sys.argv),
        },
    )
    checkpoint.finalize()
    return RunRecord(experiment.name, out_dir, files, result, wall_time_s,
                     checkpoint.resumed_units)


def reproduce(
    experiments: Sequence[Experiment],
    *,
    out: str | os.PathLike = "results",
    quick: bool = False,
    seed: int = 0,
    fresh: bool = False,
    show_progress: bool | None = None,
) -> list[IndexEntry]:
    """Run every experiment (a failure does not stop the others) and write the index.

    Returns:
        One :class:`~couplings.report.IndexEntry` per experiment, in order; ``out/index.md`` and
        ``out/index.html`` link their reports.
    """
    entries = []
    for experiment in experiments:
        print(f"couplings: running {experiment.name} ...", file=sys.stderr)
        start = time.perf_counter()
        try:
            record = run_experiment(experiment, seed=seed, out=out, quick=quick, fresh=fresh,
                                    show_progress=show_progress)
        except Exception as exc:
            traceback.print_exc()
            entries.append(IndexEntry(
                experiment.name, experiment.description, ok=False,
                wall_time_s=time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}",
            ))
            continue
        entries.append(IndexEntry(
            experiment.name, experiment.description, ok=True,
            wall_time_s=record.wall_time_s, headline=record.result.headline,
        ))
    write_index(out, entries)
    return entries
