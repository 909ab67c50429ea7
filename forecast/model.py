"""Forecaster: input encoder -> recurrent backbone -> quantile head, with window and step views.

The backbone (one per model kind, in its own file) carries the recurrence; this wrapper only adds
what every kind shares, and checks inputs so a bad shape is a clear error, not a broadcast.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, cast

import torch
from torch import Tensor, nn

from forecast.adaptive_norm import AdaptiveNorm
from forecast.config import ModelConfig
from forecast.cycle import cycle_phase
from forecast.layers import InputEncoder, LinearPath, QuantileHead
from forecast.state import ModelState

__all__ = ["Backbone", "Forecaster", "LayerStack"]

LayerStates = tuple[NamedTuple, ...]


class Backbone(nn.Module):
    """A stack of recurrent layers over features of width D."""

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerStates:
        raise NotImplementedError

    def forward(self, x: Tensor, state: LayerStates) -> tuple[Tensor, LayerStates]:
        """x [B, T, D] -> (y [B, T, D], state after the last step)."""
        raise NotImplementedError

    def step(self, x: Tensor, state: LayerStates) -> tuple[Tensor, LayerStates]:
        """x [B, D] -> (y [B, D], next state): exactly one step of `forward`."""
        raise NotImplementedError


class RecurrentLayer(Protocol):
    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> NamedTuple: ...
    def __call__(self, x: Tensor, state: Any) -> tuple[Tensor, NamedTuple]: ...
    def step(self, x: Tensor, state: Any) -> tuple[Tensor, NamedTuple]: ...


class LayerStack(Backbone):
    """Layers applied in order, each carrying its own state (a NamedTuple)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def _stack(self) -> list[RecurrentLayer]:
        return [cast(RecurrentLayer, layer) for layer in self.layers]

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerStates:
        return tuple(layer.init_state(batch_size, device, dtype) for layer in self._stack())

    def forward(self, x: Tensor, state: LayerStates) -> tuple[Tensor, LayerStates]:
        out = []
        for layer, s in zip(self._stack(), state, strict=True):
            x, s = layer(x, s)
            out.append(s)
        return x, tuple(out)

    def step(self, x: Tensor, state: LayerStates) -> tuple[Tensor, LayerStates]:
        out = []
        for layer, s in zip(self._stack(), state, strict=True):
            x, s = layer.step(x, s)
            out.append(s)
        return x, tuple(out)


