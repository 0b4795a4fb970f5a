"""DiskStore under stress (issue 14, items 1, 2, 4, 5): two writing processes, one tensor under
two keys, flipped bits and damaged shards, durable renames, kill -9, and get()'s peak memory."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import save_file

import interventions.store as store_module
from interventions import DiskStore, StoreError

K0, K1 = ("blocks.0", 0, "cond"), ("blocks.0", 1, "cond")


def _python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


WRITER = """
    import sys, time, torch
    from pathlib import Path
    from interventions import DiskStore, StoreError
    folder, name = Path(sys.argv[1]), sys.argv[2]
    store = DiskStore(folder / "store", buffer_bytes=256)
    try:
        store.put((name, 0, None), torch.full((4,), 0.0))
        refused = None
    except StoreError as exc:
        refused = exc
    (folder / name).touch()  # both writers have tried once: the other holds the lock or is refused
    while len(list(folder.glob("w*"))) < 2:
        time.sleep(0.01)
    if refused is not None:
        print(refused)
        sys.exit(3)
    for step in range(1, 40):
        store.put((name, step, None), torch.full((4,), float(step)))
    store.close()
"""


def test_a_second_writing_process_is_refused_and_nothing_is_lost(tmp_path):
    procs = [_python(WRITER, str(tmp_path), name) for name in ("w1", "w2")]
    results = [(p.wait(timeout=120), p.communicate()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 3], [err for _, (_, err) in results]
    winner, loser = (0, 1) if results[0][0] == 0 else (1, 0)
    message = results[loser][1][0]
    assert f"being written by another DiskStore (process {procs[winner].pid})" in message
    assert "close() it" in message
    store = DiskStore(tmp_path / "store")
    name = f"w{winner + 1}"
    assert sorted(store.keys()) == [(name, step, None) for step in range(40)]
    for step in range(40):
        assert torch.equal(store.get((name, step, None)), torch.full((4,), float(step)))


def test_a_second_writer_in_one_process_is_refused_until_the_first_closes(tmp_path):
    early = DiskStore(tmp_path)  # opened before anything was written: its shard numbers are stale
    first = DiskStore(tmp_path)
    first.put(K0, torch.zeros(2))
    with pytest.raises(StoreError, match=r"being written by another DiskStore \(this process\)"):
        early.put(K1, torch.ones(2))
    first.close()
    early.put(K1, torch.ones(2))  # takes the lock and first indexes what `first` wrote
    early.close()
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    reopened = DiskStore(tmp_path)
    assert torch.equal(reopened.get(K0), torch.zeros(2)) and torch.equal(reopened.get(K1), torch.ones(2))


def test_one_tensor_under_two_keys_flushes(tmp_path):
    # Cache(clone=False) on a module and on the next one's input buffers the same tensor twice
    shared = torch.arange(6.0).reshape(2, 3)
    with DiskStore(tmp_path) as store:
        store.put(K0, shared)
        store.put(K1, shared)
        store.put(("rows", 0, None), shared.detach()[0])  # a detached slice shares the storage too
        store.flush()
    reopened = DiskStore(tmp_path)
    assert torch.equal(reopened.get(K0), shared) and torch.equal(reopened.get(K1), shared)
    assert torch.equal(reopened.get(("rows", 0, None)), shared[0])


def test_a_buffered_tensor_changed_in_place_is_refused_not_written(tmp_path):
    # Cache(clone=False) into a DiskStore buffers the model's own CPU tensor until the flush: an
    # inplace ReLU after the site would otherwise be written to disk as the site's output
    from torch import nn

    from interventions import Cache, attach

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True))
    store = DiskStore(tmp_path)
    with attach(model, {"0": Cache(store=store, clone=False)}):
        model(torch.randn(8, 4) * 10)
    with pytest.raises(StoreError, match=r"'0', 0, None.*changed in place.*version 0 -> 1.*Cache\(clone=True\)"):
        store.get(("0", 0, None))
    with pytest.raises(StoreError, match="changed in place"):
        store.flush()
    assert not list(tmp_path.glob("shard-*"))  # nothing written
    store.close(flush=False)
    # a copy (clone=True) is never the model's tensor: written and read back as recorded
    copied = DiskStore(tmp_path / "copied")
    x = torch.randn(8, 4) * 10
    with attach(model, {"0": Cache(store=copied)}):
        model(x)
    copied.close()
    assert torch.equal(DiskStore(tmp_path / "copied").get(("0", 0, None)), model[0](x))


def _two_shards(path):
    with DiskStore(path) as store:
        store.put(K0, torch.arange(1000.0))
        store.flush()
        store.put(K1, torch.ones(1000))


def test_a_flipped_bit_is_detected_and_named(tmp_path):
    _two_shards(tmp_path)
    shard = tmp_path / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1000] ^= 0x04  # a bit inside K0's data
    shard.write_bytes(bytes(data))
    store = DiskStore(tmp_path)
    with pytest.raises(
        StoreError, match=r"shard-00000\.safetensors is damaged: \('blocks.0', 0, 'cond'\) part 0 fails"
    ):
        store.get(K0)
    assert torch.equal(store.get(K1), torch.ones(1000))


def test_a_damaged_shard_is_skipped_and_named(tmp_path):
    _two_shards(tmp_path)
    with DiskStore(tmp_path) as store:  # a key appended across the two shards and a third
        store.append(K1, torch.zeros(1000))
    (tmp_path / "shard-00001.safetensors").write_bytes(b"")  # a power loss before fsync, as the issue saw
    with pytest.warns(UserWarning, match=r"shard-00001\.safetensors is named like a store shard but is not a readable"):
        store = DiskStore(tmp_path)
    assert list(store.damaged) == ["shard-00001.safetensors"] and store.keys() == [K0]
    assert torch.equal(store.get(K0), torch.arange(1000.0))
    with pytest.raises(KeyError, match=r"a part of it is in a damaged shard \(shard-00001\.safetensors"):
        store.get(K1)


def test_a_deeply_nested_tensor_name_marks_the_shard_damaged(tmp_path):
    _two_shards(tmp_path)
    save_file({"[" * 100_000: torch.ones(1)}, str(tmp_path / "shard-00002.safetensors"))
    with pytest.warns(UserWarning, match=r"shard-00002\.safetensors .* not named by a store key"):
        store = DiskStore(tmp_path)
    assert sorted(store.keys()) == [K0, K1]


def test_flush_fsyncs_the_shard_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or fsync(fd)
    )
    monkeypatch.setattr(store_module.os, "replace", lambda a, b: events.append(("replace", str(a))) or replace(a, b))
    with DiskStore(tmp_path) as store:
        store.put(K0, torch.ones(2))
    tmp = str(tmp_path / ".shard-00000.safetensors.tmp")
    assert events == [("fsync", tmp), ("replace", tmp), ("fsync", str(tmp_path))]


KILLED = """
    import sys, torch
    from interventions import DiskStore
    store = DiskStore(sys.argv[1], buffer_bytes=1)  # every put is its own shard
    for step in range(100_000):
        store.put(("s", step, None), torch.full((256,), float(step)))
