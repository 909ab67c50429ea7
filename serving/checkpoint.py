"""Checkpoints of per-series state in a compacted Kafka changelog topic.

Where and why: the changelog topic (default `<group>.state`, cleanup.policy=compact) is
co-partitioned with the observations topic: partition p holds the states of the series read from
input partition p, one record per series (key = series id, value = `encode_series`), plus one
marker record (key `#offsets`) with the next input offset the snapshot reflects. Snapshot records
are written inside the same Kafka transaction that commits that input offset for the consumer
group, so the states and offsets are durable together or not at all, and they live where the
stream lives: any replica on any machine can restore a partition it is handed, with no shared disk
or extra database. Compaction keeps one record per series; an evicted series gets a tombstone.

Restoring partition p: read changelog p to its end (read_committed) -> the states and the marker's
offset S; the consumer group's committed offset C >= S; replay input [S, C) through the same pure
update without producing (those forecasts were already committed), then consume from C.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from serving.update import SeriesState

__all__ = ["MARKER_KEY", "SERIES_FORMAT", "Marker", "decode_series", "encode_series"]

SERIES_FORMAT = "statecast.series"
SERIES_VERSION = "1"
# '#' is not allowed in series ids, so the marker can never collide with a series.
MARKER_KEY = b"#offsets"


@dataclass(frozen=True)
class Marker:
    offset: int  # next input offset of this partition that the snapshot does not include
    model: str  # label of the model the states belong to
    layout: str  # layout id of the model's state

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"offset": self.offset, "model": self.model, "layout": self.layout}
        ).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Marker:
        doc = json.loads(raw)
        return Marker(int(doc["offset"]), str(doc["model"]), str(doc["layout"]))


def encode_series(state: SeriesState, layout: str, offset: int) -> bytes:
    """`offset`: the input offset of the series' last record (for the idle policy)."""
    tensors = {
        "hidden": state.hidden.contiguous(),
        "recent_ts": torch.from_numpy(np.ascontiguousarray(state.recent_ts)),
        "recent_values": torch.from_numpy(np.ascontiguousarray(state.recent_values)),
        "recent_static": torch.from_numpy(np.ascontiguousarray(state.recent_static)),
    }
    meta = {
        "format": SERIES_FORMAT,
        "version": SERIES_VERSION,
        "layout": layout,
        "last_ts": str(state.last_ts),
        "steps": str(state.steps),
        "offset": str(offset),
    }
    return bytes(st_save(tensors, metadata=meta))


def decode_series(raw: bytes) -> tuple[SeriesState, str, int]:
    """-> (state, layout id it was written under, offset). Raises ValueError on anything else."""
    try:
        tensors = st_load(raw)

        n = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + n]).get("__metadata__") or {}
    except (SafetensorError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise ValueError(f"not a series checkpoint: {e}") from e
    if meta.get("format") != SERIES_FORMAT or meta.get("version") != SERIES_VERSION:
        raise ValueError("not a statecast series checkpoint of this version")
    need = {"hidden", "recent_ts", "recent_values", "recent_static"}
    if set(tensors) != need:
        raise ValueError(f"series checkpoint holds {sorted(tensors)}, expected {sorted(need)}")
    state = SeriesState(
        hidden=tensors["hidden"],
        last_ts=int(meta["last_ts"]),
        steps=int(meta["steps"]),
        recent_ts=tensors["recent_ts"].numpy().astype(np.int64),
        recent_values=tensors["recent_values"].numpy().astype(np.float32),
        recent_static=tensors["recent_static"].numpy().astype(np.float32),
    )
    return state, str(meta.get("layout")), int(meta["offset"])
