"""The GPU check's plan: every step of each tier, its budget on the GPU machine and its command.

Tier 1 needs no DALI (the GPU machine's own torch, plus webdataset): model-only ResNet-50, the
baseline loader end to end, torchvision parity and the GPU tests that need no DALI. Tier 2 needs
the DALI bundle (tools/gpu_bundle.py): DALI's stages alone, the hardware decoder's share of the
work, `mixed` against CPU decoding, end to end with DALI, start-up at ImageNet scale, the
hw_decoder_load x threads sweep and mid-epoch resume with the mixed decoder.

A visit is 15 minutes in all (machine start, every command, transfers), so tier 1 fits 180 s
and tier 2 360 s, each step under its own timeout. `dry=True` is the same plan at toy size on
the CPU: a test of the steps, not of their speed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TIER_BUDGET_S = {1: 180, 2: 360}
NOT_CHECKED = 3  # a step's exit code for "could not check here" (torchvision missing): a skip, not a failure
DRY_SCALE = 3  # a dry run's toy steps still pay full imports on 2 shared cores


@dataclass(frozen=True)
class Sizes:
    """How big each step's work is: the GPU's sizes, or toy ones for a dry run on the CPU."""

    device: str
    classes: int
    train_per_class: int
    val_per_class: int
    image_args: tuple[str, ...]  # make_synthetic_imagenet's image flags
    per_shard: int
    model: str
    batch: int
    image_px: int
    amp: str
    timing: tuple[str, ...]  # --warmup/--steps/--repeats/--shuffle-buffer of the suite and hw_decoder
    threads: int
    tiny: tuple[str, ...]  # make_tiny_shards' --samples/--shards
    startup: tuple[str, ...]  # benchmarks.startup's sizes
    sweep: tuple[tuple[float, int], ...]  # (hw_decoder_load, threads)


def sizes(dry: bool, cores: int) -> Sizes:
    if dry:
        return Sizes("cpu", 4, 40, 5, ("--min-side", "64", "--max-side", "128"), 40, "resnet18", 8, 32, "off",
                     ("--warmup", "1", "--steps", "2", "--repeats", "1", "--shuffle-buffer", "16"),
                     2, ("--samples", "2000", "--shards", "8"),
                     ("--image-size", "16", "--batch-size", "64", "--epochs", "2"), ((0.3, 1),))
    threads = max(1, cores - 1)
    # 100 x 134 ImageNet-like JPEGs: 52 batches of 256 an epoch, so 2 untimed batches and a window of
    # 50 (the suite's default on a GPU) fit one epoch.
    return Sizes("gpu", 100, 134, 5, ("--realistic",), 500, "resnet50", 256, 224, "bf16",
                 ("--warmup", "2", "--repeats", "3"),
                 threads, ("--samples", "1281167", "--shards", "1024"),  # ImageNet's counts
                 # one rank's share of an 8-GPU node: ImageNet-scale index, epochs of seconds
                 ("--image-size", "224", "--batch-size", "256", "--epochs", "3", "--rank", "0", "--world", "8"),
                 ((0.3, threads), (0.9, threads), (0.65, max(1, threads // 2))))  # suite_dali has 0.65


@dataclass(frozen=True)
class Context:
    """Where a run keeps things: `work` survives between the tiers of one visit (shards, bundle)."""

    python: str
    root: Path
    work: Path
    out: Path  # logs and JSON figures (archived at the end of every step)
    size: Sizes
    dry: bool

    @property
    def shards(self) -> Path:
        return self.work / "shards"

    @property
    def tiny(self) -> Path:
        return self.work / "tiny"

    @property
    def bundle_site(self) -> Path:
        return self.work / "bundle-site"


Command = Callable[[Context], list[str]]


@dataclass(frozen=True)
class Step:
    """One row of the check. `needs`: cuda, dali, torch, data, tiny, cc (what must hold to run it)."""

    name: str
    tier: int
    budget_s: int  # its timeout on the GPU machine
    needs: tuple[str, ...]
    command: Command
    dry_note: str = ""  # why it is skipped in a dry run, if it is
    optional: bool = False  # run only when named with --only


def _py(c: Context, *args: str) -> list[str]:
    return [c.python, *args]


def _suite(c: Context, name: str, *extra: str) -> list[str]:
    s = c.size
    # the sizes' timing flags last: a dry run's toy windows replace a step's own
    return _py(c, "-m", "benchmarks", "--data", str(c.shards), "--device", s.device, "--model", s.model,
               "--batch-size", str(s.batch), "--image-size", str(s.image_px), "--amp", s.amp,
               "--threads", str(s.threads), "--json", str(c.out / f"{name}.json"), *extra, *s.timing)


def _tests(c: Context, selection: str, *files: str) -> list[str]:
    """The `gpu` tests of `files` (a module that imports DALI is named only in tier 2)."""
    return _py(c, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-k", selection,
               *(str(c.root / "tests" / f) for f in files))


def _data(name: str) -> Command:
    """The ImageNet-like shards (made once; a later tier reuses them), its figures in NAME.json."""
    def command(c: Context) -> list[str]:
        s = c.size
        return _py(c, "-m", "benchmarks.gpu_data", "--out", str(c.shards), "--classes", str(s.classes),
                   "--train-per-class", str(s.train_per_class), "--val-per-class", str(s.val_per_class),
                   "--per-shard", str(s.per_shard), "--json", str(c.out / f"{name}.json"), "--", *s.image_args)
    return command


def _tiny(c: Context) -> list[str]:
    return _py(c, "-m", "benchmarks.gpu_data", "--tiny", "--out", str(c.tiny), "--json", str(c.out / "tiny.json"),
               "--", *c.size.tiny)


STEPS: tuple[Step, ...] = (
    # tier 1: no DALI
    Step("preflight", 1, 10, (), lambda c: _py(c, "-m", "benchmarks.preflight", "--json",
                                                   str(c.out / "preflight.json"), *(("--dry-run",) if c.dry else ()))),
    Step("data", 1, 40, ("torch",), _data("data")),
    Step("suite_baseline", 1, 40, ("cuda", "data"),  # model only, and the baseline end to end
         lambda c: _suite(c, "suite_baseline", "--loaders", "baseline", "--stages", "")),
    *(Step(f"model_compile_{mode}", 1, 55 if mode == "default" else 150, ("cuda", "cc"),
           # 3 x 10 batches: the time goes to the compile
           lambda c, mode=mode: _suite(c, f"model_compile_{mode}", "--loaders", "", "--compile", mode, "--steps", "10",
                                       "--num-classes", str(c.size.classes)),  # no shards needed
           dry_note="dry run: torch.compile of a ResNet takes minutes on a CPU", optional=mode != "default")
      for mode in ("default", "reduce-overhead", "max-autotune")),
    Step("torchvision", 1, 10, ("torch",),
         lambda c: _py(c, "-m", "benchmarks.torchvision_check", "--device", c.size.device)),
    Step("tests_gpu", 1, 25, ("torch",),
         lambda c: _tests(c, "rng or (baseline and (fp16 or channels))", "test_train_gpu.py")),
    Step("tests_gpu_compile", 1, 240, ("cuda", "cc"),
         lambda c: _tests(c, "baseline and (compile or graphs)", "test_train_gpu.py"), optional=True),
    # tier 2: DALI
    Step("bundle", 2, 25, (), lambda c: _py(c, str(c.root / "tools" / "gpu_bundle.py"), "install", "--target",
                                            str(c.bundle_site))),  # the parts `receive` stored
    Step("preflight_dali", 2, 15, (), lambda c: _py(c, "-m", "benchmarks.preflight", "--dali", "--json",
                                                    str(c.out / "preflight_dali.json"),
                                                    *(("--dry-run",) if c.dry else ()))),
    Step("data_dali", 2, 20, ("torch",), _data("data_dali")),  # the tier-1 shards when the machine kept them
    Step("suite_dali", 2, 70, ("cuda", "dali", "data"), lambda c: _suite(c, "suite_dali", "--loaders", "dali")),
    Step("hw_decoder", 2, 35, ("cuda", "dali", "data"),
         lambda c: _py(c, "-m", "benchmarks.hw_decoder", "--data", str(c.shards), "--device", c.size.device,
                       "--batch-size", str(c.size.batch), "--threads", str(c.size.threads),
                       *c.size.timing, "--json", str(c.out / "hw_decoder.json"))),
    Step("tiny", 2, 20, ("torch",), _tiny),
    Step("startup", 2, 40, ("cuda", "dali", "tiny"),
         lambda c: _py(c, "-m", "benchmarks.startup", "--data", str(c.tiny), "--device", c.size.device,
                       "--threads", str(c.size.threads), *c.size.startup, "--json", str(c.out / "startup.json"))),
    Step("tests_gpu_dali", 2, 50, ("cuda", "dali"),
         lambda c: _tests(c, "dali and not compile and not graphs", "test_train_gpu.py", "test_dali_gpu.py",
                          "test_pipeline.py")),
)


def sweep_step(load: float, threads: int) -> Step:
    """End-to-end training steps with DALI at one (hw_decoder_load, threads) point."""
    name = f"sweep_hw{load:g}_t{threads}"
    return Step(name, 2, 25, ("cuda", "dali", "data"),
                lambda c: _suite(c, name, "--loaders", "dali", "--stages", "", "--hw-decoder-load", f"{load:g}",
                                 "--threads", str(threads), "--steps", "20"))


SETUP = {1: ("preflight", "data"), 2: ("bundle", "preflight_dali", "data_dali", "tiny")}


def plan(tier: int, dry: bool, cores: int | None = None, only: set[str] | None = None) -> list[Step]:
    """The steps of `tier`, in order. With `only`: the named steps of that tier, plus the set-up
    steps they need. Raises ValueError naming a step that is not in the tier."""
    steps = [s for s in STEPS if s.tier == tier]
    if tier == 2:
        steps += [sweep_step(load, t) for load, t in sizes(dry, cores or os.cpu_count() or 1).sweep]
    if not only:
        return [s for s in steps if not s.optional]
    unknown = sorted(only - {s.name for s in steps})
    if unknown:
        raise ValueError(f"not a tier-{tier} step: {', '.join(unknown)} "
                         f"(tier {tier}: {', '.join(s.name for s in steps)})")
    needs = {n for s in steps if s.name in only for n in s.needs}
    setup = {"preflight", "preflight_dali", "bundle"} | ({"data", "data_dali"} if "data" in needs else set()) | (
        {"tiny"} if "tiny" in needs else set())
    return [s for s in steps if s.name in only or (s.name in setup and s.name in SETUP[tier])]
