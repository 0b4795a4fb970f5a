"""Harvesting sharded by rank and SAE training with DDP (issue 22), on CPU with the gloo backend.

Two processes really run: the DDP test spawns two ranks that train over a harvest of a tiny
GPT-2's activations; the resume test SIGKILLs a harvesting process part-way and runs it again.
"""

from __future__ import annotations

import contextlib
import doctest
import hashlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from interventions.distributed import (
    DDPSync,
    HarvestError,
    checkpoints,
    harvest,
    items_of_rank,
    open_harvest,
    train_sae_distributed,
)
from interventions.sae_train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
D, TOKENS = 16, 32  # the plain model's width; rows per input


def _plain_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, D), torch.nn.ReLU(), torch.nn.Linear(D, D))


def _plain_inputs(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(TOKENS, 8, generator=g) for _ in range(n)]


def _folder_state(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the hash of its bytes (to show nothing was overwritten)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows in lexicographic order: two harvests hold the same activations iff these are equal."""
    for col in reversed(range(x.shape[1])):
        x = x[x[:, col].argsort(stable=True)]
    return x


# -- the public functions' examples --------------------------------------------------------------
@pytest.mark.parametrize("module", ["harvesting", "train", "ranks"])
def test_docstring_examples(module):
    torch.set_num_threads(1)
    result = doctest.testmod(importlib.import_module(f"interventions.distributed.{module}"))
    assert result.attempted > 0 and result.failed == 0


def test_items_split_by_rank_cover_every_input_once(tmp_path):
    shares = [items_of_rank(11, r, 3) for r in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(11))
    assert [len(s) for s in shares] == [4, 4, 3]
    for rank in range(3):  # fewer inputs than processes: the idle rank still completes the harvest
        harvest(_plain_model(), _plain_inputs(2), "0", tmp_path, rank=rank, world_size=3, progress=False)
    assert [s.items for s in open_harvest(tmp_path).shards] == [(0,), (1,)]


# -- DDP over two gloo processes equals one process ----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, world: int, port: int, root: str, out: str, cfg: dict) -> None:
    """One rank of the DDP test: trains, then writes its weights and report."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for name, sync in (("exact", DDPSync(Path(out) / "ckpt")), ("bf16", DDPSync(bf16_gradients=True))):
            sae, report = train_sae_distributed(root, d_sae=64, k=4, config=TrainConfig(**cfg), sync=sync)
            weights = {n: p.detach().contiguous() for n, p in sae.named_parameters()}
            save_file(weights, f"{out}/{name}{rank}.safetensors")
            info = {"tokens_seen": report.tokens_seen, "fvu": report.fvu, "dead": report.dead_fraction}
            Path(f"{out}/{name}{rank}.json").write_text(json.dumps({**info, "bytes": sync.bytes_per_step}))
        # killed after step 12 (checkpoints at 5 and 10), then run again: resumes from step 10
        with contextlib.suppress(KeyboardInterrupt):
            train_sae_distributed(root, d_sae=64, k=4, config=TrainConfig(**cfg), sync=_Crash(Path(out) / "crash", 12))
        sae, _ = train_sae_distributed(
            root, d_sae=64, k=4, config=TrainConfig(**cfg), checkpoint_dir=Path(out) / "crash"
        )
        save_file({n: p.detach().contiguous() for n, p in sae.named_parameters()}, f"{out}/resumed{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gpt2_harvest(tmp_path_factory):
    """Activations of a tiny GPT-2's first MLP for 9 inputs of 32 tokens, one input per shard."""
    from tests.tiny_models import gpt2_lm

    torch.set_num_threads(1)
    model, _ = gpt2_lm()
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randint(4, model.config.vocab_size, (1, TOKENS), generator=g) for _ in range(9)]
    root = tmp_path_factory.mktemp("gpt2_harvest")
    report = harvest(model, inputs, "transformer.h.0.mlp", root, items_per_shard=1, progress=False)
    assert report.harvested == 9 and len(report.shards) == 9
    return root


def test_ddp_on_two_gloo_processes_equals_one_process(gpt2_harvest, tmp_path):
    """2 ranks with batch 32 each against 1 process with batch 64 on the same shards: one held
    out, 8 trained on (rank 0 the odd ones, rank 1 the even ones; the single process batches
    them two by two, so its batch i is the union of the ranks' batches i). The weights agree to
    float rounding (tolerance 1e-5; measured ~1e-7), the replicas are bit-identical, and the
    dead-latent counters (a latent is dead after one silent step here, so AuxK trains) count both
    ranks' tokens. With bfloat16 gradients, half the bytes and the same run to that rounding. A
    run killed after step 12 and started again resumes from its step-10 checkpoint, bit for bit."""
    steps = 24  # three passes over the 8 training shards
    base = dict(steps=steps, lr=3e-3, warmup_steps=2, seed=0, dead_tokens=64, progress=False)
    out = tmp_path / "ddp"
    out.mkdir()
    mp.start_processes(
        _ddp_rank,
        args=(2, _free_port(), str(gpt2_harvest), str(out), {**base, "batch_size": 32, "shuffle_tokens": 32}),
        nprocs=2,
        start_method="spawn",
    )
    ranks = [load_file(str(out / f"exact{r}.safetensors")) for r in range(2)]
    resumed = load_file(str(out / "resumed0.safetensors"))  # killed at step 12, resumed from step 10
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # replicas in step, bit for bit
        assert torch.equal(resumed[name], ranks[0][name]), name
    single_cfg = TrainConfig(**base, batch_size=64, shuffle_tokens=64)
    single, report = train_sae_distributed(gpt2_harvest, d_sae=64, k=4, config=single_cfg)
    diff = max(float((ranks[0][n] - p.detach()).abs().max()) for n, p in single.named_parameters())
    assert diff < 1e-5, diff
    start = type(single)(64, 64, k=4).W_dec.detach()
    assert float((ranks[0]["W_dec"] - start).abs().max()) > 1e-2  # training moved the weights
    info = [json.loads((out / f"exact{r}.json").read_text()) for r in range(2)]
    assert info[0]["tokens_seen"] == info[1]["tokens_seen"] == report.tokens_seen == steps * 64
    assert abs(info[0]["fvu"] - report.fvu) < 1e-5
    assert info[0]["dead"] == info[1]["dead"] == report.dead_fraction > 0
    # what a rank sends in a step with dead latents: the gradients of W_enc, W_dec, b_enc, b_dec
    # (float32), the fired latents, tokens and loss, the residuals' sums and squares (float64)
    d_in = 64  # the tiny GPT-2's width
    grads = 4 * (2 * d_in * 64 + 64 + d_in)
    stats = 8 * (64 + 2) + 8 * (2 * d_in + 1)
    assert info[0]["bytes"] == grads + stats
    # bfloat16 gradients: half the gradient bytes, the same training to bf16 rounding
    bf16, bf16_info = load_file(str(out / "bf160.safetensors")), json.loads((out / "bf160.json").read_text())
    assert bf16_info["bytes"] == grads // 2 + stats
    bf16_diff = max(float((bf16[n] - p.detach()).abs().max()) for n, p in single.named_parameters())
    assert 1e-5 < bf16_diff < 2e-2, bf16_diff  # measured 6e-3 (weights ~0.1): rounded, not broken
    assert abs(bf16_info["fvu"] - report.fvu) < 5e-3  # measured 0.7089 against 0.7095
    # the checkpoint is of this 2-process run: resuming it with one process is refused
    with pytest.raises(ValueError, match="world_size: 2 vs 1"):
        train_sae_distributed(gpt2_harvest, d_sae=64, k=4, config=single_cfg, checkpoint_dir=out / "ckpt")


# -- a diffusion pipeline: every (step, branch) of every prompt, once ---------------------------
def test_harvest_of_a_pipeline_keeps_every_step_and_branch_and_trains_on_one(tmp_path):
    """A tiny Stable Diffusion pipeline harvested by 2 ranks (run one after the other here): each
    prompt's mid-block activations at both steps and both CFG branches land in its rank's shard,
    equal to a plain Cache of the same calls; an SAE then trains on the cond branch at step 0."""
    from interventions import Cache, attach
    from tests.tiny_models import sd_pipeline

    torch.set_num_threads(1)
    pipe = sd_pipeline()
    prompts = ["a red circle", "a blue square", "a green star", "a red square"]

    def run(pipe, prompt):
        kw = dict(num_inference_steps=2, guidance_scale=3.0, output_type="pt")
        return pipe([prompt], generator=torch.Generator().manual_seed(0), **kw)

    root = tmp_path / "h"
    for rank in (0, 1):
        harvest(
            pipe, prompts, "unet.mid_block", root, run=run, rank=rank, world_size=2, items_per_shard=1, progress=False
        )
    reference = Cache(on_repeat="append")
    for prompt in prompts:
        with attach(pipe, {"unet.mid_block": reference}):
            run(pipe, prompt)
    done = open_harvest(root)
    seen = {}
    for shard, key, tensor in done.entries():
        (item,) = shard.items
        seen[item, key] = tensor
        assert torch.equal(tensor, reference.store.get(key)[item : item + 1]), (item, key)
    keys = {(step, branch) for step in (0, 1) for branch in ("cond", "uncond")}
    assert {(item, key[1:]) for item, key in seen} == {(i, k) for i in range(4) for k in keys}

    cfg = TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=1, shuffle_tokens=8, progress=False)
    sae, report = train_sae_distributed(done, d_sae=64, k=4, layout="BCHW", branch="cond", steps=[0], config=cfg)
    h, w = seen[0, ("unet.mid_block", 0, "cond")].shape[-2:]
    assert report.settings["eval_tokens"] == h * w  # shard 0 (prompt 0), cond branch, step 0: one map
    assert report.tokens_seen == 6 * 8 and (sae.info.branch, sae.info.steps) == ("cond", [0])


# -- a harvest killed with SIGKILL resumes: every input exactly once ------------------------------
def _stalling_run(stall: int, flag: str):
    """``run`` for harvest: inputs are (index, tensor); at input ``stall`` it says so and hangs."""

    def run(model, item):
        index, x = item
        if index == stall:
            Path(flag).touch()
            time.sleep(300)
        return model(x)

    return run


def _indexed(n: int) -> list[tuple[int, torch.Tensor]]:
    return list(enumerate(_plain_inputs(n)))


def harvest_process() -> None:
    """A harvesting rank run as its own process (argv: root, inputs, stalling input, flag file)."""
    torch.set_num_threads(1)
    root, n, stall, flag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    harvest(_plain_model(), _indexed(n), "0", root, run=_stalling_run(stall, flag), items_per_shard=2, progress=False)


def _start_rank(rank: int, world: int, root: Path, n: int, stall: int, flag: Path) -> subprocess.Popen:
    code = "from tests.test_distributed import harvest_process; harvest_process()"
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", code, str(root), str(n), str(stall), str(flag)]
    return subprocess.Popen(args, cwd=ROOT, env=env)


def test_harvest_killed_with_sigkill_resumes_with_every_input_once(tmp_path):
    n, root, flag = 12, tmp_path / "harvest", tmp_path / "stalled"
    # rank 0 runs inputs 0, 2, ..., 10 two per shard: killed at input 10, with 8 buffered
    ranks = [_start_rank(0, 2, root, n, 10, flag), _start_rank(1, 2, root, n, -1, flag)]
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert time.monotonic() < deadline and ranks[0].poll() is None, "rank 0 never reached input 10"
        time.sleep(0.05)
    ranks[0].send_signal(signal.SIGKILL)
    assert ranks[0].wait(60) == -signal.SIGKILL
    assert ranks[1].wait(120) == 0
    manifest = json.loads((root / "rank-00000" / "manifest.json").read_text())
    assert manifest["shards"] == {"shard-00000.safetensors": [0, 2], "shard-00001.safetensors": [4, 6]}
    with pytest.raises(HarvestError, match="incomplete: 2 of 12 inputs"):
        open_harvest(root)

    report = harvest(_plain_model(), _indexed(n), "0", root, run=_stalling_run(-1, ""), rank=0, world_size=2,
                     items_per_shard=2, progress=False)  # fmt: skip
    assert (report.done_before, report.harvested, report.shards) == (4, 2, ["shard-00002.safetensors"])
    done = open_harvest(root)
    assert sorted(i for s in done.shards for i in s.items) == list(range(n))  # each input once
    assert len(done.shards) == 6 and done.rows("0") == n * TOKENS

    reference_root = tmp_path / "reference"  # one uninterrupted process
    harvest(_plain_model(), _plain_inputs(n), "0", reference_root, items_per_shard=3, progress=False)
    resumed = torch.cat(list(done.tokens("0")))
    reference = torch.cat(list(open_harvest(reference_root).tokens("0")))
    assert resumed.shape == reference.shape == (n * TOKENS, D)
    assert torch.equal(_sorted_rows(resumed), _sorted_rows(reference))  # every activation exactly once


