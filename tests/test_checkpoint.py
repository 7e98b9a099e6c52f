"""Atomic checkpoints, resumable units of work, and a run killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from couplings import checkpoint as ckpt_module
from couplings.checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
)
from couplings.experiments import get
from couplings.experiments.base import RunContext, derive_seed
from couplings.experiments.overrides import apply_overrides
from couplings.experiments.runner import run_experiment


def _state():
    return {
        "step": 3,
        "loss": [0.5, 0.25, float("nan")],
        "weights": torch.arange(6, dtype=torch.float64).reshape(2, 3),
        "nested": {"name": "sinkhorn", 1: (True, None)},
    }


def _assert_same_state(loaded, expected):
    assert loaded["step"] == expected["step"]
    assert loaded["loss"][:2] == expected["loss"][:2] and np.isnan(loaded["loss"][2])
    assert torch.equal(loaded["weights"], expected["weights"])
    assert loaded["weights"].dtype == torch.float64
    assert loaded["nested"] == expected["nested"]


def test_round_trip_loads_with_weights_only(tmp_path):
    path = tmp_path / "sub" / "checkpoint.pt"
    save_checkpoint(_state(), path)
    _assert_same_state(torch.load(path, weights_only=True), _state())
    _assert_same_state(load_checkpoint(path), _state())
    assert load_checkpoint(tmp_path / "missing.pt") is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # no temp left


@pytest.mark.parametrize("bad", [np.zeros(2), {"x": np.float64(1.0)}, [object()],
                                 {(1, 2): torch.zeros(1)}])
def test_save_refuses_state_that_weights_only_cannot_load(tmp_path, bad):
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(TypeError, match="checkpoint"):
        save_checkpoint({"state": bad}, path)
    assert not path.exists()


def test_failure_while_writing_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(), path)
    before = path.read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10)  # a torn write...
        raise OSError("disk full")  # ...then the failure

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 4, "loss": []}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    _assert_same_state(load_checkpoint(path), _state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_failure_at_the_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1}, path)

    def no_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(ckpt_module.os, "replace", no_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_atomic_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_text(tmp_path / "report.md", "hello")
    assert (tmp_path / "report.md").read_text() == "hello"
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o666 & ~umask


def test_corrupt_checkpoint_is_an_error_not_silently_ignored(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="--fresh"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="--fresh"):
        Checkpoint(path, fingerprint="x")
    assert Checkpoint(path, fingerprint="x", fresh=True).completed == {}


def test_checkpoint_resume_fingerprint_fresh_and_finalize(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    stale = tmp_path / ".checkpoint.pt.abc123.tmp"  # left by a process killed mid-write
    stale.write_bytes(b"partial")
    first = Checkpoint(path, fingerprint="config A")
    assert not stale.exists()
    assert first.completed == {} and first.resumed_units == 0
    first.record("u0", {"value": 1.0})
    first.record("u1", {"value": 2.0})

    resumed = Checkpoint(path, fingerprint="config A")
    assert resumed.completed == {"u0": {"value": 1.0}, "u1": {"value": 2.0}}
    assert resumed.resumed_units == 2 and "u1" in resumed and "u2" not in resumed

    assert Checkpoint(path, fingerprint="config B").completed == {}
    assert "other settings" in capsys.readouterr().err
    assert Checkpoint(path, fingerprint="config A", fresh=True).completed == {}

    with pytest.raises(TypeError, match="unit 'u2'"):
        resumed.record("u2", {"value": np.float32(3.0)})
    resumed.finalize()
    assert not path.exists()


def test_save_every_s_throttles_writes_and_flush_forces_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ckpt = Checkpoint(path, fingerprint="f", save_every_s=3600.0)
    ckpt.record("a", 1)  # the first record always saves
    ckpt.record("b", 2)  # within the interval: kept in memory only
    assert load_checkpoint(path)["units"] == {"a": 1}
    ckpt.flush()
    assert load_checkpoint(path)["units"] == {"a": 1, "b": 2}


def test_derive_seed_depends_only_on_its_arguments():
    seeds = {derive_seed(s, k) for s in range(3) for k in range(50)}
    assert len(seeds) == 150
    assert derive_seed(5, 7) == derive_seed(5, 7)
    assert 0 <= derive_seed(2**40, 3) < 2**63
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1)


def test_map_units_skips_completed_units_and_shows_progress(tmp_path, capsys):
    calls = []

    def work(unit):
        calls.append(unit)
        gen = torch.Generator().manual_seed(derive_seed(0, unit))
        return {"unit": unit, "draw": float(torch.rand(1, generator=gen))}

    def context(show_progress=False):
        ckpt = Checkpoint(tmp_path / "checkpoint.pt", fingerprint="f")
        return RunContext(seed=0, out_dir=tmp_path, checkpoint=ckpt, show_progress=show_progress)

    full = context().map_units(range(5), work, key=lambda u: f"u{u}")
    assert calls == [0, 1, 2, 3, 4]
    calls.clear()
    (tmp_path / "checkpoint.pt").unlink()

    partial = context()
    partial.map_units([0, 1], work, key=lambda u: f"u{u}")  # "killed" after two units
    calls.clear()
    resumed = context(show_progress=True).map_units(range(5), work, key=lambda u: f"u{u}",
                                                    desc="demo units")
    assert calls == [2, 3, 4]
    assert resumed == full
    err = capsys.readouterr().err
    assert "demo units:" in err and "/5 [" in err  # a tqdm bar on stderr

    with pytest.raises(ValueError, match="unique"):
        context().map_units([1, 1], work, key=str)


# --------------------------------------------------------------------------------------------
# the kill test: SIGKILL a real run, resume it, compare with an uninterrupted run

KILL_OVERRIDES = ["n_problems=4", "eps_rel=0.003,0.001"]
KILL_UNITS = 4 * 2 * 2  # problems x dtypes x eps


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if not k.endswith("time_s")}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _units_in(path: Path) -> int:
    try:
        state = torch.load(path, weights_only=True)
    except FileNotFoundError:
        return 0
    return len(state["units"])


def test_run_killed_with_sigkill_resumes_to_the_same_metrics(tmp_path):
    killed_out = tmp_path / "killed"
    command = [sys.executable, "-m", "couplings.cli", "run", "ot-accuracy", "--quick",
               "--no-progress", "--out", str(killed_out), *KILL_OVERRIDES]
    checkpoint = killed_out / "ot-accuracy" / "checkpoint.pt"

    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while _units_in(checkpoint) < 2:
            if proc.poll() is not None:
                output = proc.stdout.read().decode(errors="replace")
                pytest.fail(f"the run ended (rc={proc.returncode}) before it could be killed; "
                            f"make it longer.\n{output}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint with 2 units after 240 s")
            time.sleep(0.02)
        if proc.poll() is not None:
            pytest.fail("the run finished before it could be killed; make it longer.")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = _units_in(checkpoint)
    assert 2 <= done_at_kill < KILL_UNITS, done_at_kill
    assert not (killed_out / "ot-accuracy" / "metrics.json").exists()

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert not checkpoint.exists()  # a completed run removes its checkpoint
    resumed_record = json.loads((killed_out / "ot-accuracy" / "metrics.json").read_text())
    assert resumed_record["run"]["resumed_units"] == done_at_kill
    assert resumed_record["run"]["units"] == KILL_UNITS

    experiment = get("ot-accuracy")
    config = apply_overrides(experiment.config(quick=True), KILL_OVERRIDES)
    straight = run_experiment(experiment, config, seed=0, out=tmp_path / "straight",
                              quick=True, show_progress=False)
    assert straight.resumed_units == 0
    straight_record = json.loads(straight.files.metrics.read_text())

    assert resumed_record["config"] == straight_record["config"]
    resumed_metrics = _without_timings(resumed_record["metrics"])
    straight_metrics = _without_timings(straight_record["metrics"])
    assert len(resumed_metrics["solves_by_unit"]) == KILL_UNITS
    assert resumed_metrics == straight_metrics
    assert resumed_record["tables"] == straight_record["tables"]
