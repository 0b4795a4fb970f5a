"""Activation harvesting sharded by rank: each process of a ``torchrun`` / ``accelerate launch``
job runs its share of the inputs and writes its own safetensors shards; a killed harvest resumes.

Layout under ``root``: one :class:`~interventions.DiskStore` folder per rank (``rank-00000/``, ...)
with its ``manifest.json``. Item ``i`` of ``inputs`` belongs to rank ``i % world_size`` (the same
split on every run). Each shard holds whole items only, and its header records which ones (the
``interventions.harvest`` metadata, written in the same atomic rename as the shard): a shard on
disk is a completed set of items, so a harvest killed at any instant (SIGKILL included) resumes
with every item exactly once. ``manifest.json`` lists the shards a rank wrote, so a shard that
went missing is noticed; a shard written just before a kill but not yet listed is adopted on resume.

Resuming checks before it writes anything: the same world size, inputs count and sites as the
first run; every listed shard present; every shard of this harvest (not of another site or
another harvest). A mismatch is a :class:`HarvestError` that says what differs and what to do.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from ..context import StoreKey
from ..durable import publish
from ..errors import StoreError
from ..hooks import Cache
from ..session import attach
from ..store import DiskStore, crc, key_of
from .ranks import rank_and_world

FORMAT = "interventions.harvest/1"
RECORD = "interventions.harvest"  # the shard metadata key that names its items
MANIFEST = "manifest.json"
_RANK_DIR = re.compile(r"rank-(\d{5})")
_SHARD = re.compile(r"shard-(\d{5,})\.safetensors")
_NO_FLUSH = 1 << 62  # the store flushes only when a shard's items are complete


class HarvestError(StoreError):
    """A harvest folder that does not match the run resuming or reading it (world size, sites,
    a missing or foreign shard, items done twice or not at all)."""


def rank_dir(root: str | os.PathLike[str], rank: int) -> Path:
    return Path(root) / f"rank-{rank:05d}"


def items_of_rank(n_items: int, rank: int, world_size: int) -> list[int]:
    """The input indices rank ``rank`` of ``world_size`` harvests: every ``world_size``-th one
    from ``rank`` (a deterministic split, balanced to one item)."""
    return list(range(rank, n_items, world_size))


@dataclass
class HarvestReport:
    root: Path
    rank: int
    world_size: int
    items: int  # this rank's share
    done_before: int  # found complete on disk when it started (a resumed run)
    harvested: int  # run now
    shards: list[str] = field(default_factory=list)  # written now


def harvest(
    model: Any,
    inputs: Sequence[Any],
    sites: str | Sequence[str],
    root: str | os.PathLike[str],
    *,
    run: Callable[[Any, Any], Any] | None = None,
    items_per_shard: int = 8,
    rank: int | None = None,
    world_size: int | None = None,
    layouts: dict[str, str] | None = None,
    progress: bool | None = None,
) -> HarvestReport:
    """Cache ``sites`` of ``model`` for this rank's share of ``inputs`` into ``root``, resuming
    what an earlier (killed) run of the same harvest left.

    ``run(model, item)`` runs one input (default: ``model(item)``; a pipeline call for a prompt,
    for instance), under ``torch.no_grad()``; each item runs in its own session, so keys (site,
    step, branch) do not depend on which items a rank ran before. ``items_per_shard`` items are
    buffered in memory, then written as one shard. A resume must pass the same inputs in the same
    order: their count and the sites are checked, their contents cannot be. ``rank`` / ``world_size`` default to torch.distributed's (or the
    ``RANK`` / ``WORLD_SIZE`` that torchrun sets; one process without them). ``progress``: a
    progress bar (default: on rank 0 only).

    >>> import tempfile
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
    >>> inputs = [torch.randn(3, 4) for _ in range(5)]
    >>> root = tempfile.mkdtemp()
    >>> harvest(model, inputs, "0", root, items_per_shard=2, progress=False).shards
    ['shard-00000.safetensors', 'shard-00001.safetensors', 'shard-00002.safetensors']
    >>> open_harvest(root).rows("0")  # 5 inputs of 3 rows
    15
    """
    patterns = [sites] if isinstance(sites, str) else list(sites)
    if not patterns:
        raise ValueError("harvest needs at least one site pattern")
    if items_per_shard < 1:
        raise ValueError(f"items_per_shard must be >= 1, got {items_per_shard}")
    rank, world_size = rank_and_world(rank, world_size)
    n_items = len(inputs)
    _check_world(Path(root), world_size, n_items, patterns)
    folder = rank_dir(root, rank)
    manifest = _Manifest.load_or_new(folder, rank, world_size, n_items, patterns)
    manifest.reconcile()  # refuses a missing or foreign shard before anything is written
    mine = items_of_rank(n_items, rank, world_size)
    todo = [i for i in mine if i not in manifest.complete]
    report = HarvestReport(Path(root), rank, world_size, len(mine), len(mine) - len(todo), 0)
    if not todo:
        if not mine:  # fewer inputs than processes: the manifest says this rank is done
            manifest.write()
        return report
    store = DiskStore(folder, buffer_bytes=_NO_FLUSH)
    cache = Cache(store, on_repeat="append")
    hooks = {pattern: cache for pattern in patterns}
    call = run or (lambda m, item: m(item))
    bar = tqdm(
        total=len(mine),
        initial=report.done_before,
        desc=f"harvest rank {rank}",
        disable=not (rank == 0 if progress is None else progress),
    )
    try:
        for start in range(0, len(todo), items_per_shard):
            batch = todo[start : start + items_per_shard]
            for item in batch:
                with attach(model, hooks, layouts=layouts), torch.no_grad():
                    call(model, inputs[item])
                bar.update(1)
            shard = store.flush({RECORD: json.dumps(manifest.record(batch))})
            if shard is None:
                raise HarvestError(
                    f"items {batch} cached nothing at {patterns}: do the sites fire when run(model, item) runs?"
                )
            manifest.add(shard, batch, sorted({key[0] for key in store.keys()}))
            report.shards.append(shard)
            report.harvested += len(batch)
    except BaseException:
        store.close(flush=False)  # the items of an unfinished shard run again on resume
        raise
    finally:
        bar.close()
    store.close()
    return report


def _check_world(root: Path, world_size: int, n_items: int, patterns: list[str]) -> None:
    """Refuse to add to a harvest that other processes began with another world size, another
    number of inputs or other sites (their split of the items would differ from ours)."""
    if not root.exists():
        return
    for folder in sorted(root.iterdir()):
        m = _RANK_DIR.fullmatch(folder.name)
        if not m or not (folder / MANIFEST).exists():
            continue
        other = _Manifest.read(folder)
        if other["world_size"] != world_size or int(m[1]) >= world_size:
            raise HarvestError(
                f"{root} was harvested by {other['world_size']} processes, this run has {world_size}: the items "
                f"are split by rank, so resume with the same number (torchrun --nproc-per-node "
                f"{other['world_size']}), or harvest into a new folder"
            )
        if other["n_items"] != n_items or other["sites"] != patterns:
            raise HarvestError(
                f"{folder} holds a harvest of {other['n_items']} inputs at {other['sites']}; this run has "
                f"{n_items} inputs at {patterns}: pass the same inputs and sites to resume, or harvest into a new folder"
            )


class _Manifest:
    """One rank's ``manifest.json``: its shards and their items, rewritten atomically after each shard."""

    def __init__(self, folder: Path, data: dict[str, Any]) -> None:
        self.folder, self.data = folder, data
        self.complete: set[int] = {i for items in data["shards"].values() for i in items}

    @staticmethod
    def read(folder: Path) -> dict[str, Any]:
        try:
            data = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise HarvestError(f"{folder / MANIFEST} cannot be read ({exc}); restore it from a copy") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise HarvestError(f"{folder / MANIFEST} is not a harvest manifest ({FORMAT})")
        return data

    @classmethod
    def load_or_new(cls, folder: Path, rank: int, world_size: int, n_items: int, sites: list[str]) -> _Manifest:
        if (folder / MANIFEST).exists():
            return cls(folder, cls.read(folder))
        data = {"format": FORMAT, "rank": rank, "world_size": world_size, "n_items": n_items, "sites": sites}
        return cls(folder, {**data, "stored_sites": None, "shards": {}})

    def record(self, items: list[int]) -> dict[str, Any]:
        """What a shard's header says of it: whose it is and which items it holds, in order."""
        keys = ("rank", "world_size", "n_items", "sites")
        return {**{k: self.data[k] for k in keys}, "items": items}

    def reconcile(self) -> None:
        """Check the rank's folder against the manifest; adopt a shard written just before a kill."""
        listed = dict(self.data["shards"])
        missing = [s for s in listed if not (self.folder / s).exists()]
        if missing:
            raise HarvestError(
                f"{self.folder} lost {missing[0]} (items {listed[missing[0]]}), listed in its manifest: restore "
                "the shard from a copy; to harvest those items again, remove its entry from manifest.json"
            )
        for shard in _shard_files(self.folder):
            items, sites = check_shard(self.folder / shard, self.data)
            if shard not in listed:  # a shard renamed into place, then a kill before the manifest
                self.add(shard, items, sites)

    def add(self, shard: str, items: list[int], sites: list[str]) -> None:
        if self.complete & set(items):
            raise HarvestError(
                f"{self.folder / shard} holds items {sorted(self.complete & set(items))} held by another shard too"
            )
        stored = self.data["stored_sites"]
        if stored is not None and sites != stored:
            raise HarvestError(f"{self.folder / shard} holds sites {sites}, the harvest's other shards {stored}")
        self.data["stored_sites"] = sites
        self.data["shards"][shard] = items
        self.complete.update(items)
        self.write()

    def write(self) -> None:
        """Atomically and durably (temporary file, fsync, rename, fsync of the folder)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(self.data, indent=1))
        publish(tmp, self.folder / MANIFEST)


def _shard_files(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted((p.name for p in folder.iterdir() if _SHARD.fullmatch(p.name)), key=lambda s: int(s[6:-12]))


def check_shard(path: Path, manifest: dict[str, Any]) -> tuple[list[int], list[str]]:
    """The items and sites of one shard, refused when it is not a shard of this rank's harvest."""
    fix = "move it out of the folder (and harvest those items again), or restore this harvest's own shard"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, names = f.metadata() or {}, list(f.keys())
    except Exception as exc:  # safetensors' own error types: a truncated or foreign file
        raise HarvestError(f"{path} is not a readable safetensors shard ({exc}); {fix}") from exc
    try:
        record = json.loads(meta[RECORD])
    except (KeyError, ValueError):
        raise HarvestError(f"{path} was not written by harvest (no {RECORD} record in its header); {fix}") from None
    ours = {k: manifest[k] for k in ("rank", "world_size", "n_items", "sites")}
    theirs = {k: record.get(k) for k in ours}
    if theirs != ours:
        differ = ", ".join(f"{k} {theirs[k]!r} (this harvest: {ours[k]!r})" for k in ours if theirs[k] != ours[k])
        raise HarvestError(f"{path} is a shard of another harvest: {differ}; {fix}")
    sites = sorted({key[0][0] for name in names if (key := key_of(name)) is not None})
    stored = manifest.get("stored_sites")
    if stored is not None and sites != stored:
        raise HarvestError(f"{path} holds activations of sites {sites}, this harvest caches {stored}; {fix}")
    return list(record["items"]), sites


@dataclass(frozen=True)
class Shard:
    rank: int
    path: Path
    items: tuple[int, ...]


class Harvest:
    """A complete harvest, checked: every rank's manifest and shards, every input exactly once.
    Streams tokens of the union of all ranks' shards, split again by the rank of a training run
    (whose world size need not be the harvest's). Open with :func:`open_harvest`."""

    def __init__(self, root: Path, shards: list[Shard], sites: list[str], n_items: int) -> None:
        self.root, self.shards, self.sites, self.n_items = root, shards, sites, n_items

    def tokens(
        self,
        site: str | None = None,
        *,
        shards: Sequence[Shard] | None = None,
        branch: str | None | bool = False,
        steps: Iterable[int] | None = None,
    ) -> ShardStream:
        """The tensors of ``site`` (default: the only site) in ``shards`` (default: all), shard by
        shard; iterable again for another pass. ``branch`` / ``steps`` keep one CFG branch and
        some steps (``branch=False``: any), as :func:`~interventions.sae_train.iter_tokens` does."""
        chosen = list(self.shards if shards is None else shards)
        return ShardStream(self.resolve_site(site), chosen, branch, None if steps is None else set(steps))

    def entries(self, site: str | None = None) -> Iterator[tuple[Shard, StoreKey, torch.Tensor]]:
        """Every tensor of ``site`` with its shard (whose ``items`` say which inputs it holds) and
        its key (site, step, branch[, invocation]); a key's parts follow the shard's items in order."""
        site = self.resolve_site(site)
        for shard in self.shards:
            for key, tensor in read_entries(shard.path, site):
                yield shard, key, tensor

    def split(self, rank: int, world_size: int, skip: int = 0) -> list[Shard]:
        """The shards that rank ``rank`` of ``world_size`` reads: every ``world_size``-th one of
        the union from ``skip + rank``."""
        return self.shards[skip + rank :: world_size]

    def rows(self, site: str | None = None) -> int:
        """How many rows (first-dimension entries: batch rows, or tokens of a token matrix) ``site``
        holds in all shards, read from the headers only."""
        site = self.resolve_site(site)
        total = 0
        for shard in self.shards:
            with safe_open(str(shard.path), framework="pt") as f:
                for name in f.keys():
                    key = key_of(name)
                    if key is not None and key[0][0] == site:
                        total += f.get_slice(name).get_shape()[0]
        return total

    def resolve_site(self, site: str | None) -> str:
        """``site``, checked to be in the harvest; None: the harvest's only site."""
        if site is None:
            if len(self.sites) != 1:
                raise ValueError(f"this harvest holds sites {self.sites}: name one")
            return self.sites[0]
        if site not in self.sites:
            raise HarvestError(f"{self.root} holds no site {site!r}; its sites: {self.sites}")
        return site


