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

import fcntl
import json
import os
import re
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .context import StoreKey
from .durable import publish
from .errors import StoreError


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

    def put(self, key: StoreKey, tensor: torch.Tensor) -> bool:
        """Store ``tensor`` under ``key``; True if ``key`` was held (its entry replaced)."""
        ...

    def put_rows(
        self, key: StoreKey, tensor: torch.Tensor, segments: Sequence[tuple[str | None, slice]]
    ) -> StoreKey | None:
        """Store each branch's rows under ``key`` with that branch (each branch named once); the
        first of those keys that was already held, or None."""
        ...

    def append(self, key: StoreKey, tensor: torch.Tensor) -> None: ...
    def get(self, key: StoreKey) -> torch.Tensor: ...
    def parts(self, key: StoreKey) -> Iterator[torch.Tensor]: ...
    def __contains__(self, key: object) -> bool: ...
    def keys(self) -> list[StoreKey]: ...
    def keys_of(self, site: str) -> list[StoreKey]: ...
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


class _Rows(tuple):  # type: ignore[type-arg]
    """A stored batch whose CFG branches are read as row blocks, each sliced when first read
    (slicing at every fire is the costly part of caching a batched CFG call): one record, held
    under each branch's key. ``_Rows((tensor, segments))``: a tuple, made without a Python-level
    ``__init__`` (it is made at every fire)."""

    __slots__ = ()

    def of(self, branch: str | None) -> torch.Tensor:
        tensor, segments = self
        return tensor[next(rows for name, rows in segments if name == branch)]


def _concat(key: StoreKey, parts: list[torch.Tensor]) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0]
    _joinable(key, [tuple(p.shape) for p in parts])
    return torch.cat(parts)


class _Parts(list):
    """The appended parts of one key (a list subclass: told apart from a tensor by its type)."""


class _SiteIndex:
    """A store's keys grouped by site, rebuilt only when the store changed since (``stamp``), so
    that reading every site of a cache costs one pass over its keys, not one pass per site."""

    __slots__ = ("stamp", "by_site")

    def __init__(self) -> None:
        self.stamp: object = None
        self.by_site: dict[str, list[StoreKey]] = {}

    def keys_of(self, site: str, stamp: object, keys: Callable[[], Iterable[StoreKey]]) -> list[StoreKey]:
        if stamp != self.stamp:
            by_site: dict[str, list[StoreKey]] = {}
            for key in keys():
                by_site.setdefault(key[0], []).append(key)
            self.by_site, self.stamp = by_site, stamp
        return self.by_site.get(site, [])


