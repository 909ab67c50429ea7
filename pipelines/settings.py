"""Every environment variable statecast reads for training and tracking, in one place.

See docs/ENVIRONMENT.md for the full list (STATECAST_KERNELS is read by kernels/dispatch.py).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["home", "ray_address", "tracking_uri"]


def home() -> Path:
    """STATECAST_HOME: where the embedded defaults keep their files (default ./.statecast)."""
    return Path(os.environ.get("STATECAST_HOME", ".statecast")).resolve()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set; else a local sqlite store under STATECAST_HOME/mlflow."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    folder = home() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def artifact_root() -> str:
    """Artifact folder for experiments created against the embedded sqlite store."""
    folder = home() / "mlflow" / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()


def ray_address() -> str | None:
    """RAY_ADDRESS: join that cluster; unset starts a local Ray."""
    return os.environ.get("RAY_ADDRESS") or None
