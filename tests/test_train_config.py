"""The training config: typed YAML + dotted overrides, and errors that name the key."""

from pathlib import Path

import pytest
from conftest import ROOT, call_main, run_python

from train import trainer
from train.config import Config, ConfigError, from_dict, load_config, to_dict


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides_are_typed(tmp_path):
    p = write(tmp_path, "optim:\n  weight_decay: 5e-5\n  base_lr: 1\ntrain:\n  amp: off\n  epochs: 3\n")
    cfg = load_config(p, ["optim.base_lr=0.2", "train.resize=[[0, 96], [2, 128]]", "data.loader=synthetic",
                          "train.stop_after_epoch=2", "train.finetune.freeze_stages=2"])
    # YAML 1.2 scalars: 5e-5 is a float (not the string PyYAML 1.1 gives), `off` is a string.
    assert cfg.optim.weight_decay == 5e-5 and isinstance(cfg.optim.weight_decay, float)
    assert cfg.train.amp == "off"
    assert cfg.optim.base_lr == 0.2 and cfg.train.epochs == 3
    assert cfg.train.resize == [[0, 96], [2, 128]]
    assert cfg.train.stop_after_epoch == 2 and cfg.train.finetune.freeze_stages == 2
    assert from_dict(to_dict(cfg)) == cfg
    assert isinstance(load_config(None, ["data.loader=synthetic"]), Config)


@pytest.mark.parametrize("text, overrides, key", [
    ("optim:\n  lrr: 0.1\n", [], "optim.lrr"),
    ("", ["optim.lrr=0.1"], "optim.lrr"),
    ("", ["nosuch=1"], "nosuch"),
    ("", ["train.finetune.weight=x"], "train.finetune.weight"),
    ("train:\n  epochs: '3'\n", [], "train.epochs"),  # a str is not an int
    ("", ["train.epochs=3.5"], "train.epochs"),
    ("", ["train.channels_last=1"], "train.channels_last"),  # an int is not a bool
    ("", ["optim.base_lr=fast"], "optim.base_lr"),
    ("", ["train.resize=[[0, big]]"], "train.resize[0][1]"),
    ("", ["optim=3"], "optim"),
    ("", ["train.amp=fp8"], "train.amp"),  # bad values, right types
    ("", ["optim.base_lr=-1"], "optim.base_lr"),
    ("", ["data.batch_size=0"], "data.batch_size"),
    ("", ["model.name=resnet9"], "model.name"),
    ("", ["train.resize=[[5, 128], [0, 96]]"], "train.resize"),
    ("", ["train.compile=true"], "train.compile"),  # a mode name, not a bool
    ("", ["train.compile=fast"], "train.compile"),
    ("", ["train.epochs=1:30"], "train.epochs"),  # YAML 1.1 sexagesimal (90) is a string under 1.2
    ("", ["train.epochs=1_000"], "train.epochs"),
    ("", ["optim.warmup_epochs=100", "train.epochs=10"], "optim.warmup_epochs"),
])
def test_errors_name_the_key(tmp_path, text, overrides, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")) as e:
        load_config(write(tmp_path, text), ["data.loader=synthetic", *overrides])
    assert "\n" not in str(e.value)


def test_integers_follow_yaml_1_2(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  epochs: 010\n  log_every: 0x10\n  eval_every: 0o7\n"),
                      ["data.loader=synthetic"])
    assert (cfg.train.epochs, cfg.train.log_every, cfg.train.eval_every) == (10, 16, 7)  # 010 is not octal 8
    assert load_config(None, ["data.loader=synthetic", "run_dir=1:30"]).run_dir == "1:30"


@pytest.mark.parametrize("overrides", [["data.pad_channels=true"], ["model.in_channels=4"],
                                       ["data.loader=synthetic", "data.pad_channels=true"]])
def test_pad_channels_must_match_the_stem(overrides):
    with pytest.raises(ConfigError, match="'data.pad_channels' is .* but 'model.in_channels' is") as e:
        load_config(None, ["data.path=x", *overrides])
    assert "\n" not in str(e.value)
    cfg = load_config(None, ["data.path=x", "data.pad_channels=true", "model.in_channels=4"])
    assert cfg.model.in_channels == 4


def test_progressive_resizing_steps():
    from train.trainer import image_size_at

    ramp = [[0, 160], [8, 176], [20, 192]]
    assert [image_size_at(e, ramp, 224) for e in (0, 7, 8, 19, 20, 40)] == [160, 160, 176, 176, 192, 192]
    assert image_size_at(3, [], 224) == 224 and image_size_at(0, [[2, 128]], 96) == 96


def test_python_tags_are_refused(tmp_path):
    marker = tmp_path / "ran"
    p = write(tmp_path, f"run_dir: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not safe YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not safe YAML"):
        load_config(None, ["run_dir=!!python/object:train.config.Config {}"])
    assert not marker.exists()


@pytest.mark.parametrize("args, key", [
    (["optim.lrr=0.1"], "unknown key 'optim.lrr'"),
    (["train.epochs=many"], "'train.epochs' must be int"),
    (["train.amp=fp8"], "'train.amp'"),
    (["--config", "c.yaml"], "not safe YAML"),
    (["data.pad_channels=true"], "'model.in_channels' is 3"),
    (["--epochs", "3"], "unrecognized arguments: --epochs"),  # a flag the command does not have
])
def test_cli_exits_2_before_any_work(tmp_path, monkeypatch, args, key):
    (tmp_path / "c.yaml").write_text("train: !!python/object/new:dict {}\n")
    monkeypatch.chdir(tmp_path)
    r = call_main(trainer.main, [*args, "run_dir=out", "data.loader=synthetic"])
    assert r.returncode == 2, r.stderr
    assert key in r.stderr.strip().splitlines()[-1], r.stderr
    if not args[0].startswith("--epochs"):  # argparse prints its usage line first
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stdout == "" and not (tmp_path / "out").exists()


def test_the_command_exits_2_with_the_same_line(tmp_path):
    """`python -m train` end to end: the exit code and the one line of its main()."""
    args = ["optim.lrr=0.1", "run_dir=out", "data.loader=synthetic"]
    r = run_python("-m", "train", *args, cwd=tmp_path, timeout=120)
    assert (r.returncode, r.stderr) == (2, call_main(trainer.main, args).stderr), r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(recipe):
    cfg = load_config(recipe)
    assert cfg.train.amp == ("auto" if "demo" in recipe.name else "bf16")  # GPU recipes: bf16
    assert cfg.train.channels_last and cfg.data.loader == "dali"
    if recipe.name.startswith("distill"):  # a MobileNetV3 student taught by a ResNet-50
        assert cfg.model.name.startswith("mobilenet_v3") and cfg.distill.teacher_model == "resnet50"
        assert cfg.distill.teacher
    else:
        assert cfg.model.name == "resnet50" and not cfg.distill.teacher
