"""Optimizer groups, the lr schedule, EMA, mixup/cutmix and a few real steps."""

import math

import pytest
import torch

from model import ModelConfig, build_model, freeze_stages
from train.amp import Precision
from train.config import OptimConfig
from train.engine import TrainParts, train_step
from train.optim import EMA, build_optimizer, lr_at, mix_batch, peak_lr
from train.profile import Profiler


def test_lr_schedule_values():
    total, warm, peak = 1000, 100, 0.8
    assert lr_at(0, total, warm, peak) == pytest.approx(peak / warm)  # warmup start: trains at step 0
    assert lr_at(49, total, warm, peak) == pytest.approx(peak * 0.5)
    assert lr_at(99, total, warm, peak) == pytest.approx(peak)  # warmup end
    assert lr_at(100, total, warm, peak) == pytest.approx(peak)  # cosine start
    assert lr_at(550, total, warm, peak) == pytest.approx(peak / 2)  # cosine midpoint
    assert lr_at(775, total, warm, peak) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_at(total, total, warm, peak) == 0.0  # zero at the end
    assert 0 < lr_at(total - 1, total, warm, peak) < 1e-5 * peak
    lrs = [lr_at(s, total, warm, peak) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay after warmup
    assert lr_at(0, 10, 0, 1.0) == 1.0  # no warmup


def test_peak_lr_scales_with_global_batch():
    cfg = OptimConfig(base_lr=0.1)
    assert peak_lr(cfg, 256) == pytest.approx(0.1)
    assert peak_lr(cfg, 1024) == pytest.approx(0.4)
    assert peak_lr(cfg, 1024, lr_scale=0.1) == pytest.approx(0.04)


def test_no_weight_decay_on_1d_params():
    model = build_model(ModelConfig(name="resnet50", num_classes=10))
    opt = build_optimizer(model, OptimConfig(weight_decay=5e-5), lr=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-5 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    every = list(model.parameters())
    assert ids == {id(p) for p in every}  # nothing missed, nothing twice
    assert len(ids) == sum(len(g["params"]) for g in opt.param_groups)
    n_1d = sum(1 for p in every if p.ndim < 2)
    assert len(no_decay["params"]) == n_1d == 2 * 53 + 1  # 53 BNs (gamma, beta) + fc.bias


def test_frozen_params_are_left_out():
    model = build_model(ModelConfig(name="resnet18", num_classes=10))
    freeze_stages(model, 2)
    opt = build_optimizer(model, OptimConfig(), lr=0.1)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.conv1.weight) not in ids and id(model.layer1[0].bn1.bias) not in ids
    assert id(model.layer2[0].conv1.weight) in ids and id(model.fc.bias) in ids


@pytest.mark.parametrize("amp", ["bf16", "off"])
def test_train_step_lowers_the_loss_on_a_fixed_batch(amp):
    """engine.train_step itself: lr from the schedule, the step, the EMA; loss falls on one batch."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet18", num_classes=10)).to(memory_format=torch.channels_last)
    optim_cfg = OptimConfig()
    ema = EMA(model, decay=0.5)
    parts = TrainParts(model, build_optimizer(model, optim_cfg, lr=0.05), Precision(amp, torch.device("cpu")),
                      torch.nn.CrossEntropyLoss(label_smoothing=0.1), ema, optim_cfg, total_steps=100,
                      warmup_steps=2, peak_lr=0.05, mix_seed=0)
    off = Profiler(False, "", torch.device("cpu"), 0)
    images = torch.randn(16, 3, 32, 32).to(torch.float16, memory_format=torch.channels_last)
    labels = torch.arange(16) % 10
    losses, lrs = [], []
    for step in range(12):
        loss, lr = train_step(parts, images, labels, step, off)
        losses.append(loss.item())
        lrs.append(lr)
    assert losses[-1] < 0.5 * losses[0], losses
    assert lrs == [lr_at(s, 100, 2, 0.05) for s in range(12)] and parts.optimizer.param_groups[0]["lr"] == lrs[-1]
    assert loss.dtype == torch.float32 and not loss.requires_grad
    assert not torch.equal(ema.module.fc.weight, model.fc.weight)  # the EMA lags the weights it follows


def test_ema_tracks_weights():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update()
    assert torch.allclose(ema.module[0].weight, w0 + 0.1)  # 0.9 * old + 0.1 * new
    assert ema.module[1].num_batches_tracked.item() == 7  # integer buffers are copied
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_mixup_and_cutmix_are_reproducible():
    images = torch.randn(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3])
    off = OptimConfig()
    assert mix_batch(images, labels, off, 0, 5)[2] == 1.0
    mix = OptimConfig(mixup_alpha=0.2)
    x1, partner, lam = mix_batch(images, labels, mix, 0, 5)
    x2, _, lam2 = mix_batch(images, labels, mix, 0, 5)
    assert lam == lam2 and torch.equal(x1, x2) and 0 <= lam <= 1  # (seed, step) decides
    assert torch.equal(partner, labels.flip(0))
    assert torch.allclose(x1, lam * images + (1 - lam) * images.flip(0), atol=1e-6)
    cut = OptimConfig(cutmix_alpha=1.0)
    lams = []
    for step in range(20):
        x, _, lam = mix_batch(images, labels, cut, 0, step)
        pasted = (x != images).any(dim=1)[0].float().mean().item()  # area taken from the partner
        assert pasted == pytest.approx(1 - lam, abs=1e-6)
        lams.append(lam)
    assert len(set(lams)) > 1


@pytest.mark.parametrize("flags, expect", [("fpu avx2 avx512f", "off"), ("fpu avx512f avx512_bf16", "bf16"),
                                           ("fpu amx_bf16 amx_tile", "bf16")])
def test_amp_auto_takes_bf16_only_where_the_cpu_has_it(monkeypatch, tmp_path, flags, expect):
    from pipeline import cpu
    from train import amp

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(info if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr(cpu, "open", fake_open, raising=False)
    assert amp.resolve_amp("auto", torch.device("cpu")) == expect
    assert Precision("auto", torch.device("cpu")).amp == expect
    assert amp.resolve_amp("fp16", torch.device("cpu")) == "fp16"  # explicit modes are kept
