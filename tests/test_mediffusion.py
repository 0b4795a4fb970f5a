"""Mediffusion at tiny scale: the two-class task and its class region, guided counterfactuals,
the overlap score, a seeded end-to-end run, the CLI's refusals."""

import json
from pathlib import Path

import pytest
import torch

from interventions.cli import main as cli_main
from recipes.joint_diffusion.model import JointDiffusion
from recipes.mediffusion.counterfactual import counterfactual, explanation_map, top_overlap
from recipes.mediffusion.data import foreground, two_class_shapes
from recipes.mediffusion.run import EVALUATORS, MediffusionConfig, explain_saved, run_mediffusion

torch.set_num_threads(1)


def test_task_region_is_where_the_counterpart_differs_and_the_evaluator_agrees():
    from recipes.worlds.shapes_eval import load_evaluators

    task = two_class_shapes(64, ("circle", "square"), torch.Generator().manual_seed(0))
    assert torch.equal(foreground(task.images) ^ foreground(task.counterparts), task.region)
    assert 0.02 < task.region.float().mean() < 0.1  # circle vs square differ in the corners
    shape = load_evaluators(EVALUATORS)["shape"]
    with torch.no_grad():
        assert torch.equal(shape(task.images).argmax(-1), task.class_index(task.labels))
        assert torch.equal(shape(task.counterparts).argmax(-1), task.class_index(1 - task.labels))
    with pytest.raises(ValueError, match="two different shapes"):
        two_class_shapes(4, ("circle", "circle"))
    colours = two_class_shapes(16, ("red", "blue"), torch.Generator().manual_seed(0), factor="colour")
    assert torch.equal(colours.region, foreground(colours.images))  # recolouring changes the whole shape
    assert colours.class_index(colours.labels).tolist() == [[0, 2][i] for i in colours.labels.tolist()]


def test_top_overlap_counts_top_pixels_inside_the_region():
    maps = torch.zeros(2, 4, 4)
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[:, 0, :2] = True
    maps[0, 0, :2] = 1.0  # the two largest pixels are the region: 1
    maps[1, 3, :2] = 1.0  # both outside: 0
    assert top_overlap(maps, region) == 0.5
    with pytest.raises(ValueError, match="same shape"):
        top_overlap(maps, region[:, :2])


def test_guidance_moves_the_classifier_towards_the_target():
    torch.manual_seed(0)
    model = JointDiffusion(widths=(8, 16), hidden=16).eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(50)  # an untrained head is flat; a sharp one gives guidance a gradient
    task = two_class_shapes(8, generator=torch.Generator().manual_seed(3))
    target = 1 - task.labels

    def target_prob(scale, recurrence=1):
        g = torch.Generator().manual_seed(0)
        cf = counterfactual(
            model, task.images, target, t0=100, steps=3, scale=scale, generator=g, recurrence=recurrence
        )
        with torch.no_grad():
            return model.classify(cf).softmax(-1).gather(1, target[:, None]).mean().item(), cf

    p0, control = target_prob(0.0)
    p1, guided = target_prob(300.0)
    assert p0 < 0.6 and p1 > p0 + 0.2, (p0, p1)
    assert explanation_map(control, guided).sum() > 0
    p2, _ = target_prob(300.0, recurrence=2)  # guidance twice per noise level, re-noised in between
    assert p2 > p0 + 0.2, (p0, p2)
    with pytest.raises(ValueError, match="recurrence must be >= 1"):
        counterfactual(model, task.images, target, t0=100, recurrence=0)
    with pytest.raises(ValueError, match="t0 must lie"):
        counterfactual(model, task.images, target, t0=5000)
    with pytest.raises(ValueError, match="one class per image"):
        counterfactual(model, task.images, target[:3], t0=100)
    with pytest.raises(ValueError, match="start must be one of"):
        counterfactual(model, task.images, target, t0=100, start="ddpm")
    with pytest.raises(ValueError, match="distance must be >= 0"):
        counterfactual(model, task.images, target, t0=100, distance=-1.0)
    with pytest.raises(ValueError, match="need smoothing >= 0 and draws >= 1"):
        counterfactual(model, task.images, target, t0=100, smoothing=0.3, draws=0)


