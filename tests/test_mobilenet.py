"""MobileNetV3 student: torchvision-identical state dicts and sizes, channels-last and bf16,
FLOPs with depthwise convs, fine-tuning helpers."""

import pytest
import torch
from conftest import assert_state_layout, meta_model
from torch import nn

from model import ModelConfig, build_model, flops_per_image, freeze_stages, load_torchvision_state_dict

# torchvision's published num_params (the spec).
PARAM_COUNTS = {"mobilenet_v3_large": 5_483_032, "mobilenet_v3_small": 2_542_856}
# A slice of torchvision.models.mobilenet_v3_large().state_dict(), written out by hand.
LARGE_KEYS = {
    "features.0.0.weight": (16, 3, 3, 3),
    "features.0.1.running_var": (16,),
    "features.1.block.0.0.weight": (16, 1, 3, 3),  # block 1: no expansion, depthwise first
    "features.1.block.1.0.weight": (16, 16, 1, 1),
    "features.2.block.0.0.weight": (64, 16, 1, 1),
    "features.4.block.1.0.weight": (72, 1, 5, 5),
    "features.4.block.2.fc1.weight": (24, 72, 1, 1),  # SE squeeze = make_divisible(72 // 4)
    "features.4.block.2.fc1.bias": (24,),
    "features.4.block.2.fc2.weight": (72, 24, 1, 1),
    "features.4.block.3.1.num_batches_tracked": (),
    "features.16.0.weight": (960, 160, 1, 1),
    "classifier.0.weight": (1280, 960),
    "classifier.3.weight": (1000, 1280),
    "classifier.3.bias": (1000,),
}


def torchvision_models():
    """torchvision.models, or a visible skip where torchvision is missing or does not import
    beside this torch (e.g. "operator torchvision::nms does not exist" on a mismatched build)."""
    try:
        import torchvision.models
    except Exception as e:  # noqa: BLE001 - a broken install raises RuntimeError, not ImportError
        pytest.skip(f"torchvision does not import here: {type(e).__name__}: {str(e)[:100]}")
    return torchvision.models



def randomized(name: str, seed: int, **cfg) -> nn.Module:
    """A model with non-trivial weights and BN statistics, so equality checks mean something."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name=name, **cfg))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_param_counts_match_torchvision(name):
    assert sum(p.numel() for p in meta_model(name=name).parameters()) == PARAM_COUNTS[name]


def test_large_state_dict_keys_and_shapes():
    assert_state_layout(meta_model(name="mobilenet_v3_large").state_dict(), 312, LARGE_KEYS)


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_torchvision_parity(name):
    models = torchvision_models()
    theirs = getattr(models, name)().eval()
    ours = build_model(ModelConfig(name=name)).eval()
    ours.load_state_dict(theirs.state_dict())  # strict: same keys and shapes
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_a_torchvision_format_state_dict_loads_and_gives_the_same_logits():
    source = randomized("mobilenet_v3_small", seed=1)
    state = {k: v.clone() for k, v in source.state_dict().items()}  # what torch.save would hold
    target = build_model(ModelConfig(name="mobilenet_v3_small")).eval()
    assert load_torchvision_state_dict(target, state) == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_new_head_and_four_channel_stem():
    source = randomized("mobilenet_v3_small", seed=2)
    target = build_model(ModelConfig(name="mobilenet_v3_small", num_classes=10, in_channels=4)).eval()
    assert load_torchvision_state_dict(target, source.state_dict()) == ["classifier.3.bias", "classifier.3.weight"]
    stem = target.features[0][0].weight
    assert stem.shape == (16, 4, 3, 3) and torch.all(stem[:, 3] == 0)
    assert torch.equal(stem[:, :3], source.features[0][0].weight)
    # Same features: the padded zero channel contributes nothing.
    x = torch.randn(2, 3, 64, 64)
    padded = torch.cat([x, torch.zeros(2, 1, 64, 64)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(target.features(padded), source.features(x))


def test_load_rejects_the_other_size():
    with pytest.raises((KeyError, RuntimeError)):
        load_torchvision_state_dict(build_model(ModelConfig(name="mobilenet_v3_large")),
                                    build_model(ModelConfig(name="mobilenet_v3_small")).state_dict())


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_channels_last_forward_backward_and_bf16(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, num_classes=10)).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last).requires_grad_()
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert torch.isfinite(x.grad).all() and model.features[0][0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x)
    assert bf16.dtype == torch.bfloat16
    assert (bf16.float() - fp32).abs().max() < 0.05 * fp32.abs().max() + 1e-3


def test_flops_count_depthwise_convs_by_their_groups():
    model = meta_model(name="mobilenet_v3_large")
    size = 64
    cost = flops_per_image(model, size)
    # Expected from the modules' own shapes: each conv's outputs x (in/groups) x k x k.
    expected, side = 0, size
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if m.stride[0] == 2:
                side = (side + 1) // 2
            out_side = 1 if m.bias is not None else side  # only the SE gates' convs have a bias: 1 x 1 input
            expected += m.out_channels * out_side**2 * (m.in_channels // m.groups) * m.kernel_size[0] ** 2
        elif isinstance(m, nn.Linear):
            expected += m.in_features * m.out_features
    assert cost.macs == expected
    assert flops_per_image(meta_model(name="mobilenet_v3_small"), size).macs < cost.macs / 3


@pytest.mark.parametrize("num_frozen", [0, 2, 5])
def test_freeze_stages(num_frozen):
    model = build_model(ModelConfig(name="mobilenet_v3_large", num_classes=10))
    stages = model.stages()
    assert len(stages) == 5 and sum(len(s) for s in stages) == len(model.features)
    freeze_stages(model, num_frozen)
    frozen = {id(p) for stage in stages[:num_frozen] for m in stage for p in m.parameters()}
    assert {id(p) for p in model.parameters() if not p.requires_grad} == frozen
    assert all(p.requires_grad for p in model.classifier.parameters())
    model.train()
    frozen_bns = [m for stage in stages[:num_frozen] for mod in stage for m in mod.modules()
                  if isinstance(m, nn.BatchNorm2d)]
    assert all(not m.training for m in frozen_bns)
    before = [m.running_mean.clone() for m in frozen_bns]
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(torch.equal(m.running_mean, b) for m, b in zip(frozen_bns, before))


def test_widths_are_for_resnets_only():
    with pytest.raises(ValueError, match="model.widths"):
        ModelConfig(name="mobilenet_v3_small", widths=[8, 8])


def test_bn_momentum_overrides_the_architectures_own():
    def momenta(cfg):
        return {m.momentum for m in build_model(cfg).modules() if isinstance(m, nn.BatchNorm2d)}

    assert momenta(ModelConfig(name="mobilenet_v3_small")) == {0.01}  # torchvision's
    assert momenta(ModelConfig(name="mobilenet_v3_small", bn_momentum=0.1)) == {0.1}
    assert momenta(ModelConfig(name="resnet18")) == {0.1}