"""


def test_kill_minus_nine_leaves_whole_shards_and_no_stale_lock(tmp_path):
    proc = _python(KILLED, str(tmp_path))
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("shard-*"))) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = DiskStore(tmp_path)
    n = len(store)
    assert n >= 20 and not store.damaged and sorted(store.keys()) == [("s", step, None) for step in range(n)]
    assert all(torch.equal(store.get(("s", step, None)), torch.full((256,), float(step))) for step in range(n))
    store.put(("s", n, None), torch.zeros(1))  # the dead writer's lock went with its process
    store.close()
    assert len(DiskStore(tmp_path)) == n + 1


PEAK = """
    import sys
    from interventions import DiskStore
    def status(field):
        line = next(x for x in open("/proc/self/status") if x.startswith(field))
        return int(line.split()[1]) * 1024
    store = DiskStore(sys.argv[1])
    store.get(("s", 0, None))  # a first read loads the code it runs (its result is freed at once)
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current size
    rss = status("VmRSS")
    out = store.get(("s", 0, None))
    print((status("VmHWM") - rss) / out.nbytes)
"""


def test_get_of_an_appended_key_peaks_near_its_size(tmp_path):
    parts, part_bytes = 16, 8 << 20
    with DiskStore(tmp_path, buffer_bytes=part_bytes) as store:
        for i in range(parts):
            store.append(("s", 0, None), torch.full((part_bytes // 4,), float(i)))
    proc = _python(PEAK, str(tmp_path))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    ratio = float(out)
    print(f"get() peak / result size: {ratio:.2f}")
    assert ratio < 1.4  # the result plus about one part (was 2x: every part, then their concatenation)
    got = DiskStore(tmp_path).get(("s", 0, None))
    assert torch.equal(got[:: part_bytes // 4], torch.arange(parts, dtype=torch.float32))
