"""Model tests: torchvision-identical state dicts, init, forward/backward, FLOPs, fine-tuning."""

import pytest
import torch
from conftest import assert_state_layout, meta_model
from torch import nn

from model import (
    ModelConfig,
    build_model,
    flops_per_image,
    freeze_stages,
    load_torchvision_state_dict,
)

# A representative slice of torchvision.models.resnet50().state_dict(), written out by hand
# so the test needs no torchvision: names and shapes must match for strict loading.
RESNET50_KEYS = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.bias": (64,),
    "bn1.running_mean": (64,),
    "bn1.running_var": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.bn3.running_var": (256,),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.0.downsample.1.weight": (256,),
    "layer1.0.downsample.1.num_batches_tracked": (),
    "layer1.2.conv1.weight": (64, 256, 1, 1),
    "layer2.0.conv1.weight": (128, 256, 1, 1),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer3.5.conv3.weight": (1024, 256, 1, 1),
    "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "layer4.2.bn3.weight": (2048,),
    "fc.weight": (1000, 2048),
    "fc.bias": (1000,),
}
# torchvision's published num_params for each architecture.
PARAM_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}



def randomize_bn_stats(model: nn.Module, seed: int) -> None:
    """Make BN statistics and affine params non-trivial so equality checks mean something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def test_resnet50_state_dict_matches_torchvision():
    assert_state_layout(meta_model(name="resnet50").state_dict(), 320, RESNET50_KEYS)


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_param_counts_match_torchvision(name):
    model = meta_model(name=name)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]


def test_resnet18_keys_use_basic_blocks():
    state = meta_model(name="resnet18").state_dict()
    assert len(state) == 122
    assert tuple(state["layer1.1.conv2.weight"].shape) == (64, 64, 3, 3)
    assert tuple(state["layer2.0.downsample.0.weight"].shape) == (128, 64, 1, 1)
    assert "layer1.0.downsample.0.weight" not in state  # no projection: shape is unchanged
    assert "layer1.0.conv3.weight" not in state
    assert tuple(state["fc.weight"].shape) == (1000, 512)


def test_stride_is_on_the_3x3_conv_v1_5():
    model = meta_model(name="resnet50")
    for stage in (model.layer2, model.layer3, model.layer4):
        assert stage[0].conv1.stride == (1, 1)
        assert stage[0].conv2.stride == (2, 2)
        assert stage[0].downsample[0].stride == (2, 2)
    assert model.layer1[0].conv2.stride == (1, 1)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_forward_backward_channels_last(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, num_classes=10)).to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last).requires_grad_()
    logits = model(images)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


def test_bf16_autocast_forward_on_cpu():
    model = build_model(ModelConfig(name="resnet18", num_classes=7)).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.dtype == torch.bfloat16
    assert logits.shape == (2, 7) and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("name,last_bn", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual(name, last_bn):
    blocks = [b for layer in ("layer1", "layer2", "layer3", "layer4")
              for b in getattr(build_model(ModelConfig(name=name)), layer)]
    assert all(torch.all(getattr(b, last_bn).weight == 0) for b in blocks)
    assert all(torch.all(b.bn1.weight == 1) for b in blocks)
    plain = build_model(ModelConfig(name=name, zero_init_residual=False))
    assert torch.all(getattr(plain.layer1[0], last_bn).weight == 1)


def test_kaiming_fan_out_init_scale():
    torch.manual_seed(0)
    conv = build_model(ModelConfig(name="resnet50")).layer1[0].conv3  # 64 -> 256, 1x1
    expected_std = (2.0 / 256) ** 0.5  # fan_out = 256 * 1 * 1; fan_in would give 64
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)


def test_flops_resnet50_224px():
    cost = flops_per_image(meta_model(name="resnet50"), image_size_px=224)
    assert cost.macs == pytest.approx(4.1e9, rel=0.02)
    assert cost.flops == 2 * cost.macs
    # Cost scales with pixels: at 112 px the convs see a quarter of the positions.
    assert flops_per_image(meta_model(name="resnet50"), 112).macs < cost.macs / 3.5


def test_flops_counts_conv_and_linear_exactly():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 5))
    # conv: 8*4*4 outputs x (3*3*3) MACs each; linear: 128 x 5.
    assert flops_per_image(model, image_size_px=8).macs == 8 * 4 * 4 * 27 + 128 * 5
    assert model[0].weight.device.type == "cpu"  # the caller's model is untouched


def test_four_channel_stem_loads_rgb_weights_and_matches():
    torch.manual_seed(0)
    rgb = build_model(ModelConfig(name="resnet18", num_classes=10)).eval()
    randomize_bn_stats(rgb, seed=1)
    rgba = build_model(ModelConfig(name="resnet18", num_classes=10, in_channels=4)).eval()
    assert tuple(rgba.conv1.weight.shape) == (64, 4, 7, 7)
    assert torch.all(rgba.conv1.weight[:, 3] == 0)  # fresh model: the pad channel is inert
    assert load_torchvision_state_dict(rgba, rgb.state_dict()) == []
    assert torch.equal(rgba.conv1.weight[:, :3], rgb.conv1.weight)
    assert torch.all(rgba.conv1.weight[:, 3] == 0)
    images = torch.randn(2, 3, 64, 64)
    padded = torch.cat([images, torch.zeros(2, 1, 64, 64)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(rgba(padded), rgb(images))


def test_head_replacement_loads_all_but_fc():
    source = build_model(ModelConfig(name="resnet18", num_classes=1000))
    randomize_bn_stats(source, seed=2)
    target = build_model(ModelConfig(name="resnet18", num_classes=10))
    fc_before = target.fc.weight.clone()
    assert load_torchvision_state_dict(target, source.state_dict()) == ["fc.bias", "fc.weight"]
    loaded = target.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert torch.equal(target.fc.weight, fc_before)


def test_load_rejects_a_different_depth():
    with pytest.raises(KeyError, match="missing"):
        load_torchvision_state_dict(build_model(ModelConfig(name="resnet34")),
                                    build_model(ModelConfig(name="resnet18")).state_dict())


STAGE_PREFIXES = ["conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4."]


@pytest.mark.parametrize("num_frozen", range(6))
def test_freeze_stages(num_frozen):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet18", num_classes=10))
    freeze_stages(model, num_frozen)
    # Stage 0 is the stem (two prefixes), stage i >= 1 is layer{i}.
    frozen_prefixes = STAGE_PREFIXES[: num_frozen + 1] if num_frozen else []
    expected = {n for n, _ in model.named_parameters() if n.startswith(tuple(frozen_prefixes))}
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == expected
    assert model.fc.weight.requires_grad

    model.train()
    frozen_bns = {n for n, m in model.named_modules()
                  if isinstance(m, nn.BatchNorm2d) and (n + ".").startswith(tuple(frozen_prefixes))}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.training == (name not in frozen_bns), name
    stats_before = {n: model.get_submodule(n).running_mean.clone() for n in frozen_bns}
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    for name in frozen_bns:  # eval-mode BN did not update its statistics
        assert torch.equal(model.get_submodule(name).running_mean, stats_before[name]), name
    assert all(p.grad is None for n, p in model.named_parameters() if n in expected)


def test_freeze_stages_can_unfreeze_and_rejects_bad_count():
    model = build_model(ModelConfig(name="resnet18"))
    freeze_stages(model, 5)
    freeze_stages(model, 0)
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    assert model.bn1.training
    with pytest.raises(ValueError, match="6"):
        freeze_stages(model, 6)


def test_unknown_model_name_is_named_in_the_error():
    with pytest.raises(ValueError, match="resnet51") as err:
        ModelConfig(name="resnet51")
    assert "resnet50" in str(err.value)
    with pytest.raises(ValueError, match="in_channels"):
        ModelConfig(in_channels=5)
