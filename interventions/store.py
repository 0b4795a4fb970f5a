"""Activation stores keyed by (site, step, branch): in memory, offloaded to CPU, or streamed to
safetensors shards on disk with a bounded memory buffer. ``Cache`` writes to a store and
``Patch`` reads from one.

``step`` is the denoising step for denoiser sites and the call index otherwise; ``branch`` is
``"cond"``/``"uncond"`` for CFG rows and None where the call has no branches. A module that runs
more than once in one call (a shared layer) keys its later invocations with a fourth element, the
invocation index: ``(site, step, branch, 1)``; the first invocation is the plain three-part key,
and a four-part key with invocation 0 means the same entry (:func:`store_key`).

``put`` replaces what a key holds; ``append`` adds a part to it (``Cache(on_repeat="append")``: the
activations of many prompts, one pipeline call each, under the same keys). ``get`` returns the
parts concatenated along the batch dimension, ``parts`` yields them one at a time (bounded memory).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import StoreError

StoreKey = tuple[str, int | None, str | None] | tuple[str, int | None, str | None, int]


def store_key(site: str, step: int | None, branch: str | None, invocation: int = 0) -> StoreKey:
    """The one key of a cached entry: ``(site, step, branch)``, plus the invocation index when a
    module ran more than once in one call (the first invocation keeps the three-part key, so keys
    of models without repeated modules read as they always did)."""
    return (site, step, branch, invocation) if invocation else (site, step, branch)


def normal_key(key: tuple) -> StoreKey:  # type: ignore[type-arg]
    """A key as stores hold it: a four-part key with invocation 0 is the three-part key."""
    if len(key) == 4 and key[3] == 0:
        return key[:3]  # type: ignore[return-value]
    if len(key) not in (3, 4):
        raise KeyError(f"a store key is (site, step, branch) or (site, step, branch, invocation), got {key!r}")
    return key  # type: ignore[return-value]


class Store(Protocol):
    """What the engine and the hooks call on a store (``Cache``, ``Patch``, ``Grads``, SAE training)."""

    def put(self, key: StoreKey, tensor: torch.Tensor) -> None: ...
    def put_rows(
        self, key: StoreKey, tensor: torch.Tensor, segments: Sequence[tuple[str | None, slice]]
    ) -> None: ...
    def append(self, key: StoreKey, tensor: torch.Tensor) -> None: ...
    def get(self, key: StoreKey) -> torch.Tensor: ...
    def parts(self, key: StoreKey) -> Iterator[torch.Tensor]: ...
    def __contains__(self, key: object) -> bool: ...
    def keys(self) -> list[StoreKey]: ...
    def __len__(self) -> int: ...


def _missing(key: StoreKey, keys: list[StoreKey]) -> KeyError:
    site, step, branch = key[:3]
    near = [k for k in keys if k[0] == site][:6]
    where = f"entries for this site: {near}" if near else f"sites stored: {sorted({k[0] for k in keys})[:8]}"
    invocation = f", invocation {key[3]}" if len(key) == 4 else ""
    return KeyError(f"no cached activation for site {site!r}, step {step}, branch {branch!r}{invocation}; {where}")


def with_branch(key: StoreKey, branch: str | None) -> StoreKey:
    """``key`` with its branch replaced (one CFG block's rows of a batched call)."""
    return (key[0], key[1], branch, *key[3:])  # type: ignore[return-value]


def _moved(tensor: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """``tensor`` on ``device``. Only a host-to-device copy from pinned memory runs asynchronously
    (work on the device is ordered after it); a copy to the host waits for the data, since the
    CPU may read it at once and an asynchronous copy could still be filling it."""
    if device is None or tensor.device == device:
        return tensor
    return tensor.to(device, non_blocking=device.type != "cpu" and tensor.is_pinned())


class _Rows:
    """Some rows of a stored batch, sliced when first read (slicing at every fire is the costly part
    of caching a batched CFG call)."""

    __slots__ = ("tensor", "rows")

    def __init__(self, tensor: torch.Tensor, rows: slice) -> None:
        self.tensor, self.rows = tensor, rows


def _concat(key: StoreKey, parts: list[torch.Tensor]) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0]
    shapes = {tuple(p.shape[1:]) for p in parts}
    if len(shapes) > 1:
        raise StoreError(
            f"{key} holds parts of different shapes {sorted(shapes)} beyond the batch dimension: "
            "read them with store.parts(key)"
        )
    return torch.cat(parts)


class _Parts(list):
    """The appended parts of one key (a list subclass: told apart from a tensor by its type)."""


class MemoryStore:
    """A dict of tensors, optionally moved to ``device`` (``"cpu"`` offloads GPU activations; a
    copy to the CPU completes before ``put`` returns, so ``get`` never reads a half-filled one)."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self._data: dict[StoreKey, torch.Tensor | _Rows | _Parts] = {}

    def put(self, key: StoreKey, tensor: torch.Tensor) -> None:
        self._data[normal_key(key) if len(key) != 3 else key] = _moved(tensor, self.device)

    def append(self, key: StoreKey, tensor: torch.Tensor) -> None:
        """Add ``tensor`` as a further part of ``key`` (the first part when the key is new)."""
        key = normal_key(key)
        if key not in self._data:
            self._data[key] = _moved(tensor, self.device)
            return
        parts = self._data[key] if type(self._data[key]) is _Parts else _Parts([self._resolved(key)])
        parts.append(_moved(tensor, self.device))  # type: ignore[union-attr]
        self._data[key] = parts

    def put_rows(self, key: StoreKey, tensor: torch.Tensor, segments: Sequence[tuple[str | None, slice]]) -> None:
        """Store each CFG branch's rows of one batched tensor under ``key`` with that branch
        (the rows are sliced when first read: one copy, no split at every fire)."""
        tensor = _moved(tensor, self.device)
        data = self._data
        for branch, rows in segments:
            data[with_branch(key, branch)] = _Rows(tensor, rows)

    def get(self, key: StoreKey) -> torch.Tensor:
        value = self._resolved(key)
        return _concat(key, value) if type(value) is _Parts else value  # type: ignore[return-value, arg-type]

    def parts(self, key: StoreKey) -> Iterator[torch.Tensor]:
        value = self._resolved(key)
        yield from value if type(value) is _Parts else [value]  # type: ignore[misc]

    def _resolved(self, key: StoreKey) -> torch.Tensor | _Parts:
        try:
            value = self._data[key]
        except KeyError:
            if normal_key(key) not in self._data:
                raise _missing(key, list(self._data)) from None
            key = normal_key(key)
            value = self._data[key]
        if type(value) is _Rows:
            value = self._data[key] = value.tensor[value.rows]
        return value  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        return key in self._data or (isinstance(key, tuple) and len(key) == 4 and normal_key(key) in self._data)

    def keys(self) -> list[StoreKey]:
        return list(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


# what a buffered entry costs beyond its data (tensor object, storage, key): counted against the
# budget, so that many tiny activations stay within it too
_ENTRY_OVERHEAD = 1024


_SHARD = re.compile(r"shard-(\d{5}|[1-9]\d{5,})\.safetensors")  # the names flush writes


def _tensor_name(key: StoreKey, part: int = 0) -> str:
    """``[site, step, branch]`` as JSON; a key's further appended parts add their number, and a
    later invocation adds its index after the part: ``[site, step, branch, part, invocation]``."""
    if len(key) == 4:
        return json.dumps([*key[:3], part, key[3]])
    return json.dumps([*key, part] if part else list(key))


def _key_of(name: str) -> tuple[StoreKey, int] | None:
    """The store key and part number a tensor name encodes, or None when it encodes none."""
    try:
        key = json.loads(name)
    except ValueError:
        return None
    if not (isinstance(key, list) and len(key) in (3, 4, 5) and isinstance(key[0], str)):
        return None
    part, invocation = (key[3:] + [0, 0])[:2]
    if not (isinstance(part, int) and part >= 0 and isinstance(invocation, int) and invocation >= 0):
        return None
    return store_key(key[0], key[1], key[2], invocation), part


def _shard_keys(path: Path) -> list[tuple[StoreKey, int]]:
    """``(key, part)`` of every tensor in one shard, parts in order; a file that is no shard of a
    store is refused by name."""
    fix = "move it out of the folder (or open the store on another folder)"
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
    except Exception as exc:  # safetensors raises its own error types (truncated file, bad header)
        raise StoreError(
            f"{path} is named like a store shard but is not a readable safetensors file ({exc}); {fix}"
        ) from exc
    keys = [_key_of(name) for name in names]
    bad = [n for n, k in zip(names, keys, strict=True) if k is None]
    if bad:
        raise StoreError(
            f"{path} is named like a store shard but holds tensors not named by a store key "
            f"(a JSON list [site, step, branch], with optional part and invocation), e.g. {bad[0]!r}; {fix}"
        )
    return sorted((k for k in keys if k is not None), key=lambda entry: entry[1])


class DiskStore:
    """Safetensors shards under ``path``; at most ``buffer_bytes`` of activations stay in memory
    (each entry counts its data plus a fixed 1 kB for its objects; the key index is not counted).

    Entries are buffered on the CPU and written as ``shard-00000.safetensors``, ... when the
    buffer is full (and on :meth:`flush`). Each tensor is named by its JSON-encoded key (and part
    number, for appended parts after the first), so the shards' own headers are the index (read
    when a store is reopened; a later ``put`` of a key supersedes its earlier parts). Reading
    opens the shard lazily, so a store much larger than memory can be streamed.

    A shard appears under its name only once fully written (a temporary file, then a rename), so a
    crash while flushing loses that buffer but leaves every earlier shard readable. Reopening reads
    every ``shard-<number>.safetensors`` and refuses, naming it, one that is not a shard of a
    store; other files in the folder are not the store's and are left alone.

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
        self._buffer: dict[StoreKey, list[torch.Tensor]] = {}  # parts waiting to be written
        self._replacing: set[StoreKey] = set()  # buffered keys whose parts supersede those on disk
        self._buffered = 0
        # key -> the shard of each of its parts (part i is tensor _tensor_name(key, i)); a bare shard
        # name for the usual one-part key keeps the index as small as one string per key
        self._index: dict[StoreKey, str | list[str]] = {}
        numbered = {int(m[1]): p.name for p in self.path.iterdir() if (m := _SHARD.fullmatch(p.name))}
        for n in sorted(numbered):
            for key, part in _shard_keys(self.path / numbered[n]):
                # part 0 is a key's first part (put, or a first append): it supersedes older parts
                self._index[key] = numbered[n] if part == 0 else [*self._shards(key), numbered[n]]
        self._next_shard = max(numbered, default=-1) + 1

    def put(self, key: StoreKey, tensor: torch.Tensor) -> None:
        key = normal_key(key)
        for old in self._buffer.pop(key, []):
            self._buffered -= old.nbytes + _ENTRY_OVERHEAD
        self._replacing.add(key)
        self._add(key, tensor)

    def append(self, key: StoreKey, tensor: torch.Tensor) -> None:
        """Add ``tensor`` as a further part of ``key`` (the first part when the key is new)."""
        key = normal_key(key)
        if key not in self:
            self._replacing.add(key)
        self._add(key, tensor)

    def _add(self, key: StoreKey, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor._base is not None:  # a view (one CFG branch's rows): safetensors needs its own storage
            tensor = tensor.clone()
        self._buffer.setdefault(key, []).append(tensor)
        self._buffered += tensor.nbytes + _ENTRY_OVERHEAD
        if self._buffered >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        """Write buffered entries as one new shard, atomically: if writing fails, no shard file
        appears and the entries stay buffered (a later flush retries)."""
        if not self._buffer:
            return
        shard = f"shard-{self._next_shard:05d}.safetensors"
        tmp = self.path / f".{shard}.tmp"  # in the same folder: the rename cannot cross devices
        names: dict[StoreKey, list[str]] = {}
        tensors: dict[str, torch.Tensor] = {}
        for key, parts in self._buffer.items():
            first = 0 if key in self._replacing else len(self._shards(key))
            names[key] = [_tensor_name(key, first + i) for i in range(len(parts))]
            tensors.update(zip(names[key], parts, strict=True))
        try:
            save_file(tensors, str(tmp))
            os.replace(tmp, self.path / shard)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._next_shard += 1
        for key, written in names.items():
            shards = ([] if key in self._replacing else self._shards(key)) + [shard] * len(written)
            self._index[key] = shards[0] if len(shards) == 1 else shards
        self._buffer.clear()
        self._replacing.clear()
        self._buffered = 0

    def put_rows(self, key: StoreKey, tensor: torch.Tensor, segments: Sequence[tuple[str | None, slice]]) -> None:
        """Store each CFG branch's rows of one batched tensor under ``key`` with that branch."""
        for branch, rows in segments:
            self.put(with_branch(key, branch), tensor[rows])

    def get(self, key: StoreKey) -> torch.Tensor:
        return _concat(key, list(self.parts(key)))

    def parts(self, key: StoreKey) -> Iterator[torch.Tensor]:
        """The parts of ``key`` in the order they were added, each read from disk when reached."""
        key = normal_key(key)
        if key not in self:
            raise _missing(key, self.keys())
        if key not in self._replacing:
            for part, shard in enumerate(self._shards(key)):
                with safe_open(str(self.path / shard), framework="pt") as f:
                    yield f.get_tensor(_tensor_name(key, part))
        yield from self._buffer.get(key, [])

    def _shards(self, key: StoreKey) -> list[str]:
        found = self._index.get(key, [])
        return [found] if isinstance(found, str) else list(found)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, tuple) and len(key) == 4:
            key = normal_key(key)
        return key in self._buffer or key in self._index

    def keys(self) -> list[StoreKey]:
        return list(dict.fromkeys([*self._index, *self._buffer]))

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[StoreKey]:
        return iter(self.keys())
