from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from forecast import ModelConfig, build_model
from serving.update import StreamModel

CHANNELS = ("a", "b", "c")
HOUR = 3600 * 10**9
T0 = 1_700_000_000 * 10**9 // HOUR * HOUR  # an hour boundary


def small_stream_model(
    kind: str = "selective_ssm",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **overrides: object,
) -> StreamModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        kind=kind,
        n_channels=3,
        horizon=4,
        d_model=16,
        n_layers=2,
        d_state=4,
        n_covariates=7,
        **overrides,
    )  # type: ignore[arg-type]
    model = build_model(cfg).to(dtype).to(dtype)
    extra = {
        "channels": list(CHANNELS),
        "frequency": "h",
        "calendar": True,
        "static_covariates": ["elevation"],
        "lookback": 8,
    }
    return StreamModel.from_artifact(model, extra, f"test/{kind}/{seed}")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """As the worker does (serving/worker.py): small steps run faster on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stream_model() -> StreamModel:
    return small_stream_model()
