"""The one typed training config: dataclasses loaded from YAML, overridden by dotted `key=value`.

    cfg = load_config("configs/demo.yaml", ["optim.base_lr=0.2", "train.epochs=3"])

YAML is read with a SafeLoader subclass (no Python tags, so `!!python/object` is refused) that
follows YAML 1.2 for scalars: only true/false are booleans (`amp: off` stays the string "off"),
`010` is the integer 10 (not octal 8), `1:30` is a string (not 90)
and `5e-5` is a float (PyYAML's YAML 1.1 rules read it as a string). Every key is checked
against the dataclass fields and every value against the field's type; a problem raises
ConfigError with a one-line message naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from model import ModelConfig
from pipeline.config import DataConfig

AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("none", "default", "max-autotune", "reduce-overhead")


class ConfigError(ValueError):
    """A bad config: unknown key, wrong type or bad value. The message names the dotted key."""


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


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 (core schema) booleans, integers and floats."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """YAML 1.2 integers: decimal (`010` is 10), `0o17` octal, `0x1f` hex; no `1:30` or `1_000`."""
        text = self.construct_scalar(node)
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text, 10)


_YAML11 = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float", "tag:yaml.org,2002:int")
_Loader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] not in _YAML11] for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, where: str) -> object:
    """YAML text -> plain Python data; ConfigError (naming `where`) on a syntax error or a tag."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())
        raise ConfigError(f"config: {where}: not safe YAML ({msg})") from None


def _check(value: object, tp: object, key: str) -> object:
    """`value` converted to type `tp` (int -> float only), or ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _check(value, inner[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config: '{key}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config: '{key}' must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not tp:  # bool is not an int here, and an int is not a str
        raise ConfigError(f"config: '{key}' must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, values: dict, prefix: str = "") -> object:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            raise ConfigError(f"config: unknown key '{prefix}{k}'")
    kwargs = {k: _check(v, hints[k], prefix + k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:  # ModelConfig checks its values in __post_init__
        raise ConfigError(f"config: {e}") from None


def _set_dotted(tree: dict, dotted: str, value: object) -> None:
    node, parts = tree, dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config: unknown key '{dotted}' ('{part}' is not a section)")
        node = child
    node[parts[-1]] = value


def validate(cfg: Config) -> None:
    """Range checks beyond types; ConfigError naming the first bad key."""
    try:
        cfg.data.validate()
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
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
    if cfg.distill.teacher:
        try:
            ModelConfig(name=cfg.distill.teacher_model, num_classes=cfg.model.num_classes)
        except ValueError as e:
            raise ConfigError(f"config: 'distill.teacher_model': {e}") from None
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
        _set_dotted(tree, key, parse_yaml(raw, f"override {key}"))
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    """The config as plain dicts/lists/scalars (YAML-dumpable, and loadable with weights_only)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def from_dict(tree: dict) -> Config:
    """Inverse of to_dict (e.g. the config stored in a checkpoint)."""
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg
