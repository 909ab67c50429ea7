"""The backbone's part of the median forecast shrunk toward the linear path, by validation.

With the linear path started at its closed-form fit (`TrainConfig.linear_init` "fit"), the
forecast's median is `fit + r`, where `r` is what the head adds from the backbone's features. The
head is linear, so scaling its median rows by a weight `a` gives `fit + a r`: at `a = 0` the fit
alone, at `a = 1` the trained model, in between their mix. This is boosting's shrinkage (a
learning rate on the last stage), chosen after training on the validation split from
`SHRINK_WEIGHTS`; 1 is always a candidate and wins ties, so validation never gets worse. No
parameter or state is added: the weight is folded into the head, and `step` and `forward` agree
as before. The quantiles around the median keep their trained offsets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from forecast.model import Forecaster

# 1 first: a weight replaces it only if it is strictly better on validation.
SHRINK_WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)


def _median_rows(model: Forecaster) -> tuple[Tensor, Tensor]:
    """Views of the head's weight [H, W, D] and bias [H, W] that make the median's raw part."""
    head = model.head
    horizon, width, quantiles = head.shape
    weight = head.proj.weight.view(horizon, width, quantiles, -1)[:, :, head.median]
    bias = head.proj.bias.view(horizon, width, quantiles)[:, :, head.median]
    return weight, bias


@torch.no_grad()
def choose_backbone_weight(
    models: Sequence[Forecaster], val_mse: Callable[[], float]
) -> tuple[float, float, dict[float, float]]:
    """Try each weight of SHRINK_WEIGHTS on all `models` together (the members of one mean
    forecast share it), leave them at the one with the lowest `val_mse()`, and return
    (weight, its val MSE, the val MSE of every weight)."""
    saved = [tuple(r.clone() for r in _median_rows(m)) for m in models]

    def apply(weight: float) -> None:
        for model, originals in zip(models, saved, strict=True):
            for rows, original in zip(_median_rows(model), originals, strict=True):
                rows.copy_(original * weight)

    tried: dict[float, float] = {}
    for weight in SHRINK_WEIGHTS:
        apply(weight)
        tried[weight] = val_mse()
    best = min(tried, key=lambda w: (tried[w], SHRINK_WEIGHTS.index(w)))
    apply(best)
    return best, tried[best], tried
