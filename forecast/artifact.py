"""A trained forecaster on disk: config.json + weights.safetensors (no pickle anywhere).

The weights include the scaler buffers, so a loaded model normalises exactly as in training.
Training writes this folder into MLflow; serving reads it back without importing training code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from forecast.config import ModelConfig
from forecast.model import Forecaster

__all__ = ["load_forecaster", "save_forecaster"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


def save_forecaster(
    model: Forecaster, folder: str | Path, extra: dict[str, object] | None = None
) -> Path:
    """Write the model to `folder`; `extra` (JSON, e.g. data settings) rides in config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"model": model.config.to_dict(), "format": "statecast.forecaster", "version": 1}
    if extra:
        doc["extra"] = extra
    (folder / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_FILE))
    return folder


def load_forecaster(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[Forecaster, dict[str, object]]:
    """Read a folder written by `save_forecaster` -> (model in eval mode, extra)."""
    from forecast import build_model

    folder = Path(folder)
    doc = json.loads((folder / CONFIG_FILE).read_text())
    if not isinstance(doc, dict) or doc.get("format") != "statecast.forecaster":
        raise ValueError(f"{folder}: not a statecast model folder")
    if doc.get("version") != 1:
        raise ValueError(f"{folder}: model format version {doc.get('version')!r} is not supported")
    model = build_model(ModelConfig.from_dict(doc["model"]))
    weights = load_file(str(folder / WEIGHTS_FILE))
    dtype = next(iter(weights.values())).dtype
    model.to(dtype)
    model.load_state_dict(weights, strict=True)
    model.to(device).eval()
    extra = doc.get("extra") or {}
    return model, dict(extra)
