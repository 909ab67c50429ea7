"""One epoch of training and the validation score: the loop body shared by the Ray worker
(pipelines/train_loop.py) and the accuracy benchmark (bench/accuracy.py)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from forecast.loss import horizon_targets, quantile_loss
from forecast.model import Forecaster
from pipelines.config import TrainConfig
from pipelines.protocol import ErrorSums, window_starts

__all__ = [
    "forecast_loss",
    "lr_factor",
    "make_optimizer",
    "train_epoch",
    "training_windows",
    "validate",
]


def training_windows(
    n_series: int, bounds: tuple[int, int], cfg: TrainConfig
) -> list[tuple[int, int]]:
    """(series, start row) of every training window (input and target inside `bounds`)."""
    starts = window_starts(bounds, cfg.lookback, cfg.horizon)
    return [(s, int(t)) for s in range(n_series) for t in starts]


def make_optimizer(model: Forecaster, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the model's parameters; with cfg.linear_lr the linear path's weights form a
    second group at that rate. Every group keeps its rate in "base_lr" for the schedule."""
    linear = []
    if cfg.linear_lr is not None and model.linear is not None:
        linear = list(model.linear.parameters())
    taken = {id(p) for p in linear}
    groups: list[dict[str, object]] = [
        {"params": [p for p in model.parameters() if id(p) not in taken], "lr": cfg.lr}
    ]
    if linear:
        groups.append({"params": linear, "lr": cfg.linear_lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]
    return opt


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The multiple of the base learning rate at optimiser step `step` (counted from 0 over all
    epochs): a linear warm-up over cfg.warmup_epochs, then constant or a cosine decay that
    reaches 0 at the end of cfg.epochs. A pure function of the step, so resuming needs no
    scheduler state."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch
    factor = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
    if cfg.lr_schedule == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return factor


def forecast_loss(
    model: Forecaster,
    y: torch.Tensor,
    target: torch.Tensor,
    mse_weight: float,
    point_loss: str = "pinball",
) -> torch.Tensor:
    """Pinball over the quantiles plus MSE of the median, on scaled values.

    y [..., H, C, Q]; target [..., H, C] (NaN = missing, left out). point_loss "mse": the median
    is trained by the MSE term alone; the other quantiles' pinball loss reaches only their
    offsets from it (the median is detached inside the band).
    """
    loc, scale = model.encoder.loc, model.encoder.scale
    z = (y - loc[:, None]) / scale[:, None]
    zt = (target - loc) / scale
    m = model.config.median_index
    if point_loss == "mse":
        center = z[..., m : m + 1]
        band = z - center + center.detach()
        outer = [i for i in range(len(model.quantiles)) if i != m]
        qs = tuple(model.quantiles[i] for i in outer)
        loss = quantile_loss(band[..., outer], zt, qs) if outer else z.new_zeros(())
    else:
        loss = quantile_loss(z, zt, model.quantiles)
    if mse_weight:
        observed = ~torch.isnan(zt)
        err = torch.where(observed, z[..., m] - torch.nan_to_num(zt), 0.0)
        loss = loss + mse_weight * (err**2).sum() / observed.sum().clamp_min(1)
    return loss


def train_epoch(
    wrapped: nn.Module,
    model: Forecaster,
    opt: torch.optim.Optimizer,
    values: np.ndarray,
    covariates: np.ndarray,
    windows: list[tuple[int, int]],
    cfg: TrainConfig,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int, int], None] | None = None,
) -> float:
    """One pass over this rank's share of shuffled windows -> mean training loss.

    `wrapped` is what runs forward (the model, or its DistributedDataParallel wrapper). With
    cfg.loss_positions "origin" the loss is on each window's forecast origin (its last position,
    what the protocol scores); with "all" every position of the lookback is trained to forecast
    its next `horizon` rows. With a schedule or warm-up (cfg.lr_schedule, cfg.warmup_epochs)
    each group's rate is set before every step from its "base_lr" (make_optimizer).
    `on_batch(done, total)` is called after every batch (progress).
    """
    rng = np.random.default_rng(cfg.seed + epoch)
    order = rng.permutation(len(windows))[rank::world]
    n_batches = len(order) // cfg.batch_size
    if cfg.steps_per_epoch:
        n_batches = min(n_batches, cfg.steps_per_epoch)
    span = cfg.lookback + cfg.horizon
    scheduled = cfg.lr_schedule != "constant" or cfg.warmup_epochs > 0
    wrapped.train()
    losses = []
    for b in range(n_batches):
        if scheduled:
            factor = lr_factor(cfg, epoch * n_batches + b, n_batches)
            for group in opt.param_groups:
                group["lr"] = group.setdefault("base_lr", group["lr"]) * factor
        picked = [windows[i] for i in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
        x = torch.tensor(np.stack([values[s, t : t + span] for s, t in picked]), device=device)
        cov = torch.tensor(
            np.stack([covariates[s, t : t + cfg.lookback] for s, t in picked]), device=device
        )
        origin = cfg.loss_positions == "origin"
        y, _ = wrapped(
            x[:, : cfg.lookback],
            covariates=cov if model.config.n_covariates else None,
            last_only=origin,
        )
        target = x[:, cfg.lookback :] if origin else horizon_targets(x, cfg.horizon)
        loss = forecast_loss(model, y, target, cfg.mse_weight, cfg.point_loss)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if on_batch is not None:
            on_batch(b + 1, n_batches)
    return float(np.mean(losses)) if losses else math.nan


@torch.no_grad()
def validate(
    model: Forecaster,
    values: np.ndarray,
    covariates: np.ndarray,
    bounds: tuple[int, int],
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
) -> float:
    """Validation MSE under the protocol (every window, scaled values, last position)."""
    return validation_sums(model, values, covariates, bounds, cfg, device, batch_size).result().mse


@torch.no_grad()
def validation_sums(
    model: Forecaster,
    values: np.ndarray,
    covariates: np.ndarray,
    bounds: tuple[int, int],
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
) -> ErrorSums:
    """`validate`'s error sums, per horizon step and channel."""
    was = model.training
    model.eval()
    sums = ErrorSums(cfg.horizon, model.encoder.scale.double().cpu().numpy())
    starts = window_starts(bounds, cfg.lookback, cfg.horizon)
    for s in range(values.shape[0]):
        for i in range(0, len(starts), batch_size):
            batch = starts[i : i + batch_size]
            idx = batch[:, None] + np.arange(cfg.lookback)
            x = torch.tensor(values[s, idx], device=device)
            cov = (
                torch.tensor(covariates[s, idx], device=device)
                if model.config.n_covariates
                else None
            )
            y, _ = model(x, covariates=cov, last_only=True)
            truth = values[s, batch[:, None] + cfg.lookback + np.arange(cfg.horizon)]
            sums.add(model.point(y).float().cpu().numpy(), truth)
    model.train(was)
    return sums
