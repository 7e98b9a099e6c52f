"""The ``couplings`` command: list, run, reproduce, key=value overrides, exit codes."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import pytest
import torch
from matplotlib.figure import Figure

from couplings import experiments
from couplings.checkpoint import Checkpoint
from couplings.cli import main
from couplings.experiments.base import Compared, Experiment, ExperimentResult, Table
from couplings.experiments.overrides import OverrideError, apply_overrides, parse_value
from couplings.experiments.runner import fingerprint

TINY = ["n_problems=1", "eps_rel=1,0.1", "n=12", "m=9"]


def test_list_names_and_descriptions(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for exp in experiments.all_experiments():  # names are padded to one column width
        assert any(line.split(maxsplit=1) == [exp.name, exp.description] for line in lines)
    assert main(["list", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "eps_rel: tuple[float, ...] = (1.0," in out
    assert "n: int = 256   (quick: 64)" in out


def test_run_writes_metrics_and_one_report(tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["run", "ot-accuracy", "--quick", "--seed", "3", "--out", str(out), "--no-progress",
            *TINY]
    assert main(argv) == 0
    exp_dir = out / "ot-accuracy"
    assert str(exp_dir / "report.md") in capsys.readouterr().out
    assert sorted(p.name for p in exp_dir.iterdir()) == [
        "error_vs_eps.png", "iterations_vs_eps.png", "metrics.json", "report.html", "report.md",
    ]  # one report, figures beside it, no checkpoint left

    record = json.loads((exp_dir / "metrics.json").read_text())
    assert record["experiment"] == "ot-accuracy"
    assert record["seed"] == 3 and record["quick"] is True
    assert record["config"]["n_problems"] == 1
    assert record["config"]["eps_rel"] == [1.0, 0.1]
    assert (record["config"]["n"], record["config"]["m"]) == (12, 9)
    assert record["config"]["dtypes"] == ["float32", "float64"]  # untouched quick default
    assert {"torch", "couplings", "python"} <= set(record["versions"])
    assert record["wall_time_s"] > 0
    assert record["run"]["units"] == 1 * 2 * 2 and record["run"]["resumed_units"] == 0
    metrics = record["metrics"]
    assert metrics["eps_rel"] == [1.0, 0.1]
    assert metrics["all_finite"] is True
    assert len(metrics["solves_by_unit"]) == 4
    assert all(u["n_iter"] > 0 for u in metrics["solves_by_unit"])

    md = (exp_dir / "report.md").read_text()
    assert "| eps / mean C | value rel. err. f32 | value rel. err. f64 | theory bound (rel.) |" \
        in md
    assert md.count("\n| 1 |") == 1 and md.count("\n| 0.1 |") == 1  # one row per eps
    assert "![error_vs_eps](error_vs_eps.png)" in md
    assert "![iterations_vs_eps](iterations_vs_eps.png)" in md
    html = (exp_dir / "report.html").read_text()
    assert '<img src="error_vs_eps.png"' in html and '<img src="iterations_vs_eps.png"' in html
    assert "<th>theory bound (rel.)</th>" in html


def test_run_accepts_overrides_between_options(tmp_path):
    out = tmp_path / "r"
    argv = ["run", "ot-accuracy", "n_problems=1", "--quick", "eps_rel=0.5", "--out", str(out),
            "--no-progress", "n=10", "m=7", "dtypes=float64"]
    assert main(argv) == 0
    config = json.loads((out / "ot-accuracy" / "metrics.json").read_text())["config"]
    assert (config["n_problems"], config["eps_rel"], config["n"], config["m"]) == (1, [0.5], 10, 7)
    assert config["dtypes"] == ["float64"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "ot-accuracy", "--quick", "bogus=1"], "unknown config key 'bogus'"),
        (["run", "ot-accuracy", "--quick", "n=abc"], "cannot set n='abc'"),
        (["run", "ot-accuracy", "--quick", "n=1.5"], "cannot set n='1.5'"),
        (["run", "ot-accuracy", "--quick", "eps_rel=0.1,x"], "cannot set eps_rel='0.1,x'"),
        (["run", "ot-accuracy", "--quick", "dtypes=float16"], "dtypes must be"),
        (["run", "ot-accuracy", "--quick", "n"], "expected key=value"),
        (["run", "no-such-experiment"], "no experiment named 'no-such-experiment'"),
        (["run", "ot-accuracy", "--seed", "-1"], "non-negative"),
        (["run", "ot-accuracy", "--bogus-option"], "unrecognized arguments"),
        (["reproduce", "n=3"], "unrecognized arguments"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_command_lines_exit_2_with_a_message(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_unknown_key_message_lists_the_valid_keys(capsys):
    assert main(["run", "ot-accuracy", "epsilon=0.1"]) == 2
    err = capsys.readouterr().err
    assert "valid keys: n, m, dim, n_problems, eps_rel" in err


# --------------------------------------------------------------------------------------------
# override parsing


@dataclasses.dataclass(frozen=True)
class _Config:
    n: int = 1
    lr: float = 0.1
    verbose: bool = False
    name: str = "x"
    eps: tuple[float, ...] = (1.0,)
    shape: tuple[int, int] = (2, 3)
    sizes: list[int] = dataclasses.field(default_factory=lambda: [1])
    limit: int | None = None
    mode: Literal["fast", "exact"] = "fast"

    def __post_init__(self):
        if self.n < 0:
            raise ValueError("n must be >= 0")


def test_overrides_parse_to_the_field_types():
    cfg = apply_overrides(_Config(), [
        "n=1e3", "lr=2.5e-4", "verbose=Yes", "name=hello world", "eps=0.1, 0.01,1",
        "shape=4,5", "sizes=", "limit=none", "mode=exact",
    ])
    assert cfg == _Config(n=1000, lr=2.5e-4, verbose=True, name="hello world",
                          eps=(0.1, 0.01, 1.0), shape=(4, 5), sizes=[], limit=None,
                          mode="exact")
    assert type(cfg.eps[2]) is float and type(cfg.n) is int
    assert apply_overrides(_Config(), ["limit=7"]).limit == 7
    assert apply_overrides(_Config(), ["n=100_000"]).n == 100_000
    assert apply_overrides(_Config(), ["n=2", "n=3"]).n == 3  # the last one wins
    assert apply_overrides(_Config(), []) == _Config()


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("n=2.5", "'2.5' is not an integer"),
        ("lr=fast", "'fast' is not a number"),
        ("verbose=maybe", "not a bool"),
        ("shape=1,2,3", "expected 2 comma-separated values"),
        ("mode=slow", "not one of ['fast', 'exact']"),
        ("limit=lots", "(or none)"),
        ("n=-1", "invalid _Config: n must be >= 0"),
        ("nn=1", "unknown config key 'nn'"),
        ("=1", "expected key=value"),
    ],
)
def test_bad_overrides_raise_override_error(assignment, message):
    with pytest.raises(OverrideError) as info:
        apply_overrides(_Config(), [assignment])
    assert message in str(info.value)


def test_dashes_stand_for_underscores():
    @dataclasses.dataclass(frozen=True)
    class Config:
        max_iter: int = 10

    assert apply_overrides(Config(), ["max-iter=20"]).max_iter == 20


def test_parse_value_refuses_unsupported_types():
    with pytest.raises(TypeError, match="cannot be set from the command line"):
        parse_value("1", dict)


# --------------------------------------------------------------------------------------------
# reproduce, on a registry of two small fake experiments


@dataclasses.dataclass(frozen=True)
class _ToyConfig:
    size: int = 1000

    @classmethod
    def quick(cls):
        return cls(size=10)


def _toy_run(config, ctx):
    draws = ctx.map_units(range(3), lambda k: torch.rand(1, generator=ctx.generator(k)).item(),
                          key=lambda k: f"draw{k}", desc="toy")
    fig = Figure()
    fig.subplots().plot(draws)
    table = Table("Toy vs paper", ["size", "score"], [[config.size, Compared(0.9, 0.95)]])
    return ExperimentResult({"size": config.size, "draws": draws}, [table], {"draws": fig},
                            headline={"score": 0.9})


def _broken_run(config, ctx):
    raise RuntimeError("this experiment is broken")


TOY = Experiment("toy", "A toy experiment.", _ToyConfig, _toy_run)
BROKEN = Experiment("broken", "An experiment that fails.", _ToyConfig, _broken_run)


def test_reproduce_runs_everything_and_writes_an_index(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiments, "_REGISTRY", {"toy": TOY})
    out = tmp_path / "all"
    assert main(["reproduce", "--quick", "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / "toy" / "metrics.json").read_text())
    assert record["config"] == {"size": 10} and record["quick"] is True
    assert (out / "toy" / "draws.png").exists()
    assert "| size | score (ours) | score (paper) |" in (out / "toy" / "report.md").read_text()
    index_md = (out / "index.md").read_text()
    assert "| [toy](toy/report.md) | A toy experiment. | ok |" in index_md
    assert "score: 0.9" in index_md
    assert '<a href="toy/report.html">toy</a>' in (out / "index.html").read_text()
    assert "toy: ok" in capsys.readouterr().out


def test_reproduce_reports_a_failure_and_carries_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiments, "_REGISTRY", {"broken": BROKEN, "toy": TOY})
    out = tmp_path / "all"
    assert main(["reproduce", "--quick", "--out", str(out), "--no-progress"]) == 1
    index_md = (out / "index.md").read_text()
    assert "1 of 2 experiments completed." in index_md
    assert "FAILED: RuntimeError: this experiment is broken" in index_md
    assert "[toy](toy/report.md)" in index_md
    assert (out / "toy" / "report.html").exists()
    assert not (out / "broken" / "report.md").exists()
    captured = capsys.readouterr()
    assert "broken: FAILED" in captured.out
    assert "this experiment is broken" in captured.err  # the traceback


def test_registry_get_and_register():
    assert experiments.get("ot-accuracy").name == "ot-accuracy"
    assert "ot-accuracy" in experiments.names()
    with pytest.raises(KeyError, match="registered: .*ot-accuracy"):
        experiments.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        experiments.register(experiments.get("ot-accuracy"))
    with pytest.raises(TypeError, match="dataclass"):
        Experiment("x", "d", dict, _toy_run)


def test_run_resumes_from_a_matching_checkpoint_unless_fresh(tmp_path):
    out = tmp_path / "r"
    argv = ["run", "ot-accuracy", "--quick", "--out", str(out), "--no-progress", *TINY]
    assert main(argv) == 0
    metrics_path = out / "ot-accuracy" / "metrics.json"
    solves = json.loads(metrics_path.read_text())["metrics"]["solves_by_unit"]

    # plant a checkpoint of the same run in which one unit has a marked result
    experiment = experiments.get("ot-accuracy")
    config = apply_overrides(experiment.config(quick=True), TINY)
    planted = Checkpoint(out / "ot-accuracy" / "checkpoint.pt",
                         fingerprint=fingerprint(experiment, config, 0))
    planted.record("problem0/float32/eps0", {**solves[0], "value": 123.0})

    assert main(argv) == 0  # resumes: the planted unit is not recomputed
    record = json.loads(metrics_path.read_text())
    assert record["run"]["resumed_units"] == 1
    assert record["metrics"]["solves_by_unit"][0]["value"] == 123.0
    assert not (out / "ot-accuracy" / "checkpoint.pt").exists()

    planted.record("problem0/float32/eps0", {**solves[0], "value": 123.0})
    assert main([*argv, "--fresh"]) == 0  # ignores it
    record = json.loads(metrics_path.read_text())
    assert record["run"]["resumed_units"] == 0
    assert record["metrics"]["solves_by_unit"][0]["value"] == solves[0]["value"]
