"""The one typed training config: dataclasses loaded from YAML, overridden by dotted `key=value`.

    cfg = load_config("configs/demo.yaml", ["optim.base_lr=0.2", "train.epochs=3"])

This file is the schema: the sections, their defaults, and the range and cross-field checks.
Reading YAML (safe, YAML 1.2 scalars) and checking keys and types is train/typed_yaml.py's job.
Any problem raises ConfigError with a one-line message naming the dotted key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from model import MODEL_NAMES, ModelConfig
from pipeline.config import DataConfig
from train.typed_yaml import ConfigError, build, parse_yaml, set_dotted

AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("none", "default", "max-autotune", "reduce-overhead")


@dataclass
class OptimConfig:
    # lr = base_lr * global_batch / 256 (Goyal et al. 2017 linear scaling). 0.256 per 256 is
    # NVIDIA's RN50 recipe; 0.1 is Goyal's.
    base_lr: float = 0.256  # per 256 images
    momentum: float = 0.9
    nesterov: bool = False
    # 5e-5: with label smoothing and a cosine schedule to zero, between NVIDIA's 3.05e-5
    # (2**-15, their 90-250 epoch recipes) and Goyal's/torchvision's 1e-4 (step schedule, no
    # smoothing); FFCV/timm ResNet-50 recipes land in the same range. Only p.ndim >= 2 decays.
    weight_decay: float = 5e-5
    warmup_epochs: float = 2.0  # linear warmup from lr/warmup_steps to lr, then cosine to 0
    label_smoothing: float = 0.1
    ema_decay: float = 0.0  # per step; 0 = no EMA of weights (0.9998 is typical at batch 1k)
    mixup_alpha: float = 0.0  # Beta(a, a) mixing; 0 = off
    cutmix_alpha: float = 0.0  # 0 = off; with both on, each batch picks one at random


@dataclass
class FinetuneConfig:
    weights: str = ""  # torchvision-format state dict (torch.save); "" = train from scratch
    freeze_stages: int = 0  # 0..5: stem, layer1..layer4 (model.freeze_stages)
    lr_scale: float = 0.1  # lr multiplier when fine-tuning


@dataclass
class TrainConfig:
    epochs: int = 90
    amp: str = "auto"  # auto (bf16 where the device has it natively, else off) | bf16 | fp16 (with GradScaler) | off
    channels_last: bool = True
    # torch.compile mode for the training model: none | default | max-autotune | reduce-overhead
    # (CUDA graphs). The first steps of each image size compile (outside the timed region).
    compile: str = "none"
    eval_every: int = 1  # epochs between exact validations (the last epoch is always evaluated)
    log_every: int = 100  # steps between log lines (the only host syncs of the hot loop)
    deterministic: bool = False  # deterministic kernels, no cudnn.benchmark: bit-exact resume
    seed: int = 0  # model init; data order and augmentation use data.seed
    # Progressive resizing: [[epoch, size_px], ...] sorted by epoch; from each epoch on, train
    # at that size. [] = data.image_size throughout. FFCV-style ramp: [[0,160],[30,176],[60,192]].
    resize: list[list[int]] = field(default_factory=list)
    stop_after_epoch: int | None = None  # stop cleanly (checkpoint) after this epoch; schedule unchanged
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class CheckpointConfig:
    keep_last: int = 3  # end-of-epoch checkpoints kept, besides best.pt
    resume: str = "auto"  # auto (latest valid in run_dir) | none | path to a checkpoint


@dataclass
class DistillConfig:
    """Knowledge distillation (Hinton et al. 2015) from a frozen teacher that sees the same
    augmented batch as the student: loss = alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE."""

    teacher: str = ""  # a firehose checkpoint or a torchvision-format state dict; "" = no distillation
    teacher_model: str = "resnet50"  # the teacher's architecture (a model.name)
    alpha: float = 0.5  # weight of the distillation term
    temperature: float = 4.0  # softens both distributions; the KL term is scaled by T^2


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run_dir: str = "runs/default"
    profile: bool = False  # torch.profiler trace of a few steps after warm-up (train/profile.py)


def validate(cfg: Config) -> None:
    """Range checks beyond types; ConfigError naming the first bad key (ValueError from the data
    section's own checks, which from_dict names a config error)."""
    cfg.data.validate()
    o, t = cfg.optim, cfg.train
    checks = [
        ("optim.base_lr", o.base_lr > 0, "must be > 0"),
        ("optim.momentum", 0 <= o.momentum < 1, "must be in [0, 1)"),
        ("optim.weight_decay", o.weight_decay >= 0, "must be >= 0"),
        ("optim.warmup_epochs", 0 <= o.warmup_epochs <= t.epochs, "must be in [0, train.epochs]"),
        ("optim.label_smoothing", 0 <= o.label_smoothing < 1, "must be in [0, 1)"),
        ("optim.ema_decay", 0 <= o.ema_decay < 1, "must be in [0, 1)"),
        ("optim.mixup_alpha", o.mixup_alpha >= 0, "must be >= 0"),
        ("optim.cutmix_alpha", o.cutmix_alpha >= 0, "must be >= 0"),
        ("train.epochs", t.epochs >= 1, "must be >= 1"),
        ("train.amp", t.amp in AMP_MODES, f"must be one of {AMP_MODES}"),
        ("train.compile", t.compile in COMPILE_MODES, f"must be one of {COMPILE_MODES}"),
        ("train.eval_every", t.eval_every >= 1, "must be >= 1"),
        ("train.log_every", t.log_every >= 1, "must be >= 1"),
        ("train.resize", all(len(p) == 2 and p[0] >= 0 and p[1] >= 32 for p in t.resize)
         and [p[0] for p in t.resize] == sorted({p[0] for p in t.resize}),
         "must be [[epoch, size_px >= 32], ...] with increasing epochs"),
        ("train.stop_after_epoch", t.stop_after_epoch is None or t.stop_after_epoch >= 1, "must be >= 1"),
        ("train.finetune.freeze_stages", 0 <= t.finetune.freeze_stages <= 5, "must be in 0..5"),
        ("train.finetune.lr_scale", t.finetune.lr_scale > 0, "must be > 0"),
        ("checkpoint.keep_last", cfg.checkpoint.keep_last >= 1, "must be >= 1"),
        ("distill.alpha", 0 <= cfg.distill.alpha <= 1, "must be in [0, 1]"),
        ("distill.temperature", cfg.distill.temperature > 0, "must be > 0"),
        ("run_dir", bool(cfg.run_dir), "must not be empty"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"config: '{key}' {why}")
    cross_check(cfg)


def cross_check(cfg: Config) -> None:
    """Fields that must agree with each other; ConfigError naming both keys, before any work."""
    if cfg.distill.teacher and cfg.distill.teacher_model not in MODEL_NAMES:
        raise ConfigError(f"config: 'distill.teacher_model' must be one of {list(MODEL_NAMES)}, "
                          f"got {cfg.distill.teacher_model!r}")
    channels = 4 if cfg.data.pad_channels else 3
    if cfg.model.in_channels != channels:
        raise ConfigError(f"config: 'data.pad_channels' is {str(cfg.data.pad_channels).lower()} ({channels} input "
                          f"channels) but 'model.in_channels' is {cfg.model.in_channels}; set both (true and 4, "
                          "or false and 3)")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """The Config from a YAML file (None = defaults) with `a.b=value` overrides applied in order.

    Override values are parsed as YAML (`optim.base_lr=0.1` is a float, `train.resize=[[0,128]]`
    a list). Raises ConfigError naming the key on any unknown key, wrong type or bad value.
    """
    tree: object = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"config: cannot read {path} ({e.strerror})") from None
        tree = parse_yaml(text, str(path)) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top level")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"config: override {item!r} is not key=value")
        set_dotted(tree, key, parse_yaml(raw, f"override {key}"))
    return from_dict(tree)


def to_dict(cfg: Config) -> dict:
    """The config as plain dicts/lists/scalars (YAML-dumpable, and loadable with weights_only)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    """The config as YAML, sections and keys in schema order (what config.yaml of a run holds)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def from_dict(tree: dict) -> Config:
    """Inverse of to_dict (e.g. the config stored in a checkpoint): the Config from a tree of plain
    values, checked. ConfigError naming the key on any unknown key, wrong type or bad value."""
    try:
        cfg = build(Config, tree)
        validate(cfg)
    except ConfigError:
        raise
    except ValueError as e:  # a section's own checks: ModelConfig.__post_init__, DataConfig.validate
        raise ConfigError(f"config: {e}") from None
    return cfg
