"""End to end with a real local Ray and a real MLflow store (sqlite + artifact folder):
train on a slice of ETTh1, resume, register with the champion rule, load back through pyfunc."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import CYCLE_DAY, DataConfig, TrainConfig
from pipelines.data import read_dataset
from pipelines.linear_fit import fit_linear, model_scale
from pipelines.online_fit import online_choice, online_forecasts
from pipelines.protocol import ErrorSums, protocol_splits
from pipelines.pyfunc import forecast_frame
from pipelines.train import TrainResult, register_model, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def etth1_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "etth1_slice.csv"
    lines = (ROOT / "data" / "ETTh1.csv").read_text().splitlines()[:1201]
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(data: Path, epochs: int) -> TrainConfig:
    return TrainConfig(
        data=str(data),
        kind="selective_ssm",
        lookback=32,
        horizon=8,
        epochs=epochs,
        batch_size=16,
        steps_per_epoch=4,
        patience=5,
        d_model=16,
        n_layers=1,
        # The benchmarks' start: the linear path with its daily cycle at the closed-form fit;
        # a learning rate that ruins every epoch, so the fitted start must be what is kept.
        lr=3.0,
        linear_lr=3.0,
        linear_norm="window",
        zero_head=True,
        linear_init="fit",
        cycle_length=CYCLE_DAY,  # hourly data: 24, resolved when the data is read
        linear_per_channel=True,
        backbone_shrink=True,
        experiment="test-train",
        register="etth1-slice",
        run_name="slice-run",
    )


@pytest.fixture(scope="module")
def trained(store: Path, etth1_slice: Path) -> TrainResult:
    return train(_config(etth1_slice, epochs=2), DataConfig(split="ratio"))


def test_run_is_tracked(trained: TrainResult, store: Path) -> None:
    client = MlflowClient()
    run = client.get_run(trained.run_id)
    assert run.data.params["train.kind"] == "selective_ssm"
    assert run.data.params["model.horizon"] == "8"
    assert run.data.params["data.split"] == "ratio"
    assert run.data.params["train.linear_init"] == "fit"
    assert run.data.params["train.cycle_length"] == run.data.params["model.cycle_length"] == "24"
    assert run.data.params["model.linear_per_channel"] == "True"
    # The fitted start was a candidate, and no epoch beat it: the kept model is the fit
    # (float32 model against the float64 fit).
    assert trained.best_val_mse == pytest.approx(run.data.metrics["linear_fit_val_mse"], rel=1e-5)
    # Its head is zero, so every shrink weight ties and the model is kept as it is.
    assert run.data.params["backbone_weight"] == "1.0"
    assert run.data.metrics["val_mse_unshrunk"] == pytest.approx(trained.best_val_mse, rel=1e-6)
    epochs = client.get_metric_history(trained.run_id, "val_mse")
    assert not any(m.value < trained.best_val_mse for m in epochs)  # NaN or worse, every one
    for name in ("train_loss", "val_mse"):
        history = client.get_metric_history(trained.run_id, name)
        assert [m.step for m in history] == [0, 1], name
    assert run.data.metrics["test_mse"] == pytest.approx(trained.test_mse)
    assert len(client.get_metric_history(trained.run_id, "test_mse_by_step")) == 8
    artifacts = [a.path for a in client.list_artifacts(trained.run_id, "plots")]
    assert artifacts == ["plots/forecast_test.png"]
    png = Path(mlflow.artifacts.download_artifacts(run_id=trained.run_id, artifact_path="plots"))
    assert (png / "forecast_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(store) in mlflow.get_tracking_uri()


def test_registered_model_predicts_like_the_in_memory_model(
    trained: TrainResult, etth1_slice: Path
) -> None:
    assert trained.registered_version == "1" and trained.champion
    loaded = mlflow.pyfunc.load_model("models:/etth1-slice@champion")
    history = pd.read_csv(etth1_slice, parse_dates=["date"]).iloc[100:180]
    got = loaded.predict(history)
    data = read_dataset(etth1_slice, DataConfig())
    extra = {"time_column": "date", "channels": list(data.channels), "calendar": True}
    want = forecast_frame(trained.model, extra, history)
    assert len(got) == 8 * 7
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_exact=True)


def test_evaluate_full_history_with_the_online_linear_path(
    trained: TrainResult, etth1_slice: Path
) -> None:
    """`statecast evaluate --full-history --online` on the logged model, which is the fit (see
    above): the online fit alone on the test origins, hedged over the frozen fit and every
    half-life (the default rule)."""
    proc = subprocess.run(
        [
            sys.executable, "-m", "statecast", "evaluate", "--model-uri", trained.model_uri,
            "--data", str(etth1_slice), "--horizon", "8", "--split-mode", "ratio",
            "--full-history", "--online", "--no-progress",
        ],
        capture_output=True, text=True, timeout=300, env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    data = read_dataset(etth1_slice, DataConfig(split="ratio"))
    splits = protocol_splits(data.name, data.n_steps, "ratio")
    fit = fit_linear(data, splits, 32, 8, 24, per_channel=True)
    scale, _ = model_scale(data, splits.train)
    hedge = online_choice(data, splits, fit, [scale]).hedge
    assert out["online"] == {
        "rule": "mean",
        "half_lives": ["inf", *hedge.half_lives[1:]],
        "frozen": True,
    }
    assert len(hedge.half_lives) == 6 and hedge.half_lives[0] == math.inf
    assert "Infinity" not in proc.stdout  # strict JSON
    want = ErrorSums(8, scale)
    origins = (splits.test[0] - 1, splits.test[1] - 8 - 1)
    for series, starts, pred in online_forecasts(data, splits, fit, hedge, origins):
        want.add(pred, data.values[series, starts[:, None] + 32 + np.arange(8)])
    assert out["windows"] == want.result().windows
    assert out["mse"] == pytest.approx(want.result().mse, rel=1e-5)


def test_champion_moves_only_on_better_validation(trained: TrainResult) -> None:
    uri = mlflow.get_tracking_uri()
    client = MlflowClient(uri)
    worse, moved = register_model("etth1-slice", trained.model_uri, trained.best_val_mse + 1.0, uri)
    assert not moved
    assert str(client.get_model_version_by_alias("etth1-slice", "champion").version) == "1"
    better, moved = register_model(
        "etth1-slice", trained.model_uri, trained.best_val_mse - 1.0, uri
    )
    assert moved and int(better) == int(worse) + 1
    assert str(client.get_model_version_by_alias("etth1-slice", "champion").version) == better


def test_resume_continues_from_the_last_checkpoint(trained: TrainResult, etth1_slice: Path) -> None:
    resumed = train(_config(etth1_slice, epochs=3), DataConfig(split="ratio"), resume=True)
    assert resumed.run_id == trained.run_id
    assert resumed.epochs == 3
    history = MlflowClient().get_metric_history(trained.run_id, "val_mse")
    # Epochs 0 and 1 from the first run, epoch 2 from the resumed one: nothing retrained.
    assert [m.step for m in history] == [0, 1, 2]
