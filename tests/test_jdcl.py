"""JDCL at tiny scale: replay filtering, distillation pulls the student to its teacher, the
accuracy matrix and forgetting bookkeeping, CLI refusals."""

import json

import pytest
import torch
from torch.nn import functional as F

from interventions.cli import main as cli_main
from recipes.jdcl.continual import DistillConfig, fresh_model, generate, keep_classes, train_global
from recipes.jdcl.run import JDCLConfig, _row, _tasks, run_jdcl
from recipes.joint_diffusion.hub import load_joint
from recipes.joint_diffusion.model import JointDiffusion

torch.set_num_threads(1)


def test_keep_classes_drops_the_generators_mismatches():
    x = torch.arange(5.0).view(5, 1, 1, 1)
    kept, labels = keep_classes(x, torch.tensor([0, 2, 1, 3, 0]), [0, 1])
    assert kept.flatten().tolist() == [0.0, 2.0, 4.0] and labels.tolist() == [0, 1, 0]


def test_generate_is_seeded_and_labels_are_the_models_own():
    model = fresh_model(4, (8, 16), 16, seed=0).eval()
    a, la = generate(model, 5, steps=2, generator=torch.Generator().manual_seed(1))
    b, lb = generate(model, 5, steps=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert torch.equal(la, model.classify(a).argmax(-1)) and a.abs().max() <= 1


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_diffusion_distillation_pulls_the_student_to_the_teacher(prediction):
    def fresh(seed):
        torch.manual_seed(seed)
        return JointDiffusion(num_classes=4, widths=(8, 16), hidden=16, prediction=prediction).eval()

    previous, local = fresh(0), fresh(1)
    replay = torch.rand(16, 3, 16, 16) * 2 - 1
    labels = torch.full((16,), 2)  # all new-class samples: the local model teaches
    x_t, t = replay + 0.3 * torch.randn(16, 3, 16, 16), torch.full((16,), 200)

    def gap(model):
        with torch.no_grad():
            return F.mse_loss(model.predict(x_t, t), local.predict(x_t, t)).item()  # in the loss's own units

    only_kd = DistillConfig(steps=15, batch_size=16, lr=3e-3, denoising=0.0, labels=0.0, classifier_kd=0.0)
    student = train_global(previous, local, replay, labels, [0, 1], only_kd)
    assert gap(student) < 0.5 * gap(previous), (gap(previous), gap(student))
    with pytest.raises(ValueError, match="at least one sample"):
        train_global(previous, local, replay[:0], labels[:0], [0, 1], only_kd)


def test_tiny_run_reports_the_accuracy_matrix_and_forgetting(tmp_path):
    config = JDCLConfig(seeds=(0,), n_train=16, n_test=12, steps=2, global_steps=2, n_generated=8, sample_steps=2)
    run = run_jdcl(config, out=tmp_path, progress=False)["runs"][0]
    methods = run["methods"]
    assert methods["naive"]["matrix"][0] == methods["jdcl"]["matrix"][0] == methods["replay"]["matrix"][0]
    for name in ("naive", "replay", "jdcl"):
        m = methods[name]["matrix"]
        assert methods[name]["forgetting"] == pytest.approx(m[0][0] - m[1][0])
        assert methods[name]["average"] == pytest.approx(sum(m[1]) / 2)
    assert len(methods["joint"]["matrix"]) == 1 and methods["joint"]["forgetting"] is None
    assert run["replay_kept"]["old"] + run["replay_kept"]["new"] <= 16
    assert (tmp_path / "jdcl.json").is_file()
    # the JDCL global model, saved in the Hub layout, reads back to the same accuracies
    back = load_joint(tmp_path / "jdcl_model_seed0")
    assert _row(back.eval(), _tasks(config, 0)) == methods["jdcl"]["matrix"][1]
    assert "jdcl" in (tmp_path / "jdcl_model_seed0" / "README.md").read_text().lower()


def test_cli_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit) as error:
        cli_main(["run", "jdcl", "--global-steps", "0"])
    assert error.value.code == 2 and "--global-steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        cli_main(["run", "jdcl", "--per-class", "0"])  # the first replay has unconditional epsilon generators
    assert error.value.code == 2 and "add --no-conditional --prediction epsilon" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        cli_main(["run", "jdcl", "--workers", "0"])
    assert error.value.code == 2 and "--workers must be >= 1" in capsys.readouterr().err


TINY = ["--n-train", "8", "--n-test", "4", "--steps", "3", "--global-steps", "1", "--per-class", "2"]
TINY += ["--max-draws", "32", "--sample-steps", "2", "--seeds", "0", "1"]


