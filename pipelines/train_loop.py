"""The per-worker training loop that Ray Train runs. It reads top to bottom:

resume from the last checkpoint if there is one (else, with a fitted linear path, validate the
start) -> for each epoch: shuffled windows, pinball loss
(+ MSE on the median), validation MSE under the protocol -> rank 0 logs to MLflow (buffered while
the server is unreachable) and writes a checkpoint (latest and best weights, optimiser, progress)
-> early stop after `patience` epochs without a better validation MSE.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from forecast import ModelConfig, build_model
from forecast.model import Forecaster
from pipelines import settings
from pipelines.config import TrainConfig
from pipelines.fit import make_optimizer, train_epoch, training_windows, validate
from pipelines.progress import throttled
from pipelines.tracking import MetricBuffer

__all__ = ["train_loop"]


def train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["train"])
    mcfg = ModelConfig.from_dict(config["model"])
    values: np.ndarray = config["values"]  # [S, T, C]
    covariates: np.ndarray = config["covariates"]  # [S, T, K]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)

    model = build_model(mcfg)
    with torch.no_grad():
        model.encoder.loc.copy_(torch.tensor(config["loc"]))
        model.encoder.scale.copy_(torch.tensor(config["scale"]))
    start = config.get("linear_start")
    if start is not None and model.linear is not None:
        # The closed-form fit (TrainConfig.linear_init "fit"), made once on the driver. Ray hands
        # the arrays over read-only: torch.tensor copies (from_numpy warned on every worker).
        model.linear.load_state_dict({k: torch.tensor(v) for k, v in start.items()})
    opt = make_optimizer(model, cfg)
    progress = {"epoch": -1, "best_val_mse": math.inf, "bad_epochs": 0}
    best_weights = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            model.load_state_dict(load_file(str(Path(folder) / "latest.safetensors")))
            best_weights = load_file(str(Path(folder) / "best.safetensors"))
            opt.load_state_dict(torch.load(Path(folder) / "optimizer.pt", weights_only=True))
            progress = json.loads((Path(folder) / "progress.json").read_text())
    wrapped = ray.train.torch.prepare_model(model)
    core: Forecaster = model  # the unwrapped module, for step-free helpers and state_dict

    train_bounds, val_bounds = tuple(config["train_bounds"]), tuple(config["val_bounds"])
    if start is not None and checkpoint is None:
        # The start is a candidate too: an epoch is kept only if it beats the fit on validation.
        progress["best_val_mse"] = validate(core, values, covariates, val_bounds, cfg, device)
        best_weights = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
    train_windows = training_windows(values.shape[0], train_bounds, cfg)
    tracker = None
    if rank == 0:
        # The driver's bounds on MLflow's HTTP retries (pipelines/settings.py) hold here too.
        settings.bound_mlflow_http(config.get("mlflow_http"))
        tracker = _Tracker(config.get("tracking_uri"), config.get("run_id"))

    for epoch in range(int(progress["epoch"]) + 1, cfg.epochs):
        on_batch = None
        if tracker is not None:
            report = throttled(tracker.progress)

            def on_batch(done: int, total: int, epoch: int = epoch, report: Any = report) -> None:
                report(epoch + done / total, final=done == total)

        train_loss = train_epoch(
            wrapped,
            core,
            opt,
            values,
            covariates,
            train_windows,
            cfg,
            epoch,
            rank,
            world,
            device,
            on_batch=on_batch,
        )
        val_mse = validate(core, values, covariates, val_bounds, cfg, device)

        if val_mse < progress["best_val_mse"]:
            progress.update(best_val_mse=val_mse, bad_epochs=0)
            best_weights = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
        else:
            progress["bad_epochs"] = int(progress["bad_epochs"]) + 1
        progress["epoch"] = epoch
        stop = int(progress["bad_epochs"]) >= cfg.patience
        metrics = {"epoch": epoch, "train_loss": train_loss, "val_mse": val_mse, **progress}
        if tracker is not None:
            tracker.log(epoch, train_loss=train_loss, val_mse=val_mse)
            if stop or epoch == cfg.epochs - 1:
                # The last report carries how many values never reached MLflow; the driver
                # fails the run with a clear message if any (pipelines/train.py).
                timeout = float(config.get("mlflow_flush_timeout_s", 300.0))
                metrics["unlogged_metrics"] = tracker.close(timeout)
        with tempfile.TemporaryDirectory() as folder:
            ckpt = None
            if rank == 0:
                assert best_weights is not None
                save_file(_cpu(core.state_dict()), str(Path(folder) / "latest.safetensors"))
                save_file(best_weights, str(Path(folder) / "best.safetensors"))
                torch.save(opt.state_dict(), Path(folder) / "optimizer.pt")
                (Path(folder) / "progress.json").write_text(json.dumps(progress))
                ckpt = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=ckpt)
        if stop:
            break


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


class _Tracker:
    """Per-epoch metrics from rank 0 into the driver's MLflow run (Ray Train v2 has no MLflow
    callback), through a `MetricBuffer`: a tracking server that is down delays them, training
    goes on, and they are sent when it is back (pipelines/tracking.py)."""

    def __init__(self, uri: str | None, run_id: str | None):
        from mlflow.tracking import MlflowClient

        self.buffer = MetricBuffer(MlflowClient(uri), run_id) if uri and run_id else None

    def progress(self, epochs_done: float) -> None:
        """Where training is (epochs, fractional), for the driver's progress bar."""
        self.log(0, train_progress=epochs_done)

    def log(self, epoch: int, **metrics: float) -> None:
        if self.buffer is not None:
            self.buffer.log(epoch, **metrics)

    def close(self, timeout_s: float) -> int:
        """Wait for the buffered values (at most `timeout_s`); -> how many were not logged."""
        return 0 if self.buffer is None else self.buffer.close(timeout_s)
