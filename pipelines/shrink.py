"""The backbone's part of the median forecast shrunk toward the linear path, by validation.

With the linear path started at its closed-form fit (`TrainConfig.linear_init` "fit"), the
forecast's median is `fit + r`, where `r` is what the head adds from the backbone's features. The
head is linear, so scaling its median rows by a weight `a` gives `fit + a r`: at `a = 0` the fit
alone, at `a = 1` the trained model, in between their mix. This is boosting's shrinkage (a
learning rate on the last stage), chosen after training on the validation split from
`SHRINK_WEIGHTS`; 1 is always a candidate and wins ties, so validation never gets worse. No
parameter or state is added: the weight is folded into the head, and `step` and `forward` agree
as before. The quantiles around the median keep their trained offsets.

The weight can be one for the model, or one per group of the head's median rows (`SHRINK_GROUPS`):
per output channel, or per channel and quarter of the horizon. The forecast of step `h` of channel
`c` reads only head row `(h, c)`, so the validation error of a group under a weight does not
depend on the other groups' weights: one validation pass per weight in `SHRINK_WEIGHTS` scores
every grouping, and each group takes its best weight independently. A channel-independent head
shares its rows across channels, so it has no per-channel choice (its groups are the horizon's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from forecast.model import Forecaster
from pipelines.config import SHRINK_GROUPS
from pipelines.protocol import ErrorSums

# 1 first: a weight replaces it only if it is strictly better on validation.
SHRINK_WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)
# "channel_horizon" groups: a channel's steps in HORIZON_BLOCKS equal parts of the horizon, as near
# and far steps may need the backbone differently.
HORIZON_BLOCKS = 4


@dataclass(frozen=True)
class ShrinkChoice:
    """The weight chosen for every group: `table` [blocks, channels] (1 x 1 for "model"; one
    channel column for a channel-independent head), the val MSE with them, and the val MSE of
    every weight of SHRINK_WEIGHTS given to all rows alike."""

    table: np.ndarray
    val_mse: float
    tried: dict[float, float]

    def summary(self) -> float | list[list[float]]:
        """One float where every group has the same weight, else the table as lists."""
        flat = np.unique(self.table)
        return float(flat[0]) if flat.size == 1 else self.table.tolist()


def _median_rows(model: Forecaster) -> tuple[Tensor, Tensor]:
    """Views of the head's weight [H, W, D] and bias [H, W] that make the median's raw part."""
    head = model.head
    horizon, width, quantiles = head.shape
    weight = head.proj.weight.view(horizon, width, quantiles, -1)[:, :, head.median]
    bias = head.proj.bias.view(horizon, width, quantiles)[:, :, head.median]
    return weight, bias


class BackboneShrink:
    """Holds the members' unshrunk median rows (members of one mean forecast share the weights)
    and sets them to `original * weight` per row."""

    def __init__(self, models: Sequence[Forecaster]):
        self.models = list(models)
        self.originals = [tuple(r.detach().clone() for r in _median_rows(m)) for m in models]
        self.horizon, self.width, _ = self.models[0].head.shape

    @torch.no_grad()
    def apply(self, rows: np.ndarray | float) -> None:
        """rows: one weight, or [H, W] (W the head's width)."""
        table = torch.tensor(np.broadcast_to(rows, (self.horizon, self.width)), dtype=torch.float64)
        for model, originals in zip(self.models, self.originals, strict=True):
            for current, original in zip(_median_rows(model), originals, strict=True):
                # weight rows [H, W, D] and bias [H, W] alike
                scale = table.to(original).view(*table.shape, *[1] * (original.dim() - 2))
                current.copy_(original * scale)

    @torch.no_grad()
    def passes(self, val_sums: Callable[[], ErrorSums]) -> dict[float, ErrorSums]:
        """The validation error sums with every weight of SHRINK_WEIGHTS given to all rows."""
        out = {}
        for weight in SHRINK_WEIGHTS:
            self.apply(weight)
            out[weight] = val_sums()
        return out

    def choose(self, passes: dict[float, ErrorSums], groups: str) -> ShrinkChoice:
        """Each group's weight with its lowest validation error (the earlier of SHRINK_WEIGHTS on
        a tie) from `passes`; pure: the rows are left as they are."""
        if groups not in SHRINK_GROUPS:
            raise ValueError(f"shrink groups must be one of {SHRINK_GROUPS}, got {groups!r}")
        first = passes[SHRINK_WEIGHTS[0]]
        horizon, channels = first.sq.shape
        blocks = HORIZON_BLOCKS if groups == "channel_horizon" and horizon >= HORIZON_BLOCKS else 1
        columns = channels if groups != "model" and self.width > 1 else 1
        block = np.arange(horizon) * blocks // horizon
        # [H, C] -> group id; a one-column grouping pools every channel.
        group = block[:, None] * columns + (np.arange(channels) if columns > 1 else 0)
        group = np.broadcast_to(group, (horizon, channels)).ravel()
        errors = np.stack(
            [np.bincount(group, passes[w].sq.ravel(), blocks * columns) for w in SHRINK_WEIGHTS]
        )
        best = errors.argmin(axis=0)  # argmin keeps the first of equal values: 1 wins ties
        table = np.asarray(SHRINK_WEIGHTS)[best].reshape(blocks, columns)
        tried = {w: passes[w].result().mse for w in SHRINK_WEIGHTS}
        if (best == best[0]).all():  # one weight for all: that pass's own figure, to the bit
            val = tried[SHRINK_WEIGHTS[best[0]]]
        else:
            val = float(errors[best, np.arange(blocks * columns)].sum() / first.count.sum())
        return ShrinkChoice(table=table, val_mse=val, tried=tried)

    def rows(self, choice: ShrinkChoice) -> np.ndarray:
        """The choice as a weight per head row [H, W]."""
        blocks = choice.table.shape[0]
        per_step = choice.table[np.arange(self.horizon) * blocks // self.horizon]  # [H, columns]
        return np.broadcast_to(per_step, (self.horizon, self.width))


def choose_backbone_weights(
    models: Sequence[Forecaster], val_sums: Callable[[], ErrorSums], groups: str = "model"
) -> ShrinkChoice:
    """Try each weight of SHRINK_WEIGHTS on all `models` together, leave them at the best weight
    of every group of `groups`, and return the choice."""
    shrink = BackboneShrink(models)
    choice = shrink.choose(shrink.passes(val_sums), groups)
    shrink.apply(shrink.rows(choice))
    return choice
