"""Training on Ray, tracked in MLflow: data -> windows -> TorchTrainer -> test score -> registry.

The driver reads the data and fits the scaler on the train split, opens an MLflow run and logs
every config field, runs Ray Train's TorchTrainer (a local Ray unless RAY_ADDRESS names a cluster),
then scores the best weights on the test split, logs the plot and the model as a pyfunc, and with
`register` registers it and moves the `champion` alias only when validation improves on the
current champion's.

Ray Data is not used: the data are one in-memory array per dataset ([S, T, C], a few MB for the
benchmarks), shipped once to each worker, and every training window is a view into it; a Ray
Dataset of windows would copy each row lookback + horizon times.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from forecast import build_model
from forecast.artifact import save_forecaster
from forecast.model import Forecaster
from pipelines import settings
from pipelines.calendar import has_time_of_day, steps_per_day
from pipelines.config import CYCLE_DAY, DataConfig, TrainConfig
from pipelines.data import SeriesData, read_dataset
from pipelines.evaluate import evaluate_model
from pipelines.fit import validation_sums
from pipelines.linear_fit import fit_linear, set_linear_path
from pipelines.plots import plot_forecast
from pipelines.progress import TrainProgress
from pipelines.protocol import protocol_splits, window_starts
from pipelines.pyfunc import ForecasterPyfunc, forecast_frame
from pipelines.shrink import ShrinkChoice, choose_backbone_weights
from pipelines.tracking import TrackingUnavailableError

__all__ = ["TrainResult", "register_model", "train"]

log = logging.getLogger(__name__)
CHAMPION = "champion"


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_uri: str
    test_mse: float
    test_mae: float
    best_val_mse: float
    epochs: int
    registered_version: str | None
    champion: bool
    model: Forecaster


def train(
    cfg: TrainConfig,
    data_cfg: DataConfig | None = None,
    storage_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
) -> TrainResult:
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.train_loop import train_loop

    data_cfg = data_cfg or DataConfig()
    data = read_dataset(cfg.data, data_cfg)
    if cfg.cycle_length == CYCLE_DAY:
        cfg = dataclasses.replace(cfg, cycle_length=steps_per_day(data.frequency))
    splits = protocol_splits(data.name, data.n_steps, data_cfg.split)
    if cfg.cycle_length and not has_time_of_day(data.covariate_names):
        raise ValueError(
            "--cycle-length reads the time of day from the calendar covariates; "
            "this data has none (DataConfig.calendar is off)"
        )
    mcfg = cfg.model_config(len(data.channels), data.covariates.shape[-1])
    model = build_model(mcfg)
    train_lo, train_hi = splits.train
    model.fit_scaler(torch.from_numpy(data.values[:, train_lo:train_hi]))
    linear_start, fit = None, None
    if cfg.linear_init == "fit":
        # Fitted once here, on the driver: every worker starts its linear path from the same fit.
        assert model.linear is not None
        fit = fit_linear(
            data,
            splits,
            model.linear.length,
            cfg.horizon,
            cfg.cycle_length,
            per_channel=cfg.linear_per_channel,
        )
        set_linear_path(model, fit)
        linear_start = {k: v.detach().numpy() for k, v in model.linear.state_dict().items()}

    uri = settings.tracking_uri()
    settings.bound_mlflow_http()
    mlflow.set_tracking_uri(uri)
    experiment_id = _experiment(cfg.experiment, uri)
    run_name = cfg.run_name or f"{cfg.kind}-{data.name}-H{cfg.horizon}"
    storage = Path(storage_path or settings.home() / "ray").resolve()

    # Ray Train v2 resumes natively when a run directory (storage_path/name) is reused, so every
    # fresh run gets its own directory, named by its MLflow run id, and --resume reuses the latest.
    run_id = None
    if resume:
        run_id = _latest_run(storage / run_name)
        if run_id is None:
            raise FileNotFoundError(f"nothing to resume: no checkpoint under {storage / run_name}")

    with mlflow.start_run(run_id=run_id, run_name=run_name, experiment_id=experiment_id) as run:
        if run_id is None:
            mlflow.log_params(_params(cfg, data_cfg, data, mcfg.to_dict()))
            if fit is not None:
                mlflow.log_params({"linear_fit_ridge": fit.ridge})
                mlflow.log_metric("linear_fit_val_mse", fit.val_mse)

        if not ray.is_initialized():
            ray.init(address=settings.ray_address(), include_dashboard=False, log_to_driver=True)
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={
                "train": dataclasses.asdict(cfg),
                "model": mcfg.to_dict(),
                "values": data.values,
                "covariates": data.covariates,
                "loc": model.encoder.loc.numpy(),
                "scale": model.encoder.scale.numpy(),
                "linear_start": linear_start,
                "train_bounds": splits.train,
                "val_bounds": splits.val,
                "tracking_uri": uri,
                "run_id": run.info.run_id,
                "mlflow_http": settings.mlflow_http_env(),
                "mlflow_flush_timeout_s": settings.mlflow_flush_timeout_s(),
            },
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
            run_config=RunConfig(
                name=run.info.run_id,
                storage_path=str(storage / run_name),
                failure_config=FailureConfig(max_failures=2),
            ),
        )
        with TrainProgress(run.info.run_id, uri, cfg.epochs, enabled=progress):
            result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"training produced no checkpoint: {result.error}")
        with result.checkpoint.as_directory() as folder:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(Path(folder) / "best.safetensors")))
        model.eval()
        metrics = result.metrics or {}
        unlogged = int(metrics.get("unlogged_metrics", 0))
        if unlogged:
            raise TrackingUnavailableError(
                f"training finished, but {unlogged} per-epoch metric values could not be logged "
                f"to the MLflow tracking server at {uri} within "
                f"{settings.mlflow_flush_timeout_s():.0f} s of retrying "
                f"(STATECAST_MLFLOW_FLUSH_TIMEOUT_S); run {run.info.run_id} is incomplete. The "
                f"weights are in the Ray checkpoint under {storage / run_name}; rerun with "
                "--resume once the server is back."
            )
        best_val = float(metrics.get("best_val_mse", np.nan))
        epochs = int(metrics.get("epoch", -1)) + 1
        if cfg.backbone_shrink:
            # On the driver, after training: a few validation passes of the kept model.
            choice = choose_backbone_weights(
                [model],
                lambda: validation_sums(model, data.values, data.covariates, splits.val, cfg),
                cfg.shrink_groups,
            )
            best_val = choice.val_mse
            log_shrink(choice, cfg.shrink_groups)

        test = evaluate_model(model, data, cfg.lookback, cfg.horizon, "test", data_cfg.split)
        mlflow.log_metrics({"test_mse": test.mse, "test_mae": test.mae, "best_val_mse": best_val})
        for h in range(cfg.horizon):
            mlflow.log_metric("test_mse_by_step", float(test.mse_by_step[h]), step=h + 1)
            mlflow.log_metric("test_mae_by_step", float(test.mae_by_step[h]), step=h + 1)
        extra = {**_extra(data_cfg, data), "lookback": cfg.lookback}
        with tempfile.TemporaryDirectory() as tmp:
            png = _plot(Path(tmp) / "forecast_test.png", model, data, splits.test, cfg)
            mlflow.log_artifact(str(png), artifact_path="plots")
            model_uri = _log_model(model, extra, data, cfg, Path(tmp))
        version, champion = (None, False)
        if cfg.register:
            version, champion = register_model(cfg.register, model_uri, best_val, uri)
        return TrainResult(
            run_id=run.info.run_id,
            model_uri=model_uri,
            test_mse=test.mse,
            test_mae=test.mae,
            best_val_mse=best_val,
            epochs=epochs,
            registered_version=version,
            champion=champion,
            model=model,
        )


def _experiment(name: str, uri: str) -> str:
    client = MlflowClient(uri)
    try:
        found = client.get_experiment_by_name(name)
    except mlflow.exceptions.MlflowException as e:
        http = settings.mlflow_http_env()
        raise TrackingUnavailableError(
            f"the MLflow tracking server at {uri} is not reachable after "
            f"{int(http['MLFLOW_HTTP_REQUEST_MAX_RETRIES']) + 1} tries of up to "
            f"{http['MLFLOW_HTTP_REQUEST_TIMEOUT']} s (MLFLOW_HTTP_REQUEST_*); start it, or point "
            f"MLFLOW_TRACKING_URI elsewhere (unset: a local sqlite store). Cause: {str(e)[:300]}"
        ) from e
    if found is not None:
        return str(found.experiment_id)
    # With the embedded sqlite store, artifacts go to a folder beside it.
    location = settings.artifact_root() if uri.startswith("sqlite:") else None
    return str(client.create_experiment(name, artifact_location=location))


def _latest_run(folder: Path) -> str | None:
    """MLflow run id (= Ray run directory) of the latest run under `folder` with a checkpoint."""
    runs = [d for d in folder.glob("*") if d.is_dir() and any(d.glob("checkpoint_*/progress.json"))]
    return max(runs, key=lambda d: d.stat().st_mtime).name if runs else None


def _params(
    cfg: TrainConfig, data_cfg: DataConfig, data: SeriesData, model: dict[str, Any]
) -> dict[str, Any]:
    params: dict[str, Any] = {f"train.{k}": v for k, v in dataclasses.asdict(cfg).items()}
    params.update({f"data.{k}": v for k, v in dataclasses.asdict(data_cfg).items()})
    params.update({f"model.{k}": v for k, v in model.items()})
    params.update(
        {
            "data.rows": data.n_steps,
            "data.series": data.n_series,
            "data.inferred_frequency": data.frequency,
            "data.channel_names": ",".join(data.channels),
        }
    )
    return {k: str(v)[:6000] for k, v in params.items()}


def _extra(data_cfg: DataConfig, data: SeriesData) -> dict[str, object]:
    from pipelines.calendar import CALENDAR_FEATURES

    return {
        "time_column": data_cfg.time_column,
        "channels": list(data.channels),
        "frequency": data.frequency,
        "calendar": data_cfg.calendar,
        "static_covariates": [n for n in data.covariate_names if n not in CALENDAR_FEATURES],
        "missing_values": list(data_cfg.missing_values),
    }


def _plot(
    path: Path, model: Forecaster, data: SeriesData, bounds: tuple[int, int], cfg: TrainConfig
) -> Path:
    start = int(window_starts(bounds, cfg.lookback, cfg.horizon)[0])
    x = torch.from_numpy(data.values[0, start : start + cfg.lookback])[None]
    cov = torch.from_numpy(data.covariates[0, start : start + cfg.lookback])[None]
    with torch.no_grad():
        y, _ = model(x, covariates=cov if model.config.n_covariates else None, last_only=True)
    c = len(data.channels) - 1  # the target channel of the benchmarks (OT) is the last column
    actual = data.values[0, start + cfg.lookback : start + cfg.lookback + cfg.horizon, c]
    return plot_forecast(
        path,
        data.values[0, start : start + cfg.lookback, c],
        actual,
        y[0, :, c].numpy(),
        model.quantiles,
        data.channels[c],
        f"{cfg.kind} on {data.name}: first test window",
    )


def _log_model(
    model: Forecaster, extra: dict[str, object], data: SeriesData, cfg: TrainConfig, tmp: Path
) -> str:
    folder = save_forecaster(model, tmp / "forecaster", extra=extra)
    rows = min(cfg.lookback, data.n_steps)
    # float64 columns in the signature: callers' frames (CSV, JSON) arrive as double.
    example = pd.DataFrame(data.values[0, :rows].astype(np.float64), columns=list(data.channels))
    example.insert(0, str(extra["time_column"]), pd.to_datetime(data.timestamps[:rows]))
    static = [str(n) for n in extra["static_covariates"]]  # type: ignore[attr-defined]
    for i, name in enumerate(static):
        # Static covariates are the last columns of the covariates.
        example[name] = data.covariates[0, :rows, len(data.covariate_names) - len(static) + i]
    output = forecast_frame(model, extra, example)
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values; `step` is never missing.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(example, output)
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=ForecasterPyfunc(),
        artifacts={"forecaster": str(folder)},
        signature=signature,
        input_example=example.head(3),
    )
    return str(info.model_uri)


def log_shrink(choice: ShrinkChoice, groups: str) -> None:
    """The shrink's weights into the active MLflow run: one weight as the param
    `backbone_weight`; a weight per group as a table in the artifact shrink_weights.json (params
    are short). The val MSE before the shrink as the metric `val_mse_unshrunk`."""
    weights = choice.summary()
    if isinstance(weights, float):
        mlflow.log_params({"backbone_weight": weights})
    else:
        mlflow.log_params({"backbone_weight": "per group: shrink_weights.json"})
        mlflow.log_dict({"groups": groups, "weights": weights}, "shrink_weights.json")
    mlflow.log_metric("val_mse_unshrunk", choice.tried[1.0])


def register_model(name: str, model_uri: str, best_val: float, uri: str) -> tuple[str, bool]:
    """Register `model_uri` under `name`; move the champion alias to it only if its validation MSE
    beats the current champion's (the first version always becomes champion)."""
    client = MlflowClient(uri)
    version = mlflow.register_model(model_uri, name).version
    champion_val = None
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        champion_val = client.get_run(str(current.run_id)).data.metrics.get("best_val_mse")
    except mlflow.exceptions.MlflowException:
        current = None  # no champion yet: the first version becomes one
    better = champion_val is None or best_val < float(champion_val)
    if better:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    log.info("registered %s version %s (champion: %s)", name, version, better)
    return str(version), better