class ShardStream:
    """The tensors of one site in some shards (optionally one branch, some steps), each checked
    against its CRC-32 when read."""

    def __init__(
        self, site: str, shards: list[Shard], branch: str | None | bool = False, steps: set[int] | None = None
    ) -> None:
        self.site, self.shards, self.branch, self.steps = site, shards, branch, steps

    def __iter__(self) -> Iterator[torch.Tensor]:
        for shard in self.shards:
            for key, tensor in read_entries(shard.path, self.site):
                if (self.branch is False or key[2] == self.branch) and (self.steps is None or key[1] in self.steps):
                    yield tensor


def _order(entry: tuple[tuple[StoreKey, int], str]) -> tuple[int, str, int, int]:
    """Steps in numeric order, then branch, invocation and part."""
    (key, part), _ = entry
    return (-1 if key[1] is None else key[1], str(key[2]), key[3] if len(key) == 4 else 0, part)


def read_entries(path: Path, site: str) -> Iterator[tuple[StoreKey, torch.Tensor]]:
    """``(key, tensor)`` of every tensor of ``site`` in one shard, by step, branch and invocation,
    each key's parts in the order added; each tensor is checked against its CRC-32."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        decoded = [(key_of(name), name) for name in f.keys()]
        named = sorted(((found, name) for found, name in decoded if found and found[0][0] == site), key=_order)
        for (key, _), name in named:
            tensor = f.get_tensor(name)
            if name in meta and meta[name] != crc(tensor):
                raise StoreError(f"{path} is damaged: {name} fails its checksum; restore the shard from a copy")
            yield key, tensor


def open_harvest(root: str | os.PathLike[str], *, complete: bool = True) -> Harvest:
    """Check a harvest folder and open it for reading: every rank's manifest present and of one
    world size, every listed shard present and of this harvest, no stray shard, and (with
    ``complete``) every input harvested exactly once. Reads headers only."""
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if _RANK_DIR.fullmatch(p.name)) if root.is_dir() else []
    if not folders:
        raise HarvestError(f"{root} holds no harvest (no rank-NNNNN folders): run harvest() into it first")
    first = _Manifest.read(folders[0])
    world, n_items = first["world_size"], first["n_items"]
    shards: list[Shard] = []
    seen: dict[int, str] = {}
    sites: list[str] | None = None
    for rank in range(world):
        folder = rank_dir(root, rank)
        if not (folder / MANIFEST).exists():
            raise HarvestError(f"{folder} is missing: the harvest ran on {world} processes; resume rank {rank}")
        data = _Manifest.read(folder)
        if (data["world_size"], data["n_items"], data["sites"]) != (world, n_items, first["sites"]):
            raise HarvestError(
                f"{folder} belongs to another harvest than {folders[0]} (world size, inputs or sites differ)"
            )
        on_disk = _shard_files(folder)
        for shard, items in data["shards"].items():
            if shard not in on_disk:
                raise HarvestError(
                    f"{folder / shard} is missing (items {items} of rank {rank}): restore it from a copy, or "
                    "remove its entry from that manifest.json and resume the harvest to run them again"
                )
            listed_items, shard_sites = check_shard(folder / shard, data)
            if listed_items != items:
                raise HarvestError(f"{folder / shard} holds items {listed_items}, its manifest says {items}")
            sites = sites or shard_sites
            if shard_sites != sites:
                raise HarvestError(f"{folder / shard} holds sites {shard_sites}, the harvest's other shards {sites}")
            for item in items:
                if item in seen:
                    raise HarvestError(f"input {item} is in both {seen[item]} and {folder / shard}")
                seen[item] = str(folder / shard)
            shards.append(Shard(rank, folder / shard, tuple(items)))
        stray = [s for s in on_disk if s not in data["shards"]]
        if stray:
            raise HarvestError(
                f"{folder / stray[0]} is not in its rank's manifest (a harvest killed right after writing it): "
                "resume the harvest to adopt it"
            )
    missing = sorted(set(range(n_items)) - set(seen))
    if complete and missing:
        raise HarvestError(
            f"{root} is incomplete: {len(missing)} of {n_items} inputs not harvested (e.g. {missing[:5]}): "
            f"resume it with the same {world} processes"
        )
    return Harvest(root, shards, sites or [], n_items)
