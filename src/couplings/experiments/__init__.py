"""The registry of experiments run by the ``couplings`` command.

An experiment module defines an :class:`~couplings.experiments.base.Experiment` named
``EXPERIMENT``; it is registered here, at the end of this file. Run one with
:func:`couplings.experiments.runner.run_experiment`, or from the shell with
``couplings run NAME``.

Example:
    >>> from couplings import experiments
    >>> "ot-accuracy" in experiments.names()
    True
    >>> experiments.get("ot-accuracy").config(quick=True).n
    64
"""

from __future__ import annotations

import importlib

from .base import Compared, Experiment, ExperimentResult, RunContext, Table, derive_seed

__all__ = [
    "Compared",
    "Experiment",
    "ExperimentResult",
    "RunContext",
    "Table",
    "all_experiments",
    "derive_seed",
    "get",
    "names",
    "register",
]

_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment, *, replace: bool = False) -> Experiment:
    """Add ``experiment`` to the registry and return it.

    Raises:
        ValueError: if the name is taken (unless ``replace``).
    """
    if not isinstance(experiment, Experiment):
        raise TypeError(f"register needs an Experiment, got {type(experiment).__name__}.")
    if experiment.name in _REGISTRY and not replace:
        raise ValueError(f"an experiment named {experiment.name!r} is already registered.")
    _REGISTRY[experiment.name] = experiment
    return experiment


def get(name: str) -> Experiment:
    """The experiment called ``name``.

    Raises:
        KeyError: naming the registered experiments, if there is none of that name.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"no experiment named {name!r}; registered: {', '.join(names()) or 'none'}."
        ) from None


def names() -> list[str]:
    """Names of the registered experiments, in registration order."""
    return list(_REGISTRY)


def all_experiments() -> list[Experiment]:
    """The registered experiments, in registration order."""
    return list(_REGISTRY.values())


# the experiment modules, one a line, in the order of `couplings list`; each defines EXPERIMENT
_MODULES = (
    "ot_accuracy",
    "sorting",
    "matching_bd",
    "celegans",
    "jigsaw",
    "sst_variance",
    "sst_subset",
    "sst_listops",
    "sst_graph_layout",
    "otda_moons",
    "otda_digits",
    "seq2seq_ot",
    "monge_map",
)
for _name in _MODULES:
    register(importlib.import_module(f".{_name}", __name__).EXPERIMENT)
del _name
