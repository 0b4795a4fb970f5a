"""The joint diffusion classifier: hooks read the down blocks, the classifier trains the encoder,
the Hub folder round-trips bit-identically, bad folders are refused."""

import json

import pytest
import torch

from interventions import Cache, attach
from recipes.joint_diffusion.hub import load_joint, save_joint
from recipes.joint_diffusion.model import FEATURE_SITE, JointDiffusion
from recipes.joint_diffusion.train import TrainConfig, strong_augment, train_joint, weak_augment

torch.set_num_threads(1)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return JointDiffusion(widths=(8, 16), hidden=16, **kw).eval()


def test_features_are_the_pooled_down_block_maps_that_cache_records():
    model = tiny()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    cache = Cache()
    sites = {FEATURE_SITE.format(i): cache for i in range(2)}
    with attach(model.unet, sites):
        model.unet(x, torch.zeros(4, dtype=torch.long))
    expected = torch.cat([cache.get(FEATURE_SITE.format(i)).mean(dim=(2, 3)) for i in range(2)], dim=1)
    assert torch.equal(model.features(x).detach(), expected)
    assert model.features(x).shape == (4, 8 + 16)


def test_cross_entropy_trains_the_encoder_and_skips_the_decoder():
    model = tiny()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.nn.functional.cross_entropy(model.classify(x), torch.tensor([0, 1, 0, 1])).backward()
    assert model.unet.down_blocks[0].resnets[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.unet.up_blocks.parameters())  # stop=True: decoder never ran
    assert all(p.grad is None for p in model.unet.mid_block.parameters())


def test_classify_leaves_no_hook_behind():
    model = tiny()
    x = torch.rand(2, 3, 16, 16)
    before = model.denoise(x, torch.tensor([3, 3]))
    model.classify(x)
    assert torch.equal(model.denoise(x, torch.tensor([3, 3])), before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_hub_folder_round_trips_bit_identically(tmp_path):
    model = tiny()
    model.head[0].weight.data += 0.5  # not the initialisation: the weights really come from the file
    folder = save_joint(model, tmp_path / "m", metrics={"test_accuracy": 0.75}, recipe="jdcl")
    back = load_joint(folder)
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(model.classify(x), back.classify(x))
    card = (folder / "README.md").read_text()
    assert "2411.08224" in card and "0.75" in card
    assert json.loads((folder / "config.json").read_text())["widths"] == [8, 16]


def test_bad_folders_are_refused(tmp_path):
    folder = save_joint(tiny(), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "depth": 3}))
    with pytest.raises(Exception, match="unknown arguments"):
        load_joint(folder)
    (folder / "config.json").write_text(json.dumps({**config, "widths": [8, 32]}))
    with pytest.raises(Exception, match="config"):
        load_joint(folder)
    with pytest.raises(FileNotFoundError, match="no joint model folder"):
        load_joint(tmp_path / "missing")
    with pytest.raises(ValueError, match="multiples of 4"):
        JointDiffusion(widths=(6,))


def test_augmentations_keep_shape_and_are_seeded():
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    a = strong_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, strong_augment(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(weak_augment(x, torch.Generator().manual_seed(2)), x)


def test_training_modes_reduce_their_losses_and_bad_input_is_refused():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 16, 16) * 2 - 1
    y = (x[:, 0].mean(dim=(1, 2)) > x[:, 2].mean(dim=(1, 2))).long()
    model = tiny()
    config = TrainConfig(steps=21, batch_size=8, lr=3e-3)
    history = train_joint(model, x, y, unlabelled=x, mode="joint", config=config)
    assert history[-1]["diffusion"] < history[0]["diffusion"]
    with pytest.raises(ValueError, match="needs unlabelled"):
        train_joint(model, x, y, mode="fixmatch")
    with pytest.raises(ValueError, match="unknown mode"):
        train_joint(model, x, y, mode="mixmatch")