def test_inversion_start_keeps_the_image_unguided_and_guidance_changes_the_class_region():
    """On the shipped model: from a DDIM inversion to t0 the control returns the source image
    (the evaluator still sees the source shape on every image), guidance turns the model's own
    classifier and concentrates its change in the class region."""
    from recipes.joint_diffusion.hub import load_joint
    from recipes.worlds.shapes_eval import load_evaluators

    model = load_joint(Path(__file__).resolve().parents[1] / "recipes" / "results" / "mediffusion_model").eval()
    task = two_class_shapes(16, generator=torch.Generator().manual_seed(5))
    target = 1 - task.labels
    shape = load_evaluators(EVALUATORS)["shape"]

    def run(scale):
        cf = counterfactual(model, task.images, target, t0=300, steps=20, scale=scale, start="inversion")
        with torch.no_grad():
            return cf, shape(cf).argmax(-1), model.classify(cf).argmax(-1)

    control, said, _ = run(0.0)
    assert explanation_map(task.images, control).mean() < 0.05  # ~0.01: the round trip keeps the image
    assert torch.equal(said, task.class_index(task.labels))
    guided, said, own = run(60.0)
    assert (own == target).float().mean() > 0.9
    chance = task.region.float().mean().item()
    assert top_overlap(explanation_map(control, guided), task.region) > 3 * chance
    g = torch.Generator().manual_seed(0)  # smoothed guidance: the classifier sees x0_hat + 0.3 noise
    smoothed = counterfactual(
        model, task.images, target, t0=300, scale=60.0, start="inversion", smoothing=0.3, generator=g
    )
    assert not torch.equal(smoothed, guided)
    with torch.no_grad():
        assert (shape(smoothed).argmax(-1) == task.class_index(target)).float().mean() > 0.5


def test_tiny_run_writes_every_result_and_the_hub_folder(tmp_path):
    config = MediffusionConfig(
        seeds=(0,),
        modes=("supervised", "fixmatch"),
        steps=12,
        n_train=100,
        labelled_fraction=0.2,
        n_test=60,
        counterfactuals=2,
        cf_steps=2,
        t0=40,
        scales=(0.0, 100.0),
    )
    result = run_mediffusion(config, out=tmp_path, progress=False)
    assert [(r["mode"], r["labelled"]) for r in result["runs"]] == [("supervised", 20), ("fixmatch", 20)]
    assert all(0 <= r["test_accuracy"] <= 1 for r in result["runs"])
    assert "mask_rate" in result["runs"][1]["history"][-1]
    saved = json.loads((tmp_path / "mediffusion.json").read_text())
    assert saved["summary"] == result["summary"]
    scores = result["counterfactuals"][0]
    assert scores["scale_100"]["chance_overlap"] == pytest.approx(scores["scale_0"]["chance_overlap"])
    assert "top_overlap_vs_unguided" in scores["scale_100"]
    samples = scores["samples"]  # does the denoiser generate the shapes? (renders: foreground ~0.2)
    assert 0 <= samples["evaluator_task_class_rate"] <= 1 and 0.1 < samples["renders_foreground_share"] < 0.35
    assert json.loads((tmp_path / "model" / "config.json").read_text())["prediction"] == "v_prediction"
    assert (tmp_path / "mediffusion.png").is_file() and (tmp_path / "model" / "model.safetensors").is_file()
    again = explain_saved(tmp_path / "model", config, seed=0)  # the saved model explains the same
    assert {k: v for k, v in again.items() if k.startswith("scale_")} == {
        k: v for k, v in scores.items() if k.startswith("scale_")
    }


def test_cli_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit) as error:
        cli_main(["run", "mediffusion", "--steps", "0"])
    assert error.value.code == 2 and "--steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["run", "mediffusion", "--labelled", "1.5", "--modes", "supervised", "--seeds", "0"])
    with pytest.raises(SystemExit) as error:
        cli_main(["run", "mediffusion", "--cf-distance", "-1"])
    assert error.value.code == 2 and "--cf-distance and --cf-smoothing must be >= 0" in capsys.readouterr().err


def test_shipped_model_is_the_v_prediction_model_its_card_describes(tmp_path):
    from pathlib import Path

    from recipes.joint_diffusion.hub import load_joint, save_joint
    from recipes.joint_diffusion.train import accuracy

    folder = Path(__file__).resolve().parents[1] / "recipes" / "results" / "mediffusion_model"
    model = load_joint(folder)
    assert model.prediction == "v_prediction" and "v-prediction" in (folder / "README.md").read_text()
    task = two_class_shapes(200, generator=torch.Generator().manual_seed(99))
    recorded = json.loads((folder / "metrics.json").read_text())["test_accuracy"]
    assert accuracy(model, task.images, task.labels) >= recorded - 0.03  # 0.999 on the run's 1,000 test images
    back = load_joint(save_joint(model, tmp_path / "again"))
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