class Forecaster(nn.Module):
    """Multivariate, multi-horizon quantile forecaster with a constant-size state per series.

    forward(x [B, T, C], state) -> (y [B, T, H, C, Q], state): y[:, t] forecasts x[:, t+1 .. t+H].
    step(x_t [B, C], state)     -> (y_t [B, H, C, Q], state): the same, one observation at a time.
    NaN in x marks a missing value. Forecasts are in the units of x.

    The state's layers: the running level and scale (with norm_halflife), the linear path's window
    (with linear_lookback), then the backbone's layers; channel-independent, every backbone
    tensor is [B, C, ...] (one state per channel of each series).
    """

    def __init__(self, cfg: ModelConfig, backbone: Backbone):
        super().__init__()
        self.config = cfg
        self.encoder = InputEncoder(cfg)
        self.backbone = backbone
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = QuantileHead(cfg)
        # Per-series running level/scale (its state is layers[0] of the model state), or None.
        self.adaptive = (
            AdaptiveNorm(cfg.n_channels, cfg.norm_halflife) if cfg.norm_halflife else None
        )
        # Linear map of the last values (its window is the next layer of the state), or None.
        self.linear = LinearPath(cfg) if cfg.linear_lookback else None
        self.drop = nn.Dropout(cfg.dropout)

    @property
    def quantiles(self) -> tuple[float, ...]:
        return self.config.quantiles

    def _param(self) -> Tensor:
        return self.encoder.proj.weight

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ModelState:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        p = self._param()
        where = torch.device(device) if device is not None else p.device
        dt = dtype or p.dtype
        c = self.config.n_channels
        if self.config.channel_independent:
            inner = self.backbone.init_state(batch_size * c, where, dt)
            layers = tuple(_fold(layer, batch_size) for layer in inner)
        else:
            layers = self.backbone.init_state(batch_size, where, dt)
        prefix: list[NamedTuple] = []
        if self.adaptive is not None:
            prefix.append(self.adaptive.init_state(batch_size, where, dt))
        if self.linear is not None:
            prefix.append(self.linear.init_state(batch_size, c, where, dt))
        return ModelState(self.config.kind, (*prefix, *layers))

    def state_nbytes(self) -> int:
        """Bytes of hidden state per series (a constant of the architecture)."""
        return self.init_state(1).nbytes

    def state_from_bytes(self, blob: bytes) -> ModelState:
        return ModelState.from_bytes(blob, self.init_state(1, device="cpu"))

    @torch.no_grad()
    def fit_scaler(self, x: Tensor) -> None:
        """Per-channel mean and std from training data x [..., C] (NaN ignored)."""
        flat = x.reshape(-1, self.config.n_channels).to(self.encoder.loc.dtype)
        observed = ~torch.isnan(flat)
        count = observed.sum(0)
        if bool((count < 2).any()):
            raise ValueError("fit_scaler needs at least two observed values in every channel")
        filled = torch.where(observed, flat, torch.zeros_like(flat))
        mean = filled.sum(0) / count
        var = (torch.where(observed, flat - mean, torch.zeros_like(flat)) ** 2).sum(0) / count
        std = var.sqrt()
        # A constant channel would divide by zero; scale 1 leaves it centred and finite.
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        self.encoder.loc.copy_(mean)
        self.encoder.scale.copy_(std)

    def point(self, y: Tensor) -> Tensor:
        """Point forecast (the median) from quantile forecasts [..., Q]."""
        return y[..., self.config.median_index]

    def forward(
        self,
        x: Tensor,
        state: ModelState | None = None,
        covariates: Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[Tensor, ModelState]:
        """x [B, T, C] -> (y [B, T, H, C, Q], or [B, H, C, Q] with last_only, state)."""
        self._check(x, covariates, time_axis=True)
        batch = x.shape[0]
        state = self._check_state(state, batch, x)
        z, observed = self.encoder.standardize(x.to(self._param().dtype))
        level, window, backbone_state = self._split(state)
        mean = std = None
        if self.adaptive is not None:
            mean, std, level = self.adaptive.scan(z, observed, level)
            zn = (z - mean) / std
        else:
            zn = z
        feats = self.drop(self.encoder.embed(zn, observed, covariates))
        h, layers = self._run_backbone(feats, backbone_state, time_axis=True)
        if last_only:
            h = h[:, -1]
        offset = None
        if self.linear is not None:
            m, sd = _stats(z, mean, std)
            filled = torch.where(observed, z, m)
            if last_only:
                m, sd = m[:, -1], sd[:, -1]
            # With last_only only the origin's phase is used: read only its covariates.
            at = covariates[:, -1] if last_only and covariates is not None else covariates
            phase = self._phase(at)
            offset, window = self.linear(filled, m, sd, window, last_only=last_only, phase=phase)
        y = self.head(self.drop(self.norm(h)), offset)
        if mean is not None and std is not None:
            y = self._rescale(y, *((mean[:, -1], std[:, -1]) if last_only else (mean, std)))
        return self._to_data_units(y), self._join(level, window, layers)

    def step(
        self, x_t: Tensor, state: ModelState | None = None, covariates: Tensor | None = None
    ) -> tuple[Tensor, ModelState]:
        """x_t [B, C] -> (y_t [B, H, C, Q], next state)."""
        self._check(x_t, covariates, time_axis=False)
        state = self._check_state(state, x_t.shape[0], x_t)
        z, observed = self.encoder.standardize(x_t.to(self._param().dtype))
        level, window, backbone_state = self._split(state)
        mean = std = None
        if self.adaptive is not None:
            mean, std, level = self.adaptive.step(z, observed, level)
            zn = (z - mean) / std
        else:
            zn = z
        feats = self.drop(self.encoder.embed(zn, observed, covariates))
        h, layers = self._run_backbone(feats, backbone_state, time_axis=False)
        offset = None
        if self.linear is not None:
            m, sd = _stats(z, mean, std)
            offset, window = self.linear.step(
                torch.where(observed, z, m), m, sd, window, self._phase(covariates)
            )
        y = self.head(self.drop(self.norm(h)), offset)
        if mean is not None and std is not None:
            y = self._rescale(y, mean, std)
        return self._to_data_units(y), self._join(level, window, layers)

    def _phase(self, covariates: Tensor | None) -> Tensor | None:
        """The phase of the day [...] for the linear path's cycle (None without one)."""
        if not self.config.cycle_length or covariates is None:
            return None
        return cycle_phase(covariates, self.config.cycle_length)

    def _run_backbone(
        self, feats: Tensor, state: LayerStates, time_axis: bool
    ) -> tuple[Tensor, LayerStates]:
        """Features [B, (T,) D] -> backbone output; channel-independent, [B, (T,) C, D] with every
        channel its own series of the backbone (batch B * C, shared weights)."""
        if not self.config.channel_independent:
            return self.backbone(feats, state) if time_axis else self.backbone.step(feats, state)
        batch, c = feats.shape[0], self.config.n_channels
        inner = tuple(_unfold(layer) for layer in state)
        if time_axis:
            # [B, T, C, D] -> [B * C, T, D]
            flat = feats.transpose(1, 2).reshape(batch * c, feats.shape[1], -1)
            h, inner = self.backbone(flat, inner)
            h = h.reshape(batch, c, *h.shape[1:]).transpose(1, 2)
        else:
            h, inner = self.backbone.step(feats.reshape(batch * c, -1), inner)
            h = h.reshape(batch, c, -1)
        return h, tuple(_fold(layer, batch) for layer in inner)

    def _split(self, state: ModelState) -> tuple[Any, Any, LayerStates]:
        layers = state.layers
        level = window = None
        if self.adaptive is not None:
            level, layers = layers[0], layers[1:]
        if self.linear is not None:
            window, layers = layers[0], layers[1:]
        return level, window, layers

    def _join(self, level: Any, window: Any, layers: LayerStates) -> ModelState:
        prefix = tuple(s for s in (level, window) if s is not None)
        return ModelState(self.config.kind, (*prefix, *layers))

    @staticmethod
    def _rescale(y: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """y [..., H, C, Q] in running-normalised units; mean, std [..., C]."""
        return y * std[..., None, :, None] + mean[..., None, :, None]

    def _to_data_units(self, y: Tensor) -> Tensor:
        """Globally scaled [..., H, C, Q] -> the data's units."""
        return y * self.encoder.scale[:, None] + self.encoder.loc[:, None]

    def _check(self, x: Tensor, covariates: Tensor | None, time_axis: bool) -> None:
        cfg = self.config
        lead = "[B, T, C]" if time_axis else "[B, C]"
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor {lead}")
        if x.dim() != (3 if time_axis else 2) or x.shape[-1] != cfg.n_channels or x.shape[0] < 1:
            raise ValueError(
                f"x must have shape {lead} with C={cfg.n_channels}, got {tuple(x.shape)}"
            )
        if time_axis and x.shape[1] < 1:
            raise ValueError("x must hold at least one time step")
        if cfg.n_covariates == 0:
            if covariates is not None:
                raise ValueError("this model takes no covariates (n_covariates=0)")
            return
        if covariates is None:
            raise ValueError(f"this model needs covariates [..., {cfg.n_covariates}]")
        if covariates.shape != (*x.shape[:-1], cfg.n_covariates):
            raise ValueError(
                f"covariates must have shape {(*x.shape[:-1], cfg.n_covariates)}, "
                f"got {tuple(covariates.shape)}"
            )
        if not bool(torch.isfinite(covariates).all()):
            raise ValueError("covariates must be finite (they are known ahead, never missing)")

    def _check_state(self, state: ModelState | None, batch: int, x: Tensor) -> ModelState:
        if state is None:
            return self.init_state(batch, device=x.device)
        if not isinstance(state, ModelState) or state.kind != self.config.kind:
            raise TypeError(f"state must be a ModelState of a {self.config.kind!r} model")
        if state.batch_size != batch:
            raise ValueError(f"state holds {state.batch_size} series but x holds {batch}")
        expected = self._layout(state.named_tensors()[0][1].dtype)
        if state.layout() != expected:
            raise ValueError("state does not match this model's architecture (shapes or dtypes)")
        return state

    def _layout(self, dtype: torch.dtype) -> list[tuple[str, list[int], str]]:
        # Cached per dtype: the check runs on every step and the layout is a constant.
        cache: dict[torch.dtype, list[tuple[str, list[int], str]]] = self.__dict__.setdefault(
            "_layouts", {}
        )
        if dtype not in cache:
            cache[dtype] = self.init_state(1, device="cpu", dtype=dtype).layout()
        return cache[dtype]


def _stats(z: Tensor, mean: Tensor | None, std: Tensor | None) -> tuple[Tensor, Tensor]:
    """The running statistics, or the global ones (0, 1) without a running normalisation."""
    if mean is None or std is None:
        return torch.zeros_like(z), torch.ones_like(z)
    return mean, std


def _fold(layer: NamedTuple, batch: int) -> NamedTuple:
    """A layer state of B * C backbone series -> [B, C, ...] (series first, as ModelState keeps)."""
    return layer._make(t.reshape(batch, -1, *t.shape[1:]) for t in layer)


def _unfold(layer: NamedTuple) -> NamedTuple:
    """[B, C, ...] -> [B * C, ...]."""
    return layer._make(t.reshape(-1, *t.shape[2:]) for t in layer)
