"""Memory and checkpoint bytes per live series, per model kind: the figures to size a stream
processor with (docs/OPERATIONS.md).

    python -m bench.state_bytes [--channels 7 21] [--d-model 32 64] [--lookback 96]

For each kind and size: the model's hidden state (`model.state_nbytes()`), the retained window
the service keeps for re-warming (lookback observations), and one changelog record as written
(`serving/checkpoint.encode_series`), measured on a real SeriesState after `lookback` updates.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from forecast import KINDS, ModelConfig, build_model
from pipelines.calendar import CALENDAR_FEATURES
from serving.checkpoint import encode_series
from serving.observation import Observation
from serving.update import SeriesState, StreamModel, update

HOUR = 3600 * 10**9


def measure(kind: str, channels: int, d_model: int, lookback: int) -> dict[str, int]:
    torch.manual_seed(0)
    cfg = ModelConfig(
        kind=kind,
        n_channels=channels,
        horizon=24,
        d_model=d_model,
        n_covariates=len(CALENDAR_FEATURES),
    )
    names = [f"c{i}" for i in range(channels)]
    extra = {"channels": names, "frequency": "h", "calendar": True, "lookback": lookback}
    m = StreamModel.from_artifact(build_model(cfg), extra, kind)
    state: SeriesState | None = None
    rng = np.random.default_rng(0)
    for t in range(lookback + 1):
        values = rng.standard_normal(channels).astype(np.float32)
        obs = Observation(
            "s", 1_700_000_000 * 10**9 // HOUR * HOUR + t * HOUR, values, np.zeros(0, np.float32)
        )
        state, _ = update(m, state, obs)
    assert state is not None
    retained = state.recent_ts.nbytes + state.recent_values.nbytes + state.recent_static.nbytes
    return {
        "state": m.model.state_nbytes(),
        "retained": retained,
        "record": len(encode_series(state, "layout", 0)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", nargs="+", type=int, default=[7, 21])
    p.add_argument("--d-model", nargs="+", type=int, default=[32, 64])
    p.add_argument("--lookback", type=int, default=96)
    args = p.parse_args()
    print(
        print(
            "| kind | channels | d_model | hidden state B | retained window B | in memory B "
            "| changelog record B | per 1M series (memory) |"
        )
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in KINDS:
        for c in args.channels:
            for d in args.d_model:
                r = measure(kind, c, d, args.lookback)
                mem = r["state"] + r["retained"]
                print(
                    f"| {kind} | {c} | {d} | {r['state']:,} | {r['retained']:,} | {mem:,} | "
                    f"{r['record']:,} | {mem * 10**6 / 2**30:.1f} GiB |"
                )


if __name__ == "__main__":
    main()
