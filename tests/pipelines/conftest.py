"""A real local Ray and a real MLflow store (sqlite + artifact folder) for the pipeline tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real MLflow sqlite store and a local Ray for one test module.

    Module scope, not package: test_submit.py starts and stops a `ray start --head` cluster of its
    own, and `ray stop` ends every Ray process on the machine, a local Ray included.
    """
    import ray

    home = tmp_path_factory.mktemp("statecast_home")
    old = {k: os.environ.get(k) for k in ("STATECAST_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["STATECAST_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield home
    finally:
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