def test_parallel_seeds_equal_the_in_process_run(tmp_path, capsys):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert cli_main(["run", "jdcl", *TINY, "--workers", "1", "--out", str(serial)]) == 0
    assert cli_main(["run", "jdcl", *TINY, "--workers", "2", "--out", str(parallel)]) == 0
    printed = capsys.readouterr().out
    assert "2 seeds in" in printed and printed.count("| mean +- std | jdcl |") == 2  # the table, once per run
    assert all((d / "jdcl_matrices.png").stat().st_size > 1000 for d in (serial, parallel))
    a, b = (json.loads((d / "jdcl_balanced.json").read_text()) for d in (serial, parallel))
    assert b["config"] == a["config"] and a["config"]["seeds"] == [0, 1] and a["config"]["class_conditional"]
    strip = lambda runs: [{k: v for k, v in r.items() if k != "cpu_s"} for r in runs]  # noqa: E731
    assert strip(b["runs"]) == strip(a["runs"]) and [r["seed"] for r in b["runs"]] == [0, 1]
    assert a["runs"][0]["replay"] != a["runs"][1]["replay"]  # the seeds differ: the equality says something
    # every stage reported: the parent's bar counts stages (9 per seed for 2 tasks) as the workers write them
    progress = lambda folder: json.loads((folder / "progress.json").read_text())  # noqa: E731
    assert progress(serial) == {"stages_done": 18, "stages": 18}
    assert (
        progress(parallel / "seeds" / "seed1")
        == {"stages_done": 9, "stages": 9}
        == progress(parallel / "seeds" / "seed0")
    )
    for seed in (0, 1):  # each seed's JDCL model where the in-process run puts it, byte for byte
        model = f"jdcl_model_seed{seed}/model.safetensors"
        assert (parallel / model).read_bytes() == (serial / model).read_bytes()
        assert "class-conditional" in (serial / f"jdcl_model_seed{seed}" / "README.md").read_text()
    back = load_joint(serial / "jdcl_model_seed1").eval()
    from recipes.jdcl.shapes import shapes_tasks

    tasks = shapes_tasks("colour", 8, 4, seed=1)
    assert [_accuracy(back, t) for t in tasks] == a["runs"][1]["methods"]["jdcl"]["matrix"][1]


def _accuracy(model, task):
    from recipes.joint_diffusion.train import accuracy

    return accuracy(model, task.test_x, task.test_y)


def test_replay_judge_agrees_with_real_renders_and_flags_noise():
    from recipes.jdcl.shapes import evaluator_judge, shapes_tasks

    tasks = shapes_tasks("colour", 32, 8, seed=0)
    judge = evaluator_judge("colour")
    for task in tasks:  # real renders with their true labels: the evaluator agrees, the background is black
        real = judge(task.train_x, task.train_y)
        assert real["evaluator_agrees"] == 1.0 and 0.05 < real["foreground"] < 0.5
    noise = judge(torch.rand(32, 3, 16, 16) * 2 - 1, torch.zeros(32, dtype=torch.long))
    assert noise["foreground"] > 0.9
    assert [t.classes for t in tasks] == [[0, 1], [2, 3]]
    assert torch.equal(tasks[1].train_y.unique(), torch.tensor([2, 3]))


def test_conditional_replay_draws_each_short_class_and_drops_mismatches(monkeypatch):
    from recipes.jdcl import continual

    model = JointDiffusion(num_classes=4, widths=(8, 16), hidden=16, class_conditional=True).eval()
    with torch.no_grad():  # its classifier calls every image class 0
        model.head[-1].weight.zero_()
        model.head[-1].bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    asked = []

    def spy(*args, **kwargs):
        asked.append(args[5])
        return generate(*args, **kwargs)

    monkeypatch.setattr(continual, "generate", spy)
    x, y, info = continual.balanced_replay(model, [0, 1], per_class=3, steps=2, batch_size=4, max_draws=16)
    assert asked == [0, 1, 1, 1]  # class 0 filled by its first draw; class 1 drawn until the budget ends
    assert info == {"drawn": 16, "kept": {"0": 3, "1": 0}} and y.tolist() == [0, 0, 0] and x.shape[0] == 3


def test_conditional_global_stage_trains_the_class_embedding():
    previous, local = (
        JointDiffusion(num_classes=4, widths=(8, 16), hidden=16, class_conditional=True).eval() for _ in range(2)
    )
    replay, labels = torch.rand(8, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 3] * 2)
    student = train_global(previous, local, replay, labels, [0, 1], DistillConfig(steps=2, batch_size=8))
    moved = (student.unet.class_embedding.weight - previous.unet.class_embedding.weight).abs().sum(dim=1)
    assert (moved[:4] > 0).all()  # every class the replay holds was seen by the denoiser


def test_tiny_balanced_shapes_run_uses_v_prediction_generators(tmp_path):
    from recipes.jdcl.shapes import BalancedConfig, run_balanced

    config = BalancedConfig(
        n_train=16, n_test=8, steps=2, global_steps=2, per_class=2, max_draws=8, sample_steps=2, class_conditional=True
    )
    result = run_balanced(config, out=tmp_path, progress=False)
    assert result["config"]["prediction"] == "v_prediction"  # the default: eps generators draw noise
    methods = result["runs"][0]["methods"]
    assert set(methods) == {"naive", "replay", "jdcl", "joint"}
    assert all(0 <= a <= 1 for m in methods.values() for row in m["matrix"] for a in row)
    assert json.loads((tmp_path / "jdcl_balanced.json").read_text())["runs"][0]["methods"] == methods
