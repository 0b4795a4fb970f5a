"""Continual LoRA personalization recipe: factor algebra, the paper's metrics, diffusers' LoRA
format round trip (bit-identical samples), a tiny pinned continual run, DreamBooth prior
preservation (class images, its pinned effect), Hub publishing, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from recipes.continual_lora import adapters as lora
from recipes.continual_lora.metrics import final_average, forgetting, forgetting_per_task
from recipes.continual_lora.tasks import TASKS, Task, make_tasks
from tests.hub_server import local_hub

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    from recipes.worlds.shapes_model import load_pipeline

    return load_pipeline()


@pytest.fixture(scope="module")
def evaluators():
    from recipes.worlds.shapes_model import load_evaluators

    return load_evaluators()


def _random_factors(unet, rank: int, seed: int, targets: str = "attention") -> lora.Factors:
    import re

    g = torch.Generator().manual_seed(seed)
    pattern = lora.TARGET_SETS[targets]
    out = {}
    for name, m in unet.named_modules():
        chosen = re.fullmatch(pattern, name) if isinstance(pattern, str) else name.endswith(tuple(pattern))
        if chosen and isinstance(m, torch.nn.Linear):
            out[name] = (
                0.3 * torch.randn(rank, m.in_features, generator=g),
                0.3 * torch.randn(m.out_features, rank, generator=g),
            )
    return out


def _images(pipe, prompts, seed=7):
    with torch.no_grad():
        return pipe(
            prompts,
            num_inference_steps=3,
            guidance_scale=3.0,
            output_type="pt",
            generator=torch.Generator().manual_seed(seed),
        ).images


# ----------------------------------------------------------------------------------- algebra, metrics


def test_metrics_follow_the_authors_formulas():
    S = torch.tensor([[0.9, 0.4, 0.1], [0.2, 0.8, 0.6], [0.0, 0.1, 0.7]])
    assert final_average(S) == pytest.approx((0.1 + 0.6 + 0.7) / 3)
    assert forgetting(S) == pytest.approx(((0.9 - 0.1) + (0.8 - 0.6) + 0.0) / 3)
    assert forgetting_per_task(S) == pytest.approx([0.8, 0.2, 0.0])
    with pytest.raises(ValueError, match="square"):
        forgetting(torch.zeros(2, 3))


def test_factor_algebra():
    g = torch.Generator().manual_seed(0)
    a = {"m": (torch.randn(4, 6, generator=g), torch.randn(5, 4, generator=g))}
    b = {"m": (torch.randn(4, 6, generator=g), torch.randn(5, 4, generator=g))}
    both = lora.concat([a, b])
    assert both["m"][0].shape == (8, 6)
    torch.testing.assert_close(lora.updates(both)["m"], lora.updates(a)["m"] + lora.updates(b)["m"])
    summed = lora.factor_sum(a, b)["m"]
    torch.testing.assert_close(summed[1] @ summed[0], (a["m"][1] + b["m"][1]) @ (a["m"][0] + b["m"][0]))
    # ortho_init: every column of the new A is a unit vector orthogonal to the old column
    new_A = lora.orthogonal_columns(a["m"][0])
    assert new_A.shape == a["m"][0].shape
    torch.testing.assert_close((new_A * a["m"][0]).sum(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(new_A.norm(dim=0), torch.ones(6))
    # MagMax keeps the larger magnitude per element
    merged = lora.max_abs({"m": torch.tensor([1.0, -3.0, 0.5])}, {"m": torch.tensor([-2.0, 1.0, 0.5])})
    assert merged["m"].tolist() == [-2.0, -3.0, 0.5]
    # a dense update as an exact full-rank LoRA, or its best rank-1 approximation
    d = {"m": torch.randn(5, 6, generator=g)}
    torch.testing.assert_close(lora.updates(lora.to_factors(d))["m"], d["m"], atol=1e-5, rtol=0)
    assert lora.to_factors(d, rank=1)["m"][0].shape == (1, 6)


def test_new_adapters_start_from_what_each_method_says():
    from recipes.continual_lora.methods import _init

    g = torch.Generator().manual_seed(1)
    two = {"m": (torch.randn(8, 6, generator=g), torch.randn(5, 8, generator=g))}  # two rank-4 tasks side by side
    A, B = _init("ortho_init_product", two, 4)["m"]
    assert A.shape == (4, 6) and torch.equal(B, torch.zeros(5, 4))
    summed = two["m"][0][:4] + two["m"][0][4:]
    torch.testing.assert_close((A * summed).sum(0), torch.zeros(6), atol=1e-5, rtol=0)
    one = {"m": (summed, torch.ones(5, 4))}
    assert torch.equal(_init("ortho_init", one, 4)["m"][0], lora.orthogonal_columns(summed))
    assert _init("naive", one, 4) is one
    assert _init("merge_and_init", one, 4) is None and _init("magmax", one, 4) is None


def test_tasks_refuse_unknown_words_and_lengths():
    assert [t.prompt for t in make_tasks(2)] == ["a disk", "a box"]
    with pytest.raises(ValueError, match="not a shapes-world word"):
        Task("sks", "circle", "red", "solid")
    with pytest.raises(ValueError, match="unknown colour"):
        Task("disk", "circle", "purple", "solid")
    with pytest.raises(ValueError, match="2 to 4 tasks"):
        make_tasks(5)


def test_prior_preservation_settings_are_checked(pipe):
    from recipes.continual_lora.train import Training, train_task

    assert [t.class_prompt for t in TASKS] == ["a circle", "a square", "a triangle", "a cross"]
    with pytest.raises(ValueError, match="prior_weight must be >= 0"):
        Training(prior_weight=-1.0)
    with pytest.raises(ValueError, match="class_images must be >= 1"):
        Training(class_images=0)
    with pytest.raises(ValueError, match="Training.targets must be one of"):
        Training(targets="all")
    with pytest.raises(ValueError, match="Training.prior_prompt must be one of"):
        Training(prior_prompt="empty")
    with pytest.raises(ValueError, match="needs prior="):
        train_task(
            pipe.unet,
            [],
            torch.zeros(1, 2, 3),
            torch.zeros(1, 3, 16, 16),
            pipe.scheduler,
            Training(prior_weight=1.0),
            0,
        )


def test_class_images_are_the_frozen_base_models_class(pipe, evaluators):
    """DreamBooth's class images: the base model's own samples of the class prompt, the same each
    time for one seed (every method trains on the same ones)."""
    from recipes.continual_lora.methods import Evaluation, class_images
    from recipes.worlds.shapes_eval import predict

    ev = Evaluation(steps=5)
    images = class_images(pipe, TASKS[1], 8, ev, seed=10_000)
    assert images.shape == (8, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, class_images(pipe, TASKS[1], 8, ev, seed=10_000))
    # the base model draws "a square" as squares (pinned: 8/8 on this seed), in its own colours
    assert (predict(evaluators, images)["shape"] == 1).sum().item() == 8


def test_null_prior_images_are_the_base_models_empty_prompt(pipe, evaluators):
    """``prior_prompt="null"``: the images kept are the base model's samples of the empty prompt, the
    same for every task (not its class), of mixed shapes."""
    from recipes.continual_lora.methods import Evaluation, class_images, prior_prompt, sample
    from recipes.worlds.shapes_eval import predict

    assert [prior_prompt(t, "null") for t in TASKS] == [""] * 4 and prior_prompt(TASKS[0]) == "a circle"
    with pytest.raises(ValueError, match="unknown prior prompt"):
        prior_prompt(TASKS[0], "empty")
    ev = Evaluation(steps=5)
    images = class_images(pipe, TASKS[1], 8, ev, seed=10_000, which="null")
    assert torch.equal(images, class_images(pipe, TASKS[2], 8, ev, seed=10_000, which="null"))
    assert torch.equal(images, sample(pipe, [""] * 8, Evaluation(samples=8, steps=5, seed=10_000)))
    assert len(set(predict(evaluators, images)["shape"].tolist())) >= 2


# ------------------------------------------------------------------------- diffusers' format round trip


@pytest.mark.parametrize(("rank", "targets"), [(4, "attention"), (64, "attention"), (4, "cross_kv")])
def test_saved_adapter_loads_with_diffusers_and_gives_identical_samples(pipe, tmp_path, rank, targets):
    """peft adapter in memory -> save_lora_weights -> a fresh pipeline's load_lora_weights: the
    same images bit for bit (rank 64: MagMax's full-rank adapters; cross_kv: 8 of the 32
    projections)."""
    import copy

    from recipes.worlds.shapes_model import load_pipeline

    prompts = ["a disk", "a box"]
    base = _images(pipe, prompts)
    trained = copy.deepcopy(pipe)
    factors = _random_factors(trained.unet, rank, seed=rank, targets=targets)
    assert len(factors) == (8 if targets == "cross_kv" else 32)
    lora.attach(trained.unet, rank, init=factors, targets=targets)
    assert set(lora.read_factors(trained.unet)) == set(factors)
    in_memory = _images(trained, prompts)
    assert not torch.equal(in_memory, base)  # the adapter does change the samples

    folder = lora.save_adapter(factors, tmp_path / "adapter")
    assert [p.name for p in folder.iterdir()] == ["pytorch_lora_weights.safetensors"]
    fresh = load_pipeline()
    fresh.load_lora_weights(str(folder))
    assert torch.equal(_images(fresh, prompts), in_memory)
    fresh.unload_lora_weights()
    assert torch.equal(_images(fresh, prompts), base)


# ------------------------------------------------------------------------------- a tiny pinned run


@pytest.fixture(scope="module")
def tiny_runs(pipe, evaluators, tmp_path_factory):
    from recipes.continual_lora.methods import Evaluation, run_sequence
    from recipes.continual_lora.train import Training

    out = tmp_path_factory.mktemp("runs")
    training = Training(steps=40, batch=8, lr=5e-3, instances=8)
    ev = Evaluation(samples=8, steps=5)
    tasks = TASKS[:2]
    return (
        tasks,
        out,
        {
            m: run_sequence(m, pipe, evaluators, tasks, training, ev, seed=0, out=out, progress=False)
            for m in ("naive", "ortho_init")
        },
    )


def test_tiny_continual_run_learns_then_naive_forgets(tiny_runs):
    tasks, out, runs = tiny_runs
    naive, ortho = runs["naive"], runs["ortho_init"]
    for run in runs.values():
        assert len(run.scores) == 2 and all(0.0 <= s <= 1.0 for row in run.scores for s in row)
        assert len(run.adapters) == 2
        assert all(
            (out / run.method / "seed0" / f"task{t}" / "pytorch_lora_weights.safetensors").is_file() for t in (0, 1)
        )
    # pinned numbers of this seed (40 steps of 8 a task, 8 samples): each subject is learnt from zero ...
    assert naive.base == ortho.base == [0.0, 0.0]
    for run in runs.values():
        assert run.scores[0][0] >= 0.375 and run.scores[1][1] >= 0.75
    # ... and "a disk" loses its subject once "a box" is taught (it takes the box's colour and texture)
    assert naive.scores[0][1] <= 0.125
    assert naive.forgetting >= 0.125


def test_prior_preservation_on_the_synonym_class_prompt_holds_the_subject_back(tiny_runs, pipe, evaluators):
    """DreamBooth's class prompt here is the identifier's synonym ("a circle" for "a disk"), whose
    text embedding is almost the same (2% apart): the class loss asks that conditioning for the
    base model's circles, and at weight 1 the subject is not learnt (pinned, same settings as the
    plain run, which reaches >= 0.375)."""
    from recipes.continual_lora.methods import Evaluation, run_sequence
    from recipes.continual_lora.train import Training, encode

    disk, circle = encode(pipe, "a disk"), encode(pipe, "a circle")
    assert ((disk - circle).norm() / disk.norm()).item() < 0.03
    training = Training(steps=40, batch=8, lr=5e-3, instances=8, prior_weight=1.0, class_images=8)
    run = run_sequence(
        "naive", pipe, evaluators, TASKS[:1], training, Evaluation(samples=8, steps=5), seed=0, progress=False
    )
    assert run.scores == [[0.0]]
    assert tiny_runs[2]["naive"].scores[0][0] >= 0.375


def test_publish_push_pull_and_load(tiny_runs, pipe, tmp_path, monkeypatch):
    from recipes.continual_lora.hub import RECORD, WEIGHTS, publish_folder, pull_adapter, push_adapter
    from recipes.continual_lora.methods import Evaluation, evaluate_adapter

    tasks, _, runs = tiny_runs
    run = runs["ortho_init"]
    folder = publish_folder(run, tasks, tmp_path / "card", repo_id="org/shapes-cl-ortho")
    assert {p.name for p in folder.iterdir()} == {WEIGHTS, RECORD, "README.md"}
    card = (folder / "README.md").read_text()
    assert "ortho_init" in card and "library_name: interventions" in card and "load_lora_weights" in card
    assert json.loads((folder / RECORD).read_text())["scores"] == run.scores

    with local_hub(monkeypatch, tmp_path):
        push_adapter(folder, "org/shapes-cl-ortho", tag="v1")
        back = pull_adapter("org/shapes-cl-ortho", revision="v1", cache_dir=tmp_path / "cache")
    assert (back / WEIGHTS).read_bytes() == (folder / WEIGHTS).read_bytes()
    # the pulled adapter scores exactly as the run scored its last model
    ev = Evaluation(samples=8, steps=5)
    from recipes.worlds.shapes_model import load_evaluators

    assert evaluate_adapter(pipe, back, load_evaluators(), tasks, ev) == [row[-1] for row in run.scores]
    with pytest.raises(FileNotFoundError, match="publish_folder"):
        push_adapter(tmp_path / "nothing", "org/x")


def test_cli_quick_run(tmp_path, capsys):
    from interventions import cli

    argv = ["--quick", "--steps", "3", "--samples", "2", "--eval-steps", "2", "--methods", "merge_and_init", "magmax"]
    argv += ["--targets", "cross_kv", "--class-images", "4"]
    assert cli.main(["run", "continual_lora", *argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "| merge_and_init | 0 |" in table and "| magmax | 0 |" in table
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["method"] for r in record["runs"]] == ["merge_and_init", "magmax"]
    assert [t["prompt"] for t in record["tasks"]] == ["a in", "a red"] and record["training"]["targets"] == "cross_kv"
    # the defaults chosen on selection seed 11: far identifiers, prior preservation on the empty prompt
    assert (record["training"]["prior_weight"], record["training"]["prior_prompt"]) == (1.0, "null")
    assert (tmp_path / "run" / "continual_lora_matrices.png").stat().st_size > 1000
    assert (tmp_path / "run" / "hub" / "magmax" / "README.md").is_file()
    # merge_and_init keeps both task adapters side by side: rank 4 + 4, on the cross_kv targets only
    from safetensors import safe_open

    weights = tmp_path / "run" / "adapters" / "merge_and_init" / "seed0" / "task1" / "pytorch_lora_weights.safetensors"
    with safe_open(str(weights), "pt") as f:
        down = [k for k in f.keys() if "lora_A" in k or "lora.down" in k]
        ranks = {f.get_slice(k).get_shape()[0] for k in down}
    assert ranks == {8} and len(down) == 8  # the 8 cross-attention key / value maps
    with pytest.raises(SystemExit):
        cli.main(["run", "continual_lora", "--push-to", "org/x"])


def test_card_folder_goes_through_interventions_hub_push_and_pull(pipe, tmp_path, monkeypatch):
    from interventions import cli
    from recipes.continual_lora.hub import WEIGHTS, publish_folder
    from recipes.continual_lora.methods import Sequence

    saved = lora.save_adapter(_random_factors(pipe.unet, 4, seed=3), tmp_path / "adapter")
    seq = Sequence("naive", 0, [[0.5, 0.0], [0.0, 1.0]], [0.0, 0.0], adapters=[str(saved)])
    folder = publish_folder(seq, TASKS[:2], tmp_path / "card")
    assert "Final average 0.500, forgetting 0.250" in (folder / "README.md").read_text()
    with local_hub(monkeypatch, tmp_path) as server:
        assert cli.main(["hub", "push", str(folder), "org/shapes-cl", "--endpoint", server.url]) == 0
        back = tmp_path / "back"
        assert cli.main(["hub", "pull", "org/shapes-cl", "--endpoint", server.url, "--local-dir", str(back)]) == 0
    assert (back / WEIGHTS).read_bytes() == (saved / WEIGHTS).read_bytes()