class MemoryStore:
    """A dict of tensors, optionally moved to ``device`` (``"cpu"`` offloads GPU activations; a
    copy to the CPU completes before ``put`` returns, so ``get`` never reads a half-filled one)."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self._data: dict[StoreKey, torch.Tensor | _Rows | _Parts] = {}
        self._sites = _SiteIndex()
        self._cleared = 0  # keys only come and go all at once: (clears, count) says which are held

    def put(self, key: StoreKey, tensor: torch.Tensor) -> bool:
        """Store ``tensor`` under ``key``; True if ``key`` was held (``Cache`` warns then, without a
        lookup of its own before each put: a call per fire)."""
        if self.device is not None:
            tensor = _moved(tensor, self.device)
        data = self._data
        key = normal_key(key) if len(key) != 3 else key
        held = key in data
        data[key] = tensor
        return held

    def append(self, key: StoreKey, tensor: torch.Tensor) -> None:
        """Add ``tensor`` as a further part of ``key`` (the first part when the key is new)."""
        key = normal_key(key)
        if key not in self._data:
            self._data[key] = _moved(tensor, self.device)
            return
        parts = self._data[key] if type(self._data[key]) is _Parts else _Parts([self._resolved(key)])
        parts.append(_moved(tensor, self.device))  # type: ignore[union-attr]
        self._data[key] = parts

    def put_rows(
        self, key: StoreKey, tensor: torch.Tensor, segments: Sequence[tuple[str | None, slice]]
    ) -> StoreKey | None:
        """Store each CFG branch's rows of one batched tensor under ``key`` with that branch
        (the rows are sliced when first read: one copy, no split at every fire); the first of
        those keys that was already held, or None. Reporting it here spares ``Cache`` a lookup
        before each put, a call per fire."""
        batch = _Rows((tensor if self.device is None else _moved(tensor, self.device), segments))
        data, site, step = self._data, key[0], key[1]
        later = key[3:] if len(key) == 4 and key[3] else ()  # invocation 0: the three-part key
        held = None
        for branch, _ in segments:
            branch_key = (site, step, branch, *later)  # with_branch, inlined
            if held is None and branch_key in data:
                held = branch_key
            data[branch_key] = batch
        return held

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
            value = self._data[key] = value.of(key[2])
        return value  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        return key in self._data or (isinstance(key, tuple) and len(key) == 4 and normal_key(key) in self._data)

    def keys(self) -> list[StoreKey]:
        return list(self._data)

    def keys_of(self, site: str) -> list[StoreKey]:
        """The keys of one site (amortised O(1): an index rebuilt only after the store grew)."""
        return self._sites.keys_of(site, (self._cleared, len(self._data)), self._data.keys)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()
        self._cleared += 1


# what a buffered entry costs beyond its data (tensor object, storage, key): counted against the
# budget, so that many tiny activations stay within it too
_ENTRY_OVERHEAD = 1024


_SHARD = re.compile(r"shard-(\d{5}|[1-9]\d{5,})\.safetensors")  # the names flush writes
_LOCK = ".writer.lock"  # flock-ed by the one DiskStore object that writes the folder


def _tensor_name(key: StoreKey, part: int = 0) -> str:
    """``[site, step, branch]`` as JSON; a key's further appended parts add their number, and a
    later invocation adds its index after the part: ``[site, step, branch, part, invocation]``."""
    if len(key) == 4:
        return json.dumps([*key[:3], part, key[3]])
    return json.dumps([*key, part] if part else list(key))


def key_of(name: str) -> tuple[StoreKey, int] | None:
    """The store key and part number a tensor name encodes, or None when it encodes none."""
    try:
        key = json.loads(name)
    except (ValueError, RecursionError):  # a deeply nested name is no key either
        return None
    if not (isinstance(key, list) and len(key) in (3, 4, 5) and isinstance(key[0], str)):
        return None
    part, invocation = (key[3:] + [0, 0])[:2]
    if not (isinstance(part, int) and part >= 0 and isinstance(invocation, int) and invocation >= 0):
        return None
    return store_key(key[0], key[1], key[2], invocation), part


def crc(tensor: torch.Tensor) -> str:
    """CRC-32 of a contiguous tensor's bytes: a shard's metadata holds one per tensor."""
    return f"{zlib.crc32(tensor.reshape(-1).view(torch.uint8).numpy().data):08x}"


def _shard_keys(path: Path) -> list[tuple[StoreKey, int]]:
    """``(key, part)`` of every tensor in one shard, parts in order; a file that is no readable
    shard of a store is refused by name."""
    fix = "restore it from a copy, or move it out of the folder to drop its entries"
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
    except Exception as exc:  # safetensors raises its own error types (truncated file, bad header)
        raise StoreError(
            f"{path} is named like a store shard but is not a readable safetensors file ({exc}); {fix}"
        ) from exc
    keys = [key_of(name) for name in names]
    bad = [n for n, k in zip(names, keys, strict=True) if k is None]
    if bad:
        raise StoreError(
            f"{path} is named like a store shard but holds tensors not named by a store key "
            f"(a JSON list [site, step, branch], with optional part and invocation), e.g. {bad[0][:80]!r}; {fix}"
        )
    return sorted((k for k in keys if k is not None), key=lambda entry: entry[1])


def _joinable(key: StoreKey, shapes: list[tuple[int, ...]]) -> None:
    """Refuse parts that cannot be concatenated along the batch dimension."""
    if len({s[1:] for s in shapes}) > 1 or min(map(len, shapes)) == 0:
        raise StoreError(
            f"{key} holds parts of different shapes {sorted({s[1:] for s in shapes})} beyond the batch dimension: "
            "read them with store.parts(key)"
        )


class DiskStore:
    """Safetensors shards under ``path``; at most ``buffer_bytes`` of activations stay in memory
    (each entry counts its data plus a fixed 1 kB for its objects; the key index is not counted).

    Entries are buffered on the CPU and written as ``shard-00000.safetensors``, ... when the
    buffer is full (and on :meth:`flush`). Each tensor is named by its JSON-encoded key (and part
    number, for appended parts after the first), so the shards' own headers are the index (read
    when a store is reopened; a later ``put`` of a key supersedes its earlier parts). Reading
    opens the shard lazily, so a store much larger than memory can be streamed: ``parts(key)``
    holds one appended part at a time, ``get(key)`` the result plus one part.

    After a crash (kill -9, power loss) every shard is whole or absent: a shard is written to a
    temporary file, fsync-ed, renamed, and the folder fsync-ed; the unflushed buffer is lost. Each
    shard's metadata holds a CRC-32 per tensor, checked when the tensor is read: a flipped bit is
    a :class:`StoreError` naming the shard and the key. Reopening skips, with a warning, a file
    named ``shard-<number>.safetensors`` that cannot be read as a shard of a store, and names it
    in ``store.damaged``; reading a key it may have held is a KeyError that names it. Other files
    in the folder are not the store's and are left alone.

    One object writes a folder at a time: the first ``put``/``append`` takes a lock (released by
    :meth:`close`, by the object's end or by its process's end, kill -9 included) and a second
    writer, in this process or another, is refused with a :class:`StoreError`. Readers take no
    lock.

    >>> import tempfile
    >>> with DiskStore(tempfile.mkdtemp(), buffer_bytes=1024) as store:
    ...     store.put(("blocks.0", 0, "cond"), torch.ones(4, 8))  # True would say it replaced an entry
    ...     store.flush(); store.get(("blocks.0", 0, "cond")).shape
    False
    torch.Size([4, 8])
    """

    def __init__(self, path: str | os.PathLike[str], buffer_bytes: int = 256 << 20) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.buffer_bytes = int(buffer_bytes)
        self._buffer: dict[StoreKey, list[torch.Tensor]] = {}  # parts waiting to be written
        # the version of each buffered part that is the caller's own tensor, not a copy (a CPU
        # activation recorded with Cache(clone=False)), by id: changed in place before the write,
        # it is refused rather than written
        self._versions: dict[int, int] = {}
        self._replacing: set[StoreKey] = set()  # buffered keys whose parts supersede those on disk
        self._buffered = 0
        # key -> the shard of each of its parts (part i is tensor _tensor_name(key, i)); a bare shard
        # name for the usual one-part key keeps the index as small as one string per key
        self._index: dict[StoreKey, str | list[str]] = {}
        self.damaged: dict[str, str] = {}  # shard name -> why it could not be read
        self._lost: set[StoreKey] = set()  # keys with a part in a damaged (or missing) shard
        self._next_shard = 0
        self._sites = _SiteIndex()
        self._writes = 0  # stamps the site index: bumped whenever a key may have been added
        self._lock: IO[str] | None = None
        self._lock_pid = 0
        self._index_new_shards()

    def _index_new_shards(self) -> None:
        """Index the shards numbered from ``_next_shard`` on: all of them when the store opens,
        those another writer added meanwhile when this one takes the lock."""
        numbered = {
            int(m[1]): p.name
            for p in self.path.iterdir()
            if (m := _SHARD.fullmatch(p.name)) and int(m[1]) >= self._next_shard
        }
        for n in sorted(numbered):
            shard = numbered[n]
            try:
                entries = _shard_keys(self.path / shard)
            except StoreError as exc:
                self.damaged[shard] = str(exc)
                warnings.warn(f"{exc}. The store opens without it.", stacklevel=3)
                continue
            for key, part in entries:
                if part == 0:  # a key's first part (put, or a first append): supersedes older parts
                    self._index[key] = shard
                    self._lost.discard(key)
                elif key not in self._lost and part == len(self._shards(key)):
                    self._index[key] = [*self._shards(key), shard]
                else:  # an earlier part is in a damaged shard: the key cannot be read whole
                    self._index.pop(key, None)
                    self._lost.add(key)
        self._next_shard = max(numbered, default=self._next_shard - 1) + 1

    def _take_lock(self) -> None:
        """Become the folder's one writer (an flock on ``.writer.lock``) and index the shards other
        writers added since this store was opened."""
        if self._lock is not None and self._lock_pid == os.getpid():
            return
        lock = open(self.path / _LOCK, "a+")  # noqa: SIM115 (held until close())
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            lock.close()
            who = "this process" if holder == str(os.getpid()) else f"process {holder or '?'}"
            raise StoreError(
                f"{self.path} is being written by another DiskStore ({who}); a folder takes one writer: "
                "write through that store, close() it (or let its process end), or write to another folder"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock, self._lock_pid = lock, os.getpid()
        self._index_new_shards()

    def close(self, flush: bool = True) -> None:
        """Flush (``flush=False``: drop what is still buffered instead), then let another DiskStore
        write the folder."""
        if flush:
            self.flush()
        else:
            self._buffer.clear()
            self._versions.clear()
            self._replacing.clear()
            self._buffered = 0
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> DiskStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, key: StoreKey, tensor: torch.Tensor) -> bool:
        """Store ``tensor`` under ``key``; True if ``key`` was held (buffered or on disk)."""
        self._take_lock()
        key = normal_key(key)
        held = key in self
        for old in self._buffer.pop(key, []):
            self._buffered -= old.nbytes + _ENTRY_OVERHEAD
            self._versions.pop(id(old), None)
        self._replacing.add(key)
        self._add(key, tensor)
        return held

    def append(self, key: StoreKey, tensor: torch.Tensor) -> None:
        """Add ``tensor`` as a further part of ``key`` (the first part when the key is new)."""
        self._take_lock()
        key = normal_key(key)
        if key not in self:
            self._replacing.add(key)
        self._add(key, tensor)

    def _add(self, key: StoreKey, tensor: torch.Tensor) -> None:
        given = tensor
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor._base is not None:  # a view (one CFG branch's rows): safetensors needs its own storage
            tensor = tensor.clone()
        if tensor.data_ptr() == given.data_ptr() and not tensor.is_inference():
            self._versions[id(tensor)] = tensor._version
        self._buffer.setdefault(key, []).append(tensor)
        self._writes += 1
        self._buffered += tensor.nbytes + _ENTRY_OVERHEAD
        if self._buffered >= self.buffer_bytes:
            self.flush()

    def flush(self, metadata: dict[str, str] | None = None) -> str | None:
        """Write buffered entries as one new shard, atomically and durably: if writing fails, no
        shard file appears and the entries stay buffered (a later flush retries). ``metadata``
        goes into the shard's header beside the checksums, so a record of what the shard holds
        (the work items of a distributed harvest) is written in the same atomic rename; its keys
        must not start with ``[`` (those name tensors). Returns the shard's name, or None when
        nothing was buffered."""
        if not self._buffer:
            return None
        self._assert_unchanged(self._buffer)
        if any(name.startswith("[") for name in metadata or {}):
            raise ValueError("shard metadata keys starting with '[' are tensor names; choose another prefix")
        shard = f"shard-{self._next_shard:05d}.safetensors"
        tmp = self.path / f".{shard}.tmp"  # in the same folder: the rename cannot cross devices
        names: dict[StoreKey, list[str]] = {}
        tensors: dict[str, torch.Tensor] = {}
        storages: set[int] = set()
        for key, parts in self._buffer.items():
            first = 0 if key in self._replacing else len(self._shards(key))
            names[key] = [_tensor_name(key, first + i) for i in range(len(parts))]
            for name, part in zip(names[key], parts, strict=True):
                # one tensor buffered under two keys (Cache(clone=False) on a module and the next
                # one's input): safetensors refuses tensors that share memory, so write a copy
                storage = part.untyped_storage().data_ptr()
                tensors[name] = part.clone() if storage and storage in storages else part
                storages.add(storage)
        try:
            save_file(tensors, str(tmp), metadata={**(metadata or {}), **{name: crc(t) for name, t in tensors.items()}})
            publish(tmp, self.path / shard)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._next_shard += 1
        for key, written in names.items():
            shards = ([] if key in self._replacing else self._shards(key)) + [shard] * len(written)
            self._index[key] = shards[0] if len(shards) == 1 else shards
            self._lost.discard(key)
        self._buffer.clear()
        self._versions.clear()
        self._replacing.clear()
        self._buffered = 0
        return shard

    def _assert_unchanged(self, keys: Iterable[StoreKey]) -> None:
        """Refuse buffered parts of ``keys`` that the caller changed in place after handing them over."""
        for key in keys:
            for part in self._buffer.get(key, ()):
                version = self._versions.get(id(part))
                if version is not None and part._version != version:
                    raise StoreError(
                        f"DiskStore {self.path}: the tensor buffered under {key} (site, step, branch) was changed in "
                        f"place after it was recorded (version {version} -> {part._version}): by the model, with "
                        "Cache(clone=False) on a site that an nn.ReLU(inplace=True) or an `h += ...` then modifies, or "
                        "by code that changed a tensor read back from this store. It would be written and read as a "
                        "later value: record with Cache(clone=True) (the default) and copy what you read before "
                        "changing it in place"
                    )

    def put_rows(
        self, key: StoreKey, tensor: torch.Tensor, segments: Sequence[tuple[str | None, slice]]
    ) -> StoreKey | None:
        """Store each CFG branch's rows of one batched tensor under ``key`` with that branch;
        the first of those keys that was already held, or None."""
        held = None
        for branch, rows in segments:
            branch_key = with_branch(key, branch)
            if self.put(branch_key, tensor[rows]) and held is None:
                held = normal_key(branch_key)
        return held

    def get(self, key: StoreKey) -> torch.Tensor:
        """The parts of ``key`` concatenated, copied one by one into the result (peak: the result
        plus one part; :meth:`parts` streams them with one part in memory)."""
        key = normal_key(key)
        on_disk = self._on_disk(key)
        shapes = [self._shape(shard, key, part) for part, shard in enumerate(on_disk)]
        shapes += [tuple(t.shape) for t in self._buffer.get(key, [])]
        if len(shapes) == 1:
            return next(self.parts(key))
        _joinable(key, shapes)
        out: torch.Tensor | None = None
        row = 0
        for part in self.parts(key):
            if out is None:
                out = part.new_empty((sum(s[0] for s in shapes), *shapes[0][1:]))
            elif part.dtype != out.dtype:
                raise StoreError(
                    f"{key} holds parts of dtypes {out.dtype} and {part.dtype}: read them with store.parts(key)"
                )
            out[row : row + len(part)] = part
            row += len(part)
        return out  # type: ignore[return-value]

    def parts(self, key: StoreKey) -> Iterator[torch.Tensor]:
        """The parts of ``key`` in the order they were added, each read from disk when reached."""
        key = normal_key(key)
        for part, shard in enumerate(self._on_disk(key)):
            yield self._read(shard, key, part)
        self._assert_unchanged((key,))
        yield from self._buffer.get(key, [])

    def _on_disk(self, key: StoreKey) -> list[str]:
        """The shards of the parts of ``key`` that are read from disk; a missing key is refused."""
        if key not in self:
            raise self._missing(key)
        return [] if key in self._replacing else self._shards(key)

    def _missing(self, key: StoreKey) -> KeyError:
        message = _missing(key, self.keys()).args[0]
        damaged = ", ".join(self.damaged) or "a shard no longer in the folder"
        if key in self._lost:
            message += f"; a part of it is in a damaged shard ({damaged}; store.damaged says why)"
        elif self.damaged:
            message += f"; damaged shards that may have held it: {damaged} (store.damaged says why)"
        return KeyError(message + " - restore the shard from a copy, or cache the entry again")

    def _shape(self, shard: str, key: StoreKey, part: int) -> tuple[int, ...]:
        with safe_open(str(self.path / shard), framework="pt") as f:
            return tuple(f.get_slice(_tensor_name(key, part)).get_shape())

    def _read(self, shard: str, key: StoreKey, part: int) -> torch.Tensor:
        """Part ``part`` of ``key``, checked against the CRC-32 its shard recorded."""
        name, path = _tensor_name(key, part), self.path / shard
        try:
            with safe_open(str(path), framework="pt") as f:
                tensor, stored = f.get_tensor(name), (f.metadata() or {}).get(name)
        except Exception as exc:  # safetensors' own error types: the file changed since it was indexed
            raise StoreError(f"{path} cannot be read for {key} part {part} ({exc}); restore it from a copy") from exc
        if stored is not None and stored != crc(tensor):
            raise StoreError(
                f"{path} is damaged: {key} part {part} fails its checksum (crc32 {crc(tensor)}, written "
                f"{stored}); restore the shard from a copy, or move it out of the folder to drop its entries"
            )
        return tensor

    def _shards(self, key: StoreKey) -> list[str]:
        found = self._index.get(key, [])
        return [found] if isinstance(found, str) else list(found)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, tuple) and len(key) == 4:
            key = normal_key(key)
        return key in self._buffer or key in self._index

    def keys(self) -> list[StoreKey]:
        return list(dict.fromkeys([*self._index, *self._buffer]))

    def keys_of(self, site: str) -> list[StoreKey]:
        """The keys of one site (amortised O(1): an index rebuilt only after the store changed)."""
        return self._sites.keys_of(site, (self._writes, len(self._index)), self.keys)

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[StoreKey]:
        return iter(self.keys())
