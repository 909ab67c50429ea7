"""The README's main job, run for real (a few training steps) through the installed CLI."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("kind", ["diagonal_ssm", "rwkv7"])
def test_quickstart_trains_and_forecasts(kind: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "statecast",
            "quickstart",
            "--model",
            kind,
            "--steps",
            "3",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"model {kind}: trained 3 steps" in out
    mse = re.search(r"validation MSE \(scaled, H=24\): ([0-9.]+)", out)
    assert mse is not None and 0 < float(mse.group(1)) < 100
    # One forecast line per ETTh1 channel, each with three quantiles at three horizons.
    for channel in ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]:
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(f"{channel}:"))
        assert len(re.findall(r"-?\d+\.\d\d/-?\d+\.\d\d/-?\d+\.\d\d", line)) == 3


def test_quickstart_rejects_unknown_model() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "statecast", "quickstart", "--model", "lstm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "--model must be one of" in proc.stderr


def test_train_passes_the_recipe_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """`statecast train`'s recipe options reach TrainConfig (training itself is faked)."""
    import types
    from typing import Any

    import pipelines.train
    from statecast.cli import build_parser

    seen: dict[str, Any] = {}

    def fake_train(cfg: object, data_cfg: object, **kwargs: object) -> object:
        seen["cfg"] = cfg
        return types.SimpleNamespace(
            run_id="r",
            model_uri="m",
            test_mse=0.0,
            test_mae=0.0,
            best_val_mse=0.0,
            epochs=1,
            registered_version=None,
            champion=False,
        )

    monkeypatch.setattr(pipelines.train, "train", fake_train)
    options = (
        "train --data x.csv --lr-schedule cosine --warmup-epochs 0.5 --linear-lr 5e-3 "
        "--linear-norm window --zero-head --dropout 0.1 --point-loss mse --mse-weight 2 "
        "--weight-decay 0.05 --channel-independent --linear-init fit --cycle-length 24 "
        "--shrink-backbone --shrink-groups channel_horizon"
    )
    args = build_parser().parse_args(options.split())
    assert args.fn(args) == 0
    cfg = seen["cfg"]
    assert (cfg.lr_schedule, cfg.warmup_epochs, cfg.linear_lr) == ("cosine", 0.5, 5e-3)
    assert (cfg.linear_norm, cfg.zero_head, cfg.dropout) == ("window", True, 0.1)
    assert (cfg.point_loss, cfg.mse_weight, cfg.weight_decay) == ("mse", 2.0, 0.05)
    assert cfg.channel_independent
    assert (cfg.linear_init, cfg.cycle_length, cfg.backbone_shrink) == ("fit", 24, True)
    assert cfg.shrink_groups == "channel_horizon"


def _grid_options(dataset: str) -> list[str]:
    """One seed's options in bench/device/acc_grid.sh (the grid of docs/RESULTS.md's eighth
    section), its shell variables expanded: the kind, then the dataset's recipe."""
    script = (ROOT / "bench" / "device" / "acc_grid.sh").read_text()
    shell = {name: value for name, value in re.findall(r'^(NEW|R)="([^"]*)"', script, re.M)}
    recipe = re.search(rf'\[{dataset}\]="([^"]*)"', script)
    kind = re.search(r"--kind \$\{KIND:-(\S+)\}", script)
    assert recipe and kind and set(shell) == {"NEW", "R"}
    expanded = recipe.group(1).replace("$NEW", shell["NEW"]).replace("$R", shell["R"])
    return ["--kind", kind.group(1), *expanded.split()]


def test_the_benchmark_recipe_is_the_grids() -> None:
    """`statecast train --recipe benchmark` is the TrainConfig the accuracy grid trains (ETTm1's
    and weather's line; ETTh1's differs only in its 12 epochs), its daily cycle resolved from
    the data's frequency as the grid's --cycle was set per dataset."""
    import dataclasses

    from bench.accuracy import method_parser
    from bench.accuracy import train_config as bench_config
    from pipelines.calendar import steps_per_day
    from pipelines.config import CYCLE_DAY, RECIPES
    from statecast.cli import build_parser, train_config

    args = build_parser().parse_args(["train", "--data", "x.csv", "--recipe", "benchmark"])
    ours = train_config(args)
    assert ours.cycle_length == CYCLE_DAY  # type: ignore[attr-defined]
    for dataset, frequency, epochs in (("ETTm1", "15min", 8), ("weather", "10min", 8)):
        grid = method_parser().parse_args(_grid_options(dataset))
        assert grid.linear_init == "ridge"  # the bench's name for starting at the fit
        theirs = bench_config(grid, "x.csv", 96, 96)
        resolved = dataclasses.replace(ours, cycle_length=steps_per_day(frequency))  # type: ignore[type-var]
        assert dataclasses.replace(theirs, linear_init="fit") == resolved, dataset
        assert theirs.epochs == epochs
    etth1 = method_parser().parse_args(_grid_options("ETTh1"))
    assert (etth1.epochs, etth1.cycle, steps_per_day("1h")) == (12, 24, 24)
    assert sorted(RECIPES) == ["benchmark"]  # the CLI's --recipe choices, written out there


def test_options_given_override_the_recipe() -> None:
    from pipelines.config import CYCLE_DAY, TrainConfig
    from statecast.cli import build_parser, train_config

    parse = build_parser().parse_args
    given = "--recipe benchmark --patience 5 --no-shrink-backbone --cycle-length 0 --model rwkv7"
    cfg = train_config(parse(["train", "--data", "x.csv", *given.split()]))
    assert isinstance(cfg, TrainConfig)
    assert (cfg.patience, cfg.backbone_shrink, cfg.cycle_length, cfg.kind) == (5, False, 0, "rwkv7")
    assert (cfg.lr, cfg.linear_lr, cfg.linear_init, cfg.batch_size) == (3e-4, 1e-9, "fit", 128)
    # Without a recipe: TrainConfig's defaults, as before.
    plain = train_config(parse(["train", "--data", "x.csv", "--cycle-length", "day"]))
    assert plain == TrainConfig(data="x.csv", cycle_length=CYCLE_DAY)
    assert train_config(parse(["train", "--data", "x.csv"])) == TrainConfig(data="x.csv")
    for bad in ("week", "-2"):
        with pytest.raises(SystemExit):
            parse(["train", "--data", "x.csv", "--cycle-length", bad])


def test_a_day_in_steps_and_an_unresolved_day_are_clear() -> None:
    from pipelines.calendar import steps_per_day
    from pipelines.config import CYCLE_DAY, TrainConfig

    assert [steps_per_day(f) for f in ("h", "1h", "15min", "10min", "30s")] == [
        24,
        24,
        96,
        144,
        2880,
    ]
    for frequency in ("D", "7min", "MS", "2D"):
        with pytest.raises(ValueError, match="no daily cycle"):
            steps_per_day(frequency)
    with pytest.raises(ValueError, match="CYCLE_DAY"):
        TrainConfig(data="x.csv", cycle_length=CYCLE_DAY).model_config(7, 6)
    with pytest.raises(ValueError, match="cycle_length"):
        TrainConfig(data="x.csv", cycle_length=-2)
