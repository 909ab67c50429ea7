"""Checkpoints of per-series state in a compacted Kafka changelog topic.

Where and why: the changelog topic (default `<group>.state`, cleanup.policy=compact) is
co-partitioned with the observations topic: partition p holds the states of the series read from
input partition p, one record per series (key = series id, value = `encode_series`), plus one
marker record (key `#offsets`): the input offset from which replay reproduces every change the
changelog does not hold yet. Writes are incremental (serving/processor.py): a state goes out
about one interval after its series first changed, inside the same Kafka transaction that
commits input offsets for the consumer group, so states, markers and offsets are durable together
or not at all, and they live where the stream lives: any replica on any machine can restore a
partition it is handed, with no shared disk or extra database. Compaction keeps one record per
series; an evicted series gets a tombstone.

Restoring partition p: read changelog p to its end (read_committed) -> the states and the marker's
offset S; the consumer group's committed offset C >= S; replay input [S, C) through the same pure
update without producing (those forecasts were already committed), skipping each record at or
below the offset its series' state holds, then consume from C.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

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
    arrays = {
        "hidden": state.hidden.numpy(),
        "recent_ts": state.recent_ts,
        "recent_values": state.recent_values,
        "recent_static": state.recent_static,
    }
    meta = {
        "format": SERIES_FORMAT,
        "version": SERIES_VERSION,
        "layout": layout,
        "last_ts": str(state.last_ts),
        "steps": str(state.steps),
        "offset": str(offset),
    }
    return _safetensors(arrays, meta)


_DTYPES = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<i8"): "I64"}


def _safetensors(arrays: dict[str, np.ndarray], meta: dict[str, str]) -> bytes:
    """The safetensors layout, written directly: an 8-byte little-endian header length, the
    JSON header (names, dtypes, shapes, byte ranges; padded with spaces to 8 bytes), then the
    arrays back to back. safetensors' own `save` costs ~200 us a call in Python overhead, which a
    checkpoint of 100,000 series pays 100,000 times; `decode_series` reads it with safetensors."""
    header: dict[str, object] = {"__metadata__": meta}
    blobs, at = [], 0
    for name, a in arrays.items():
        dtype = _DTYPES[a.dtype.newbyteorder("<")]  # KeyError: not a dtype the format takes
        blob = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(a.shape),
            "data_offsets": [at, at + len(blob)],
        }
        blobs.append(blob)
        at += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return b"".join([len(text).to_bytes(8, "little"), text, *blobs])


def decode_series(
    raw: bytes, layout: str | None = None, width: int | None = None
) -> tuple[SeriesState, str, int]:
    """-> (state, layout id it was written under, offset). Bytes from outside are data: parsed
    as safetensors (a JSON header and raw little-endian arrays, nothing executed), then checked
    field by field. Anything else (pickle, truncated, forged sizes, wrong version, dtypes or
    shapes, and with `layout` / `width` given, another model's state) raises ValueError."""
    try:
        tensors = st_load(raw)
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
    except (SafetensorError, ValueError, RuntimeError, UnicodeDecodeError, TypeError) as e:
        raise ValueError(f"not a series checkpoint: {e}") from e
    meta = header.get("__metadata__") or {}
    if meta.get("format") != SERIES_FORMAT or meta.get("version") != SERIES_VERSION:
        raise ValueError("not a statecast series checkpoint of this version")
    need = {"hidden", "recent_ts", "recent_values", "recent_static"}
    if set(tensors) != need:
        raise ValueError(f"series checkpoint holds {sorted(tensors)}, expected {sorted(need)}")
    hidden, rts = tensors["hidden"], tensors["recent_ts"]
    rv, rs = tensors["recent_values"], tensors["recent_static"]
    kinds = (hidden.dtype, rts.dtype, rv.dtype, rs.dtype)
    if hidden.dtype not in (torch.float32, torch.float64) or kinds[1:] != (
        torch.int64,
        torch.float32,
        torch.float32,
    ):
        raise ValueError(f"series checkpoint has dtypes {kinds}")
    rows = rts.shape[0] if rts.dim() == 1 else -1
    if (
        hidden.dim() != 1
        or rv.dim() != 2
        or rs.dim() != 2
        or not rows == rv.shape[0] == rs.shape[0]
    ):
        raise ValueError(
            f"series checkpoint shapes {[list(t.shape) for t in (hidden, rts, rv, rs)]} do not fit"
        )
    if width is not None and hidden.shape[0] != width:
        raise ValueError(f"series state has {hidden.shape[0]} values; the model's has {width}")
    if layout is not None and meta.get("layout") != layout:
        raise ValueError(f"series state is of layout {meta.get('layout')!r}, not {layout!r}")
    try:
        last_ts, steps, offset = (int(meta[k]) for k in ("last_ts", "steps", "offset"))
    except (KeyError, ValueError) as e:
        raise ValueError(f"series checkpoint metadata: {e!r}") from e
    if not all(-(2**63) <= v < 2**63 for v in (last_ts, steps, offset)) or steps < 0:
        raise ValueError("series checkpoint metadata out of range")
    state = SeriesState(
        hidden=hidden,
        last_ts=last_ts,
        steps=steps,
        recent_ts=rts.numpy(),
        recent_values=rv.numpy(),
        recent_static=rs.numpy(),
    )
    return state, str(meta.get("layout")), offset
