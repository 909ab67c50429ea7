"""ModelState: the constant-size hidden state of a batch of series, and its safe byte format.

A state is a frozen value: the model kind plus one NamedTuple of tensors per layer, every tensor
with the series (batch) dimension first. Serialisation is safetensors (a JSON header and raw
little-endian tensors, never pickle) with metadata naming the format version, the model kind and
the layout (names, per-series shapes, dtypes), so a blob from another model or architecture is
rejected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelState", "StateFormatError"]

FORMAT = "statecast.state"
FORMAT_VERSION = 1


class StateFormatError(ValueError):
    """Bytes that are not a state blob this model can load."""


@dataclass(frozen=True)
class ModelState:
    kind: str
    layers: tuple[NamedTuple, ...]

    # Flat view: ("layers.0.h", tensor), ... in a fixed order.
    def named_tensors(self) -> list[tuple[str, Tensor]]:
        out = []
        for i, layer in enumerate(self.layers):
            for field, value in zip(layer._fields, layer, strict=True):
                out.append((f"layers.{i}.{field}", value))
        return out

    @property
    def batch_size(self) -> int:
        return int(self.named_tensors()[0][1].shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self.named_tensors())

    def layout(self) -> list[tuple[str, list[int], str]]:
        """Names, per-series shapes and dtypes: what must match for a blob to load."""
        return [
            (n, list(t.shape[1:]), str(t.dtype).removeprefix("torch."))
            for n, t in self.named_tensors()
        ]

    def layout_id(self) -> str:
        text = json.dumps([self.kind, self.layout()])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def map(self, fn: Any) -> ModelState:
        """Apply fn to every tensor (e.g. detach, to(device), index)."""
        return ModelState(
            self.kind, tuple(layer._make(fn(t) for t in layer) for layer in self.layers)
        )

    def detach(self) -> ModelState:
        return self.map(lambda t: t.detach())

    def to(self, *args: Any, **kwargs: Any) -> ModelState:
        return self.map(lambda t: t.to(*args, **kwargs))

    def select(self, index: Tensor | Sequence[int] | slice) -> ModelState:
        """The states of some series (index along the batch dimension)."""
        if isinstance(index, slice):
            return self.map(lambda t: t[index])
        idx = torch.as_tensor(index, dtype=torch.long)
        return self.map(lambda t: t.index_select(0, idx.to(t.device)))

    @staticmethod
    def concat(states: Sequence[ModelState]) -> ModelState:
        """Stack the series of several states into one batch."""
        if not states:
            raise ValueError("ModelState.concat needs at least one state")
        first = states[0]
        if any(s.kind != first.kind or s.layout() != first.layout() for s in states):
            raise ValueError("ModelState.concat: states of different models cannot be joined")
        layers = []
        for i, layer in enumerate(first.layers):
            fields = [torch.cat([s.layers[i][j] for s in states], 0) for j in range(len(layer))]
            layers.append(layer._make(fields))
        return ModelState(first.kind, tuple(layers))

    def to_bytes(self) -> bytes:
        tensors = {n: t.detach().contiguous().cpu() for n, t in self.named_tensors()}
        meta = {
            "format": FORMAT,
            "version": str(FORMAT_VERSION),
            "kind": self.kind,
            "layout": self.layout_id(),
        }
        return bytes(st_save(tensors, metadata=meta))

    @staticmethod
    def from_bytes(blob: bytes, template: ModelState) -> ModelState:
        """Decode `blob` into the structure of `template` (a state of the loading model)."""
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise StateFormatError(f"a state blob must be bytes, got {type(blob).__name__}")
        blob = bytes(blob)
        meta = _read_metadata(blob)
        if meta.get("format") != FORMAT:
            raise StateFormatError(f"not a statecast state blob (format {meta.get('format')!r})")
        if meta.get("version") != str(FORMAT_VERSION):
            raise StateFormatError(
                f"state blob version {meta.get('version')!r} is not supported "
                f"(this build reads version {FORMAT_VERSION})"
            )
        if meta.get("kind") != template.kind:
            raise StateFormatError(
                f"state blob is for a {meta.get('kind')!r} model, not {template.kind!r}"
            )
        if meta.get("layout") != template.layout_id():
            raise StateFormatError("state blob layout does not match this model's architecture")
        try:
            tensors = st_load(blob)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise StateFormatError(f"state blob is corrupt: {e}") from e
        expected = template.layout()
        got = sorted(tensors)
        if got != sorted(n for n, _, _ in expected):
            raise StateFormatError(f"state blob tensors {got} do not match the model's state")
        batch = {int(t.shape[0]) if t.dim() else -1 for t in tensors.values()}
        if len(batch) != 1 or min(batch) < 1:
            raise StateFormatError("state blob tensors disagree on the number of series")
        for name, shape, dtype in expected:
            t = tensors[name]
            if list(t.shape[1:]) != shape or str(t.dtype).removeprefix("torch.") != dtype:
                raise StateFormatError(
                    f"state blob tensor {name} has shape/dtype {t.shape}/{t.dtype}"
                )
        layers = []
        for i, layer in enumerate(template.layers):
            layers.append(layer._make(tensors[f"layers.{i}.{f}"] for f in layer._fields))
        return ModelState(template.kind, tuple(layers))


def _read_metadata(blob: bytes) -> dict[str, str]:
    # safetensors: 8-byte little-endian header length, then a JSON header. Checked by hand first so
    # that foreign or truncated bytes get a clear message before any tensor is touched.
    if len(blob) < 8:
        raise StateFormatError(f"state blob is truncated ({len(blob)} bytes)")
    n = int.from_bytes(blob[:8], "little")
    if n <= 0 or 8 + n > len(blob):
        raise StateFormatError("not a statecast state blob, or truncated (bad header length)")
    try:
        header = json.loads(blob[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateFormatError("not a statecast state blob (header is not JSON)") from e
    if not isinstance(header, dict):
        raise StateFormatError("not a statecast state blob (header is not an object)")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        raise StateFormatError("not a statecast state blob (no metadata)")
    try:
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise StateFormatError("not a statecast state blob (bad tensor header)") from e
    if 8 + n + end != len(blob):
        raise StateFormatError(
            f"state blob is truncated or has trailing bytes "
            f"({len(blob)} bytes, expected {8 + n + end})"
        )
    return meta
