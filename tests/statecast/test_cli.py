"""The README's main job, run for real (a few training steps) through the installed CLI."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


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
