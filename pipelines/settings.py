"""Every environment variable statecast reads for training and tracking, in one place.

See docs/ENVIRONMENT.md for the full list (STATECAST_KERNELS is read by kernels/dispatch.py).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "bound_mlflow_http",
    "home",
    "mlflow_flush_timeout_s",
    "mlflow_http_env",
    "ray_address",
    "tracking_uri",
]

# MLflow retries a failed HTTP call 7 times with backoff factor 2 and a 120 s timeout per try:
# one call to a server that is down takes minutes. statecast's bounds, unless the environment sets
# them: 3 retries, backoff factor 1 (about 1 + 2 + 4 s of waiting, plus jitter), 15 s per try.
# A call to a refused port then fails in ~10 s, one to a hung server in ~70 s.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


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


def mlflow_http_env() -> dict[str, str]:
    """MLFLOW_HTTP_REQUEST_{MAX_RETRIES,BACKOFF_FACTOR,TIMEOUT}: as set, else statecast's bounds."""
    return {k: os.environ.get(k) or v for k, v in MLFLOW_HTTP_DEFAULTS.items()}


def bound_mlflow_http(values: dict[str, str] | None = None) -> None:
    """Put the HTTP bounds into this process' environment, where MLflow reads them per call
    (the driver calls it; Ray workers call it with the driver's values)."""
    os.environ.update(values or mlflow_http_env())


def mlflow_flush_timeout_s() -> float:
    """STATECAST_MLFLOW_FLUSH_TIMEOUT_S (300): how long the end of training waits for metrics
    buffered while the tracking server was unreachable (pipelines/tracking.py)."""
    return float(os.environ.get("STATECAST_MLFLOW_FLUSH_TIMEOUT_S", "300"))
