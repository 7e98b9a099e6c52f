"""The ``jigsaw`` experiment: puzzles, datasets, metrics, a short training run, the report."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from couplings.checkpoint import check_plain
from couplings.experiments import get, jigsaw
from couplings.experiments.jigsaw import (
    PAPER_TABLE2,
    JigsawConfig,
    Puzzles,
    assemble_pieces,
    cut_pieces,
    dataset_images,
    evaluate,
    held_out_puzzles,
    load_scene,
    make_puzzles,
    puzzle_metrics,
    random_scene_crops,
    train_network,
)
from couplings.experiments.runner import run_experiment
from couplings.permutations import apply_permutation, invert_permutation

# --------------------------------------------------------------------------------------------
# pieces and puzzles


@pytest.mark.parametrize("grid", [1, 2, 3, 4, 6])
def test_cut_then_unscramble_round_trips_exactly(grid, gen):
    images = torch.rand(7, 2, 12, 24, generator=gen)
    puzzles = make_puzzles(images, grid, generator=gen)
    n = grid * grid
    assert puzzles.scrambled.shape == (7, n, 2, 12 // grid, 24 // grid)
    assert torch.equal(assemble_pieces(puzzles.ordered), images)
    # the inverse of the scramble (the true positions) restores the image, bit for bit
    restored = apply_permutation(puzzles.scrambled, puzzles.positions)
    assert torch.equal(assemble_pieces(restored), images)
    if grid > 1:  # the puzzles are really scrambled
        assert not torch.equal(puzzles.scrambled, puzzles.ordered)
        assert (puzzles.positions != torch.arange(n)).any(dim=1).sum() >= 5


def test_pieces_are_the_grid_cells_in_row_major_order(gen):
    images = torch.rand(3, 1, 6, 9, generator=gen)
    pieces = cut_pieces(images, 3)  # (3, 9, 1, 2, 3)
    for row in range(3):
        for col in range(3):
            cell = images[:, :, 2 * row:2 * row + 2, 3 * col:3 * col + 3]
            assert torch.equal(pieces[:, 3 * row + col], cell), (row, col)


def test_scrambled_piece_sits_where_positions_say(gen):
    puzzles = make_puzzles(torch.rand(4, 1, 8, 8, generator=gen), 4, generator=gen)
    for b in range(4):
        for i in range(16):
            position = int(puzzles.positions[b, i])
            assert torch.equal(puzzles.scrambled[b, i], puzzles.ordered[b, position]), (b, i)


def test_bad_grids_are_refused():
    with pytest.raises(ValueError, match="grid 3 must divide"):
        cut_pieces(torch.rand(2, 1, 8, 8), 3)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        cut_pieces(torch.rand(8, 8), 2)
    with pytest.raises(ValueError, match="square"):
        assemble_pieces(torch.rand(2, 3, 1, 4, 4))
    with pytest.raises(ValueError, match="scene_grids"):
        JigsawConfig(scene_grids=(5,))  # 5 does not divide 48
    with pytest.raises(ValueError, match="digits_grids"):
        JigsawConfig(digits_grids=(3,))


# --------------------------------------------------------------------------------------------
# data


def test_digits_dataset_shapes_and_split():
    config = JigsawConfig(digits_size=16)
    images = dataset_images(config, "digits", seed=0)
    assert images.train.shape == (1438, 1, 16, 16) and images.test.shape == (359, 1, 16, 16)
    assert images.unseen is None
    for part in (images.train, images.test):
        assert part.dtype == torch.float32 and 0 <= float(part.min()) < float(part.max()) <= 1
    # the held-out digits are not training digits
    train_rows = {tuple(x.flatten().tolist()) for x in images.train}
    assert sum(tuple(x.flatten().tolist()) in train_rows for x in images.test) <= 5  # duplicates
    for grid, piece in ((2, 8), (4, 4)):
        puzzles = held_out_puzzles(images.test, grid, seed=0, dataset="digits")
        assert puzzles.scrambled.shape == (359, grid * grid, 1, piece, piece)
        assert puzzles.positions.shape == (359, grid * grid)
    # the split is a function of the seed
    assert torch.equal(dataset_images(config, "digits", seed=0).test, images.test)
    assert not torch.equal(dataset_images(config, "digits", seed=1).test, images.test)


def test_scene_dataset_shapes_and_seeding():
    config = JigsawConfig(scene_size=24, n_scene_train=26, n_scene_test=9,
                          scene_grids=(2, 3, 4, 6))
    images = dataset_images(config, "scenes", seed=0)
    assert images.train.shape == (26, 1, 24, 24)
    assert images.test.shape == images.unseen.shape == (9, 1, 24, 24)
    for part in (images.train, images.test, images.unseen):
        assert 0 <= float(part.min()) and float(part.max()) <= 1 and float(part.std()) > 0.05
    assert not torch.equal(images.train[:9], images.test)
    for grid in config.scene_grids:
        puzzles = make_puzzles(images.train, grid)
        assert puzzles.scrambled.shape == (26, grid * grid, 1, 24 // grid, 24 // grid)
    again = dataset_images(dataclasses.replace(config), "scenes", seed=0)
    assert torch.equal(again.train, images.train)
    assert not torch.equal(dataset_images(config, "scenes", seed=1).train, images.train)


def test_scene_crops_cover_a_fraction_of_the_scene_and_refuse_small_scenes(gen):
    scene = torch.linspace(0, 1, 100).repeat(60, 1)  # (60, 100), brightness grows to the right
    crops = random_scene_crops([scene], 50, 12, min_fraction=0.5, generator=gen)
    assert crops.shape == (50, 1, 12, 12)
    # a crop spans 30 to 60 of the 100 columns: its left-right brightness range is 0.3-0.6
    spans = crops[:, 0, :, -1].mean(1) - crops[:, 0, :, 0].mean(1)
    assert float(spans.min()) > 0.25 and float(spans.max()) < 0.6
    with pytest.raises(ValueError, match="at least 16 x 16"):
        random_scene_crops([torch.rand(10, 40)], 2, 16, min_fraction=0.5, generator=gen)


@pytest.mark.parametrize("name", ["camera", "astronaut", "horse"])
def test_scenes_are_grey_levels_in_unit_range(name):
    scene = load_scene(name)
    assert scene.dim() == 2 and scene.dtype == torch.float32
    assert 0 <= float(scene.min()) < float(scene.max()) <= 1


# --------------------------------------------------------------------------------------------
# metrics


def test_metrics_of_known_assignments():
    images = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4) / 32
    ordered = cut_pieces(images, 2)  # (2, 4, 1, 2, 2)
    identity = torch.arange(4).expand(2, 4)
    puzzles = Puzzles(ordered, ordered, identity)

    perfect = puzzle_metrics(identity, puzzles)
    assert perfect == {"kendall_tau": 1.0, "prop_wrong": 0.0, "prop_any_wrong": 0.0,
                       "l1": 0.0, "l2": 0.0}

    # puzzle 0 exactly reversed, puzzle 1 with its first two pieces swapped
    predicted = torch.tensor([[3, 2, 1, 0], [1, 0, 2, 3]])
    got = puzzle_metrics(predicted, puzzles)
    assert math.isclose(got["kendall_tau"], (-1.0 + (5 - 1) / 6) / 2, abs_tol=1e-6)
    assert math.isclose(got["prop_wrong"], (4 + 2) / 8)
    assert got["prop_any_wrong"] == 1.0
    expected = apply_permutation(ordered, predicted) - ordered
    assert math.isclose(got["l1"], float(expected.abs().mean()), rel_tol=1e-6)
    assert math.isclose(got["l2"], float(expected.pow(2).mean()), rel_tol=1e-6)
    assert got["l1"] > 0 and got["l2"] > 0


def test_kendall_tau_compares_piece_orders_not_positions():
    """The paper compares which piece sits at each position (``invert`` of the assignment)."""
    ordered = cut_pieces(torch.rand(1, 1, 6, 6), 3)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8]])
    predicted = torch.tensor([[1, 2, 0, 3, 4, 5, 6, 7, 8]])  # a 3-cycle
    got = puzzle_metrics(predicted, Puzzles(ordered, ordered, positions))
    from couplings.permutations import kendall_tau

    expected = kendall_tau(invert_permutation(predicted), positions)
    assert math.isclose(got["kendall_tau"], float(expected), abs_tol=1e-6)
    assert got["kendall_tau"] < 1 and math.isclose(got["prop_wrong"], 3 / 9, rel_tol=1e-6)


def test_paper_table_is_the_notes_table():
    assert PAPER_TABLE2[("MNIST", 2)]["kendall_tau"] == 1.0
    assert PAPER_TABLE2[("MNIST", 4)] == {"kendall_tau": 0.43, "prop_wrong": 0.45,
                                           "prop_any_wrong": 0.97, "l1": 0.04, "l2": 0.26}
    assert PAPER_TABLE2[("ImageNet", 3)]["prop_any_wrong"] == 0.53
    assert ("ImageNet", 4) not in PAPER_TABLE2


# --------------------------------------------------------------------------------------------
# training


def test_short_training_on_digits_2x2_learns():
    config = JigsawConfig(digits_size=16)
    images = dataset_images(config, "digits", seed=0)
    test = held_out_puzzles(images.test, 2, seed=0, dataset="digits")
    untrained, _ = train_network(images.train, 2, config, seed=3, steps=1)
    net, losses = train_network(images.train, 2, config, seed=3, steps=400)
    before, after = evaluate(untrained, test), evaluate(net, test)
    assert before["kendall_tau"] < 0.5  # chance is 0
    assert after["kendall_tau"] > 0.8, after
    assert after["prop_wrong"] < 0.25  # chance is 3/4
    assert sum(losses[-50:]) < 0.3 * sum(losses[:50])


def test_training_is_seeded_and_leaves_the_global_rng_alone():
    config = JigsawConfig(digits_size=8, hidden=16, channels=4)
    images = dataset_images(config, "digits", seed=0).train[:64]
    state = torch.get_rng_state()
    _, first = train_network(images, 2, config, seed=5, steps=5)
    _, second = train_network(images, 2, config, seed=5, steps=5)
    _, other = train_network(images, 2, config, seed=6, steps=5)
    assert first == second and first != other
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------------------------
# the experiment


def _tiny_config() -> JigsawConfig:
    return dataclasses.replace(
        JigsawConfig.quick(), digits_size=8, digits_steps=60, scene_steps=30, n_scene_train=120,
        n_scene_test=24, n_seeds=2, n_figure_puzzles=2, scene_grids=(2, 4),
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    run = run_experiment(get("jigsaw"), _tiny_config(), seed=0, out=out, show_progress=False)
    return run, json.loads(run.files.metrics.read_text())


def test_quick_setting_is_what_the_issue_asks_for():
    quick, full = JigsawConfig.quick(), JigsawConfig()
    assert 2 in quick.digits_grids and len(quick.scene_grids) == 1
    assert set(full.digits_grids) == {2, 4} and set(full.scene_grids) == {2, 3, 4, 6}
    assert full.n_seeds == 3 and full.digits_steps > quick.digits_steps
    assert get("jigsaw").config(quick=True) == quick


def test_experiment_produces_finite_metrics_tables_and_figures(tiny_run):
    run, record = tiny_run
    metrics = record["metrics"]
    config = _tiny_config()
    assert metrics["all_finite"] is True
    cells = metrics["cells"]
    assert set(cells) == {"digits/2x2", "scenes/2x2", "scenes/4x4"}
    for cell in cells.values():
        for part in ("test", "unseen") if cell["dataset"] == "scenes" else ("test",):
            for name, spread in cell[part].items():
                assert len(spread["per_seed"]) == config.n_seeds, name
                assert all(math.isfinite(v) for v in spread["per_seed"]), (name, spread)
                assert spread["min"] <= spread["mean"] <= spread["max"]
            assert -1 <= cell[part]["kendall_tau"]["mean"] <= 1
            assert 0 <= cell[part]["prop_wrong"]["mean"] <= 1
    assert cells["digits/2x2"]["unseen"] is None
    assert metrics["criterion"]["holds"] in (True, False)
    units = metrics["units"]
    assert len(units) == 3 * config.n_seeds
    check_plain(units)

    for name in ("reconstructions_digits", "reconstructions_scenes", "training_loss"):
        assert (run.out_dir / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    md = run.files.markdown.read_text()
    assert "Kendall tau (paper)" in md and "| digits | 2x2 | MNIST |" in md
    table = record["tables"][0]
    digits_row = next(r for r in table["rows"] if r[0] == "digits")
    assert digits_row[3]["reference"] == 1.0  # MNIST 2x2 Kendall tau beside ours
    assert " ± " in digits_row[3]["ours"]  # the spread over seeds
    scenes_4 = next(r for r in table["rows"] if r[:2] == ["scenes", "4x4"])
    assert scenes_4[3]["reference"] is None  # no ImageNet 4x4 in the paper


def test_a_killed_run_resumes_and_reproduces_an_uninterrupted_one(tiny_run, tmp_path,
                                                                  monkeypatch):
    _, record = tiny_run
    real_unit, calls = jigsaw.run_unit, []

    def dies_at_the_fourth_unit(*args):
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        calls.append(args[2:])
        return real_unit(*args)

    monkeypatch.setattr(jigsaw, "run_unit", dies_at_the_fourth_unit)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(get("jigsaw"), _tiny_config(), seed=0, out=tmp_path, show_progress=False)
    monkeypatch.setattr(jigsaw, "run_unit", real_unit)
    resumed = run_experiment(get("jigsaw"), _tiny_config(), seed=0, out=tmp_path,
                             show_progress=False)
    assert resumed.resumed_units == 3
    first, second = record["metrics"]["units"], resumed.result.metrics["units"]
    assert len(first) == len(second) == 6
    for a, b in zip(first, second, strict=True):
        assert (a["dataset"], a["grid"], a["seed_index"]) == (
            b["dataset"], b["grid"], b["seed_index"])
        assert a["test"] == b["test"] and a["loss_curve"] == b["loss_curve"], a["dataset"]


@pytest.mark.slow
def test_full_setting_meets_the_criterion(tmp_path):
    run = run_experiment(get("jigsaw"), seed=0, out=tmp_path, show_progress=False)
    assert run.result.metrics["all_finite"]
    assert run.result.metrics["criterion"]["holds"]
