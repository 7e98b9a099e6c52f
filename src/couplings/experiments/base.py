"""What an experiment is, what it receives and what it returns.

An :class:`Experiment` is a name, a one-line description, a frozen config dataclass (its defaults
are the full setting; its ``quick()`` classmethod the setting for ``--quick``) and a function
``run(config, ctx) -> ExperimentResult``. The :class:`RunContext` ``ctx`` carries the seed, the
output directory, a checkpoint of completed units of work and a progress-bar factory;
:meth:`RunContext.map_units` combines the three for the common case of a list of independent
units. The :class:`ExperimentResult` holds JSON-able metrics, tables (with a reference column,
such as a paper's number, beside ours) and matplotlib figures; :mod:`couplings.report` turns it
into ``metrics.json``, ``report.md`` and ``report.html``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..checkpoint import Checkpoint

__all__ = [
    "Compared",
    "Experiment",
    "ExperimentResult",
    "RunContext",
    "Table",
    "derive_seed",
    "torch_threads",
]

T = TypeVar("T")
R = TypeVar("R")


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed determined by ``(seed, *keys)`` alone, e.g. ``(run seed, unit index)``.

    Seeding each unit of work this way (rather than drawing from one global stream) makes its
    result independent of which units ran before it in the same process, so a resumed run
    reproduces an uninterrupted one exactly.

    Example:
        >>> derive_seed(0, 3) == derive_seed(0, 3) != derive_seed(0, 4)
        True
    """
    words = [int(seed), *(int(k) for k in keys)]
    if any(w < 0 for w in words):
        raise ValueError(f"seeds and unit keys must be non-negative integers, got {words}.")
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (``None``: unchanged), then restore.

    Small problems (a few thousand entries per operation) run fastest on one thread, and much
    slower on several when other processes load the machine.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass(frozen=True)
class Compared:
    """A table cell holding our number and a reference number (a paper's, a theory bound).

    The report renders a column of such cells as two adjacent columns, ``ours`` and the table's
    ``reference_label``.
    """

    ours: Any
    reference: Any = None


@dataclasses.dataclass
class Table:
    """A table of the report.

    Args:
        title: heading of the table.
        columns: column names, ``k`` of them.
        rows: list of rows, each with ``k`` cells: numbers, strings, bools, ``None`` (rendered
            as a dash) or :class:`Compared` pairs.
        caption: a sentence under the table saying what the numbers are.
        reference_label: name of the reference side of :class:`Compared` cells, e.g.
            ``"paper"`` or ``"theory bound"``.

    Example:
        >>> Table("Accuracy", ["method", "MNIST"], [["ours", Compared(0.98, 0.97)]]).columns
        ['method', 'MNIST']
    """

    title: str
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    reference_label: str = "paper"

    def __post_init__(self):
        self.columns = [str(c) for c in self.columns]
        self.rows = [list(r) for r in self.rows]
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"table {self.title!r}: row {i} has {len(row)} cells but there are "
                    f"{len(self.columns)} columns {self.columns}."
                )


@dataclasses.dataclass
class ExperimentResult:
    """What :attr:`Experiment.run` returns.

    Attributes:
        metrics: JSON-able dict of the numbers the run measured (nested dicts, lists, numbers,
            strings, bools). Keys of timings end in ``time_s``; everything else is a
            deterministic function of the config and the seed.
        tables: tables of the report, in order.
        figures: name -> matplotlib figure (saved as ``name.png``) or path of a saved PNG.
        notes: paragraphs of plain text for the report (how to read the results, the settings).
        headline: a few key results for the index of all experiments, e.g.
            ``{"criterion holds": True}``.
    """

    metrics: dict[str, Any]
    tables: list[Table] = dataclasses.field(default_factory=list)
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    headline: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunContext:
    """Everything a run receives besides its config.

    Attributes:
        seed: the run's seed; derive per-unit seeds with :meth:`unit_seed`.
        out_dir: the experiment's output directory (``DIR/NAME``), which exists.
        checkpoint: the completed units of work (see :class:`~couplings.checkpoint.Checkpoint`).
        show_progress: ``True``/``False`` to force progress bars on or off; ``None`` shows them
            when stderr is a terminal.
    """

    seed: int
    out_dir: Path
    checkpoint: Checkpoint
    show_progress: bool | None = None

    def progress(
        self, iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = ""
    ):
        """A tqdm progress bar on stderr around ``iterable``."""
        from tqdm.auto import tqdm

        disable = None if self.show_progress is None else not self.show_progress
        return tqdm(
            iterable, total=total, desc=desc, file=sys.stderr, disable=disable,
            dynamic_ncols=True, leave=False,
        )

    def unit_seed(self, *keys: int) -> int:
        """Seed of a unit of work: a function of ``(self.seed, *keys)`` only."""
        return derive_seed(self.seed, *keys)

    def generator(self, *keys: int) -> torch.Generator:
        """A CPU :class:`torch.Generator` seeded by :meth:`unit_seed`."""
        return torch.Generator().manual_seed(self.unit_seed(*keys))

    def map_units(
        self,
        units: Sequence[T],
        work: Callable[[T], R],
        *,
        key: Callable[[T], str] = str,
        desc: str = "",
    ) -> list[R]:
        """Run ``work`` on each unit, skipping units whose result the checkpoint already holds.

        Each result is stored in the checkpoint as soon as it is computed, so a killed run
        resumes after its last completed unit. ``work`` must be deterministic given the unit
        (seed it with :meth:`generator` from the unit's index, not from a global stream) and
        return plain data (numbers, strings, bools, tensors, lists and dicts of those).

        Args:
            units: the units of work, e.g. ``[(problem, dtype, eps_index), ...]``.
            work: computes the result of one unit.
            key: a string naming a unit, unique within the run.
            desc: progress-bar label.

        Returns:
            The results, in the order of ``units``.
        """
        keys = [key(u) for u in units]
        if len(set(keys)) != len(keys):
            raise ValueError(f"unit keys must be unique, got duplicates among {keys[:10]}...")
        results: list[R] = []
        todo = sum(k not in self.checkpoint for k in keys)
        with self.progress(total=len(units), desc=desc) as bar:
            bar.update(len(units) - todo)
            for unit, k in zip(units, keys, strict=True):
                if k in self.checkpoint:
                    results.append(self.checkpoint.get(k))
                    continue
                result = work(unit)
                self.checkpoint.record(k, result)
                results.append(result)
                bar.update(1)
        self.checkpoint.flush()
        return results


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A registered experiment.

    Args:
        name: command-line name, e.g. ``"ot-accuracy"``.
        description: one line for ``couplings list``.
        config_type: frozen dataclass of settings; its defaults are the full setting and its
            ``quick()`` classmethod (if any) the ``--quick`` setting.
        run: ``run(config, ctx) -> ExperimentResult``.
    """

    name: str
    description: str
    config_type: type
    run: Callable[[Any, RunContext], ExperimentResult]

    def __post_init__(self):
        if not dataclasses.is_dataclass(self.config_type):
            raise TypeError(
                f"experiment {self.name!r}: config_type must be a dataclass, got "
                f"{self.config_type!r}."
            )
        if not self.name or any(c.isspace() or c in "/\\" for c in self.name):
            raise ValueError(f"experiment name must be non-empty without spaces or slashes, "
                             f"got {self.name!r}.")

    def config(self, *, quick: bool = False) -> Any:
        """The full setting, or the quick one when ``quick`` (the full one if there is none)."""
        if quick and hasattr(self.config_type, "quick"):
            return self.config_type.quick()
        return self.config_type()