def test_a_shard_written_just_before_a_kill_is_adopted_on_resume(tmp_path):
    """A kill between a shard's rename and its manifest's rewrite: the shard's header says which
    inputs it holds, so the resume lists it instead of running them again."""
    root = tmp_path / "h"
    harvest(_plain_model(), _plain_inputs(6), "0", root, items_per_shard=2, progress=False)
    path = root / "rank-00000" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["shards"]["shard-00002.safetensors"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(HarvestError, match="shard-00002.safetensors is not in its rank's manifest"):
        open_harvest(root)
    report = harvest(_plain_model(), _plain_inputs(6), "0", root, items_per_shard=2, progress=False)
    assert (report.done_before, report.harvested) == (6, 0)
    assert open_harvest(root).rows("0") == 6 * TOKENS


def test_a_harvest_that_raises_keeps_only_whole_shards_and_resumes(tmp_path):
    """An input that fails part-way through a shard: the shard's earlier inputs are not written
    (a shard holds whole sets of inputs only), and the rerun does them."""
    root = tmp_path / "h"

    def failing(model, item):
        if item[0] == 3:
            raise RuntimeError("out of memory")
        return model(item[1])

    with pytest.raises(RuntimeError, match="out of memory"):
        harvest(_plain_model(), _indexed(6), "0", root, run=failing, items_per_shard=2, progress=False)
    assert sorted(p.name for p in (root / "rank-00000").glob("shard-*")) == ["shard-00000.safetensors"]
    report = harvest(
        _plain_model(), _indexed(6), "0", root, run=_stalling_run(-1, ""), items_per_shard=2, progress=False
    )
    assert (report.done_before, report.harvested) == (2, 4)
    assert sorted(i for s in open_harvest(root).shards for i in s.items) == list(range(6))


# -- bad input: clear errors, nothing overwritten ------------------------------------------------
def test_resume_with_another_world_size_is_refused_and_writes_nothing(tmp_path):
    root = tmp_path / "h"
    harvest(_plain_model(), _plain_inputs(6), "0", root, rank=0, world_size=2, progress=False)
    before = _folder_state(root)
    for rank, world in ((0, 3), (0, 1)):
        with pytest.raises(HarvestError, match=r"harvested by 2 processes, this run has \d.*--nproc-per-node 2"):
            harvest(_plain_model(), _plain_inputs(6), "0", root, rank=rank, world_size=world, progress=False)
    with pytest.raises(HarvestError, match="rank-00001 is missing"):
        open_harvest(root)
    assert _folder_state(root) == before


def test_a_missing_shard_is_named_and_nothing_is_overwritten(tmp_path):
    root = tmp_path / "h"
    harvest(_plain_model(), _plain_inputs(6), "0", root, items_per_shard=2, progress=False)
    (root / "rank-00000" / "shard-00001.safetensors").unlink()
    before = _folder_state(root)
    with pytest.raises(HarvestError, match=r"shard-00001.safetensors is missing \(items \[2, 3\] of rank 0\)"):
        open_harvest(root)
    with pytest.raises(HarvestError, match=r"lost shard-00001.safetensors \(items \[2, 3\]\)"):
        harvest(_plain_model(), _plain_inputs(6), "0", root, items_per_shard=2, progress=False)
    assert _folder_state(root) == before


def test_a_shard_of_another_site_is_refused_and_nothing_is_overwritten(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    harvest(_plain_model(), _plain_inputs(6), "0", ours, items_per_shard=2, progress=False)
    harvest(_plain_model(), _plain_inputs(6), "2", theirs, items_per_shard=2, progress=False)
    shard = "rank-00000/shard-00001.safetensors"
    (ours / shard).write_bytes((theirs / shard).read_bytes())
    before = _folder_state(ours)
    expected = r"shard-00001.safetensors is a shard of another harvest: sites \['2'\] \(this harvest: \['0'\]\)"
    with pytest.raises(HarvestError, match=expected):
        open_harvest(ours)
    with pytest.raises(HarvestError, match=expected):
        harvest(_plain_model(), _plain_inputs(6), "0", ours, items_per_shard=2, progress=False)
    assert _folder_state(ours) == before


# -- checkpoints -----------------------------------------------------------------------------------
class _Crash(DDPSync):
    """Dies after step ``at`` (as a killed job would), once its checkpoints are written."""

    def __init__(self, folder: Path, at: int) -> None:
        super().__init__(folder, every=5)
        self.at = at

    def step_done(self, state, sae, opt) -> None:
        super().step_done(state, sae, opt)
        if state.step == self.at:
            raise KeyboardInterrupt


def test_training_resumed_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    root = tmp_path / "h"
    harvest(_plain_model(), _plain_inputs(6), "0", root, items_per_shard=1, progress=False)
    cfg = TrainConfig(
        steps=16, batch_size=16, lr=1e-2, warmup_steps=2, shuffle_tokens=32, dead_tokens=32, progress=False
    )
    whole, whole_report = train_sae_distributed(root, d_sae=32, k=4, config=cfg)
    folder = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        train_sae_distributed(root, d_sae=32, k=4, config=cfg, sync=_Crash(folder, at=12))
    assert [p.name for p in checkpoints(folder)] == ["step-00000005", "step-00000010"]
    resumed, report = train_sae_distributed(root, d_sae=32, k=4, config=cfg, checkpoint_dir=folder)
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert report.losses == whole_report.losses and report.tokens_seen == whole_report.tokens_seen == 16 * 16
    assert [p.name for p in checkpoints(folder)] == ["step-00000010", "step-00000016"]  # every=0 now: the end only
    assert {f.name for f in checkpoints(folder)[-1].iterdir()} == {"state.safetensors", "state.json"}
    other = TrainConfig(**{**cfg.__dict__, "lr": 2e-2})
    with pytest.raises(ValueError, match="was written by another run"):
        train_sae_distributed(root, d_sae=32, k=4, config=other, checkpoint_dir=folder)


# -- the command line, under torchrun ------------------------------------------------------------
def plain_job():
    """``--job tests.test_distributed:plain_job`` for ``python -m interventions.distributed harvest``."""
    return _plain_model(), _plain_inputs(5)


def test_cli_harvests_checks_and_trains_under_torchrun(tmp_path, capsys):
    from interventions.distributed.cli import main

    torch.set_num_threads(1)
    root, out = tmp_path / "h", tmp_path / "sae"
    assert (
        main(
            ["harvest", str(root), "--job", "tests.test_distributed:plain_job", "--site", "0", "--items-per-shard", "1"]
        )
        == 0
    )
    assert main(["check", str(root)]) == 0
    assert "5 inputs in 5 shards, sites ['0'], complete" in capsys.readouterr().out
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc-per-node", "2", "-m", "interventions.distributed", "train-sae", str(root)]
    cmd += ["--out", str(out), "--d-sae", "32", "--k", "4", "--steps", "10", "--batch-size", "16", "--lr", "0.01"]
    done = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "320 tokens, 10 steps on cpu (float32) on 2 processes" in done.stdout  # 10 steps of 2 x 16 tokens
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    (root / "rank-00000" / "shard-00002.safetensors").unlink()
    from interventions.cli import main as interventions_cli

    assert interventions_cli(["distributed", "check", str(root)]) == 2  # the same through `interventions`
    assert "shard-00002.safetensors is missing" in capsys.readouterr().err
