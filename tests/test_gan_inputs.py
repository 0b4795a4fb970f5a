"""Bad input to the calorimeter GAN recipes is refused early, says what was wrong, and changes nothing."""

from __future__ import annotations

import json

import pytest
import torch

from recipes.expertsim import ExpertSimTrainer
from recipes.gan import evaluation as ev
from recipes.gan.data import prepare
from recipes.gan.models import Generator, encode_conditions
from recipes.gan.trainer import GanConfig, GanTrainer
from recipes.worlds.calorimeter import generate_dataset

TINY = dict(width=2, d_width=2, aux_width=2, feature_dim=8, batch_size=4, epochs=1)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train_set():
    return generate_dataset(6, 2, torch.Generator().manual_seed(0))


def weights(trainer: GanTrainer) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.clone() for n, m in trainer.modules().items() for k, v in m.state_dict().items()}


def test_conditions_of_the_wrong_shape_name_the_expected_one(train_set):
    with pytest.raises(ValueError, match=r"shape \(batch, 9\).*got \(4, 8\)"):
        encode_conditions(torch.ones(4, 8))
    with pytest.raises(ValueError, match=r"got \(9,\) \(one event: conditions\[None\]\)"):
        Generator(width=2).sample(train_set["conditions"][0])


def test_sdi_without_a_spread_is_refused():
    single = prepare(generate_dataset(6, 1, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="repeats >= 2 or set sdi=False"):
        GanTrainer(GanConfig(**TINY), single)
    assert GanTrainer(GanConfig(**TINY, sdi=False), single).step == 0


def test_metrics_need_repeats(train_set):
    images = train_set["images"].float()
    with pytest.raises(ValueError, match="needs >= 2 consecutive events per condition.*repeats=1"):
        ev.evaluate_images(train_set, images, repeats=1)
    with pytest.raises(ValueError, match=r"generated images \(11, 56, 30\) do not pair"):
        ev.evaluate_images(train_set, images[:11], repeats=2)


def test_checkpoint_of_another_config_or_trainer_changes_nothing(train_set, tmp_path):
    data = prepare(train_set)
    saved = GanTrainer(GanConfig(**TINY), data)
    saved.fit(progress=False, checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint.safetensors"

    other = GanTrainer(GanConfig(**TINY, l_div=0.5, seed=3), data)
    before = weights(other)
    with pytest.raises(ValueError, match=r"another config \(l_div: 0.1 there, 0.5 here\)"):
        other.load_checkpoint(path)
    wider = GanTrainer(GanConfig(**{**TINY, "width": 3}), data)
    with pytest.raises(ValueError, match="width: 2 there, 3 here"):
        wider.load_checkpoint(path)
    mixture = ExpertSimTrainer(GanConfig(**TINY, n_experts=2), data)
    with pytest.raises(ValueError, match="is a checkpoint of GanTrainer, not of ExpertSimTrainer"):
        mixture.load_checkpoint(path)
    after = weights(other)
    assert all(torch.equal(before[k], after[k]) for k in before) and other.step == 0


def test_cli_refuses_before_training(capsys):
    from recipes.sdi_gan import main

    with pytest.raises(SystemExit) as exit_:
        main(["--push", "me/gan", "--epochs", "1"])
    assert exit_.value.code == 2 and "--push needs --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--repeats", "1"])
    assert "--repeats >= 2 (or --no-sdi)" in capsys.readouterr().err


def test_ablations_refuse_to_mix_setups(tmp_path, capsys):
    from recipes.gan.ablations import main

    path = tmp_path / "calorimeter_gan_ablation.json"
    setup = {"data_seed": 0, "train": "1500 conditions x 4 repeats", "epochs": 20, "threads": 1}
    path.write_text(json.dumps({"setup": setup, "runs": []}))
    with pytest.raises(SystemExit):
        main(["--epochs", "40", "--out", str(tmp_path), "--variants", "sdi_gan", "--seeds", "0"])
    assert "epochs: 20 there, 40 now" in capsys.readouterr().err
    assert json.loads(path.read_text()) == {"setup": setup, "runs": []}


def test_missing_generator_folder_is_not_sent_to_the_hub(tmp_path):
    from recipes.gan.hub import load_generator

    with pytest.raises(FileNotFoundError, match="no generator folder at"):
        load_generator(tmp_path / "runs" / "sdi_gan" / "generatr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_generator(tmp_path / "empty")