def test_class_conditional_denoiser_guidance_and_hub_folder(tmp_path):
    model = tiny(class_conditional=True)
    x, t = torch.rand(3, 3, 16, 16) * 2 - 1, torch.full((3,), 300)
    none = model.denoise(x, t)
    red, green = (model.denoise(x, t, torch.full((3,), c)) for c in (0, 1))
    assert not torch.allclose(red, green)  # the class reaches the denoiser
    assert torch.equal(none, model.denoise(x, t, torch.full((3,), -1)))  # -1 = "no class"
    labels = torch.tensor([0, 1, 0])
    assert torch.allclose(model.guided_eps(x, t, labels, 0.0), none, atol=1e-5)
    assert torch.allclose(model.guided_eps(x, t, labels, 1.0), model.denoise(x, t, labels), atol=1e-5)
    assert model.classify(x).shape == (3, 2)
    with pytest.raises(ValueError, match="class_conditional=True"):
        tiny().denoise(x, t, labels)
    back = load_joint(save_joint(model, tmp_path / "m"))
    assert back.class_conditional and json.loads((tmp_path / "m" / "config.json").read_text())["class_conditional"]
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_v_prediction_samples_land_in_a_trivial_world_where_epsilon_samples_are_noise(tmp_path):
    """The measured cause of noise samples: an eps-predicting tiny UNet's error is multiplied by
    up to 1/sqrt(abar) = 157 in the sampler's x0; a v-predicting one samples the world it saw."""
    from recipes.jdcl.continual import generate

    world = torch.full((16, 3, 16, 16), -1.0)
    world[:, :, 4:12, 4:12] = 1.0  # one white square on black, the same in every image

    def sample_error(prediction):
        model = tiny(prediction=prediction).train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(50):
            loss = model.denoising_loss(world, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
        samples, _ = generate(model, 16, steps=10, generator=torch.Generator().manual_seed(1))
        assert samples.min() >= -1 and samples.max() <= 1  # the sampler keeps the training range
        return (samples - world).abs().mean().item(), model

    v_error, v_model = sample_error("v_prediction")
    eps_error, _ = sample_error("epsilon")
    assert v_error < 0.35 and eps_error > 0.7, (v_error, eps_error)
    # denoise() still returns eps: x_t = sqrt(a) x0 + sqrt(1 - a) eps is inverted by it
    x0, noise, t = world[:2], torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    v = v_model.target(x0, noise, t)
    a = v_model.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(a.sqrt() * v + (1 - a).sqrt() * v_model.add_noise(x0, noise, t), noise, atol=1e-5)
    back = load_joint(save_joint(v_model, tmp_path / "v"))
    assert back.prediction == "v_prediction"
    with pytest.raises(ValueError, match="prediction must be one of"):
        JointDiffusion(prediction="sample")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_x0_estimate_inverts_the_forward_process_given_the_true_noise(prediction):
    model = tiny(prediction=prediction)
    x0, noise = torch.rand(3, 3, 16, 16) * 2 - 1, torch.randn(3, 3, 16, 16)
    t = torch.tensor([1, 300, 900])
    x_t = model.add_noise(x0, noise, t)
    assert torch.allclose(model.x0_estimate(x_t, t, noise), x0, atol=1e-4)
    with torch.no_grad():  # without eps: the model's own noise prediction, clipped to the data range
        own = model.x0_estimate(x_t, t)
    assert own.abs().max() <= 1 and torch.allclose(own, model.x0_estimate(x_t, t, model.denoise(x_t, t)))


def test_denoised_cross_entropy_trains_the_classifier_where_guidance_reads_it():
    """The term classifies the model's own x0_hat(x_t): detached, only the encoder and head learn
    from it; 'through', the gradient also reaches the decoder that made x0_hat. Training lowers it."""
    from recipes.joint_diffusion.train import _denoised_ce

    y = torch.tensor([0, 1] * 4)
    x = torch.full((8, 3, 16, 16), -1.0)
    x[y == 0, 0, 4:12, 4:12] = 1.0  # class 0: a red square, class 1: a blue one
    x[y == 1, 2, 4:12, 4:12] = 1.0
    for detach in (True, False):
        model = tiny()
        config = TrainConfig(denoised_ce_weight=1.0, denoised_detach=detach)
        _denoised_ce(model, x, y, torch.ones(8), config, torch.Generator().manual_seed(0)).backward()
        decoder = [p.grad for p in model.unet.up_blocks.parameters()]
        assert model.head[0].weight.grad.abs().sum() > 0
        assert all(g is None for g in decoder) if detach else any(g is not None and g.abs().sum() > 0 for g in decoder)

    config = TrainConfig(steps=30, batch_size=8, lr=3e-3, denoised_ce_weight=1.0, denoised_t_max=400)
    history = train_joint(tiny(), x, y, unlabelled=x, mode="joint", config=config)
    first, last = history[0]["denoised_ce"], history[-1]["denoised_ce"]
    assert first > 0.6 and last < 0.4, (first, last)  # measured 0.73 -> 0.19
    with pytest.raises(ValueError, match="denoised_t_max"):
        train_joint(tiny(), x, y, x, "joint", TrainConfig(steps=1, denoised_ce_weight=1.0, denoised_t_max=1000))
