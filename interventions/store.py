"""Activation stores keyed by (site, step, branch): in memory, offloaded to CPU, or streamed to
safetensors shards on disk with a bounded memory buffer. ``Cache`` writes to a store and
``Patch`` reads from one.

``step`` is the denoising step for denoiser sites and the call index otherwise; ``branch`` is
``"cond"``/``"uncond"`` for CFG rows and None where the call has no branches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save_file

StoreKey = tuple[str, int | None, str | None]


class Store(Protocol):
    def put(self, key: StoreKey, tensor: torch.Tensor) -> None: ...
    def get(self, key: StoreKey) -> torch.Tensor: ...
    def __contains__(self, key: object) -> bool: ...
    def keys(self) -> list[StoreKey]: ...
    def __len__(self) -> int: ...


def _missing(key: StoreKey, keys: list[StoreKey]) -> KeyError:
    site, step, branch = key
    near = [k for k in keys if k[0] == site][:6]
    where = f"entries for this site: {near}" if near else f"sites stored: {sorted({k[0] for k in keys})[:8]}"
    return KeyError(f"no cached activation for site {site!r}, step {step}, branch {branch!r}; {where}")


class _Rows:
    """Some rows of a stored batch, sliced when first read (slicing at every fire is the costly part
    of caching a batched CFG call)."""

    __slots__ = ("tensor", "rows")

    def __init__(self, tensor: torch.Tensor, rows: slice) -> None:
        self.tensor, self.rows = tensor, rows


class MemoryStore:
    """A dict of tensors, optionally moved to ``device`` (``"cpu"`` offloads GPU activations)."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self._data: dict[StoreKey, torch.Tensor | _Rows] = {}

    def put(self, key: StoreKey, tensor: torch.Tensor) -> None:
        if self.device is not None and tensor.device != self.device:
            tensor = tensor.to(self.device, non_blocking=self.device.type == "cpu")
        self._data[key] = tensor

    def put_rows(
        self, site: str, step: int | None, tensor: torch.Tensor, segments: Sequence[tuple[str | None, slice]]
    ) -> None:
        """Store each CFG branch's rows of one batched tensor under ``(site, step, branch)``."""
        if self.device is not None and tensor.device != self.device:
            tensor = tensor.to(self.device, non_blocking=self.device.type == "cpu")
        data = self._data
        for branch, rows in segments:
            data[(site, step, branch)] = _Rows(tensor, rows)

    def get(self, key: StoreKey) -> torch.Tensor:
        try:
            value = self._data[key]
        except KeyError:
            raise _missing(key, list(self._data)) from None
        if type(value) is _Rows:
            value = self._data[key] = value.tensor[value.rows]
        return value  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def keys(self) -> list[StoreKey]:
        return list(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


# what a buffered entry costs beyond its data (tensor object, storage, key): counted against the
# budget, so that many tiny activations stay within it too
_ENTRY_OVERHEAD = 1024


def _tensor_name(key: StoreKey) -> str:
    return json.dumps(list(key))


class DiskStore:
    """Safetensors shards under ``path``; at most ``buffer_bytes`` of activations stay in memory
    (each entry counts its data plus a fixed 1 kB for its objects; the key index is not counted).

    Entries are buffered on the CPU and written as ``shard-00000.safetensors``, ... when the
    buffer is full (and on :meth:`flush`). Each tensor is named by its JSON-encoded key, so the
    shards' own headers are the index (read when a store is reopened). Reading opens the shard
    lazily, so a store much larger than memory can be streamed.

    >>> import tempfile
    >>> store = DiskStore(tempfile.mkdtemp(), buffer_bytes=1024)
    >>> store.put(("blocks.0", 0, "cond"), torch.ones(4, 8))
    >>> store.flush(); store.get(("blocks.0", 0, "cond")).shape
    torch.Size([4, 8])
    """

    def __init__(self, path: str | os.PathLike[str], buffer_bytes: int = 256 << 20) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.buffer_bytes = int(buffer_bytes)
        self._buffer: dict[StoreKey, torch.Tensor] = {}
        self._buffered = 0
        self._index: dict[StoreKey, str] = {}
        shards = sorted(p.name for p in self.path.glob("shard-*.safetensors"))
        for shard in shards:
            with safe_open(str(self.path / shard), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    self._index[tuple(json.loads(name))] = shard  # type: ignore[assignment]
        self._next_shard = int(shards[-1][6:11]) + 1 if shards else 0

    def put(self, key: StoreKey, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor._base is not None:  # a view (one CFG branch's rows): safetensors needs its own storage
            tensor = tensor.clone()
        if key in self._buffer:
            self._buffered -= self._buffer[key].nbytes + _ENTRY_OVERHEAD
        self._buffer[key] = tensor
        self._buffered += tensor.nbytes + _ENTRY_OVERHEAD
        if self._buffered >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        """Write buffered entries as one new shard."""
        if not self._buffer:
            return
        shard = f"shard-{self._next_shard:05d}.safetensors"
        self._next_shard += 1
        save_file({_tensor_name(k): t for k, t in self._buffer.items()}, str(self.path / shard))
        for k in self._buffer:
            self._index[k] = shard
        self._buffer.clear()
        self._buffered = 0

    def get(self, key: StoreKey) -> torch.Tensor:
        if key in self._buffer:
            return self._buffer[key]
        shard = self._index.get(key)
        if shard is None:
            raise _missing(key, self.keys())
        with safe_open(str(self.path / shard), framework="pt") as f:
            return f.get_tensor(_tensor_name(key))

    def __contains__(self, key: object) -> bool:
        return key in self._buffer or key in self._index

    def keys(self) -> list[StoreKey]:
        return list(dict.fromkeys([*self._index, *self._buffer]))

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[StoreKey]:
        return iter(self.keys())
