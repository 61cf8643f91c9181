"""deploy.export and deploy.prune on a real (tiny) trained checkpoint: which weights are exported,
pruned files that rebuild from data and fine-tune with the normal trainer, and bad input.
ResNet-18 at 32 px: one epoch on the synthetic loader, trained by the trainer's main() in this
process (the commands' main()s run here too); the fine-tuning run: `python -m train` over the
`shards` fixture (203 train / 50 val images)."""

import sys

import pytest
import torch
from conftest import SYNTH, TINY, Evil, call_main, ok, train

from deploy import export, prune
from model import ModelConfig, build_model, flops_per_image, stored_model_config
from train import checkpoint as ckpt
from train import trainer
from train.config import from_dict

RUN = [*TINY, "data.num_threads=2", "data.batch_size=16", "train.epochs=1", "train.amp=off", "train.log_every=5"]


def net_from(state: dict, weights: str) -> torch.nn.Module:
    net = build_model(from_dict(state["config"]).model)
    net.load_state_dict(state[weights])
    return net.eval()


def onnx_logits(path, x: torch.Tensor):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x.numpy()})[0]


@pytest.fixture(scope="module")
def best(tmp_path_factory):
    """best.pt of a one-epoch run with EMA (so "model" and "ema" weights differ)."""
    run_dir = tmp_path_factory.mktemp("deploy") / "run"
    ok(call_main(trainer.main, [*SYNTH, "train.epochs=1", "optim.ema_decay=0.9", "train.amp=off",
                                f"run_dir={run_dir}"], threads=2))
    return run_dir / "best.pt"


@pytest.fixture(scope="module")
def pruned(best, tmp_path_factory):
    """(the pruned file, the prune command's stdout) at half the FLOPs."""
    pytest.importorskip("torch_pruning")
    out = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    r = call_main(prune.main, [best, "--flops-ratio", 0.5, "--out", out])
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r.stdout


def exports(source, out, capsys, *extra: str) -> str:
    """deploy.export in-process (the CLI's main): exit 0; returns its stdout."""
    assert export.main([str(source), str(out), *extra]) == 0
    return capsys.readouterr().out


def test_export_the_selected_weights_and_override(best, tmp_path, capsys):
    pytest.importorskip("onnx")
    state = ckpt.load_checkpoint(best)
    x = torch.randn(3, 3, 32, 32)
    torch.save({k: v for k, v in state.items() if k != "selected_weights"}, tmp_path / "old_best.pt")
    assert "the 'model' weights" in exports(tmp_path / "old_best.pt", tmp_path / "m.onnx", capsys)  # the default
    assert abs(onnx_logits(tmp_path / "m.onnx", x) - net_from(state, "model")(x).detach().numpy()).max() < 1e-4
    torch.save({**state, "selected_weights": "ema"}, tmp_path / "ema_best.pt")
    assert "the 'ema' weights" in exports(tmp_path / "ema_best.pt", tmp_path / "e.onnx", capsys)
    ema = net_from(state, "ema")(x).detach().numpy()
    assert abs(onnx_logits(tmp_path / "e.onnx", x) - ema).max() < 1e-4
    assert abs(ema - net_from(state, "model")(x).detach().numpy()).max() > 1e-3  # the choice matters
    assert "the 'model' weights" in exports(tmp_path / "ema_best.pt", tmp_path / "o.onnx", capsys, "--weights", "model")


def test_export_without_onnx_is_one_line(best, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    assert export.main([str(best), str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err.strip() == "export: the 'onnx' package is not installed (pip install onnx)"
    assert not (tmp_path / "m.onnx").exists()


def test_export_a_mobilenet(tmp_path):
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="mobilenet_v3_small", num_classes=10)).eval()
    export.export_onnx(net, tmp_path / "mnv3.onnx", channels=3, size_px=64)
    x = torch.randn(2, 3, 64, 64)
    assert abs(onnx_logits(tmp_path / "mnv3.onnx", x) - net(x).detach().numpy()).max() < 1e-4


def test_prune_halves_flops_and_rebuilds_from_data(best, pruned):
    path, stdout = pruned
    state = torch.load(path, map_location="cpu", weights_only=True)  # nothing pickled
    cfg = from_dict(state["config"])
    source = from_dict(ckpt.load_checkpoint(best)["config"])
    assert cfg.model.name == "resnet18" and len(cfg.model.widths) == 20
    net = net_from(state, "model")  # strict load into the network the config describes
    full = build_model(source.model)
    before, after = flops_per_image(full, 32).flops, flops_per_image(net, 32).flops
    assert after <= 0.5 * before and after > 0.3 * before
    assert state["pruning"]["flops_before"] == before and state["pruning"]["flops_after"] == after
    assert f"{before / 1e9:.4f} -> {after / 1e9:.4f} GFLOP/img" in stdout and "params" in stdout
    assert all(w % 8 == 0 for w in cfg.model.widths)
    assert sum(p.numel() for p in net.parameters()) < 0.7 * sum(p.numel() for p in full.parameters())
    assert net.fc.out_features == 10
    # The trainer's view of the file: its widths, the run's own head; another network is refused.
    assert stored_model_config(state, ModelConfig(name="resnet18", num_classes=5), path).widths == cfg.model.widths
    with pytest.raises(ValueError, match="holds a resnet18, but model.name is resnet34"):
        stored_model_config(state, ModelConfig(name="resnet34"), path)


@pytest.mark.slow
def test_finetune_and_export_a_pruned_model(shards, pruned, tmp_path, capsys):
    """`python -m train` fine-tunes a pruned file, and the run's best.pt exports as the pruned net."""
    pytest.importorskip("onnx")
    path, _ = pruned
    widths = from_dict(torch.load(path, weights_only=True)["config"]).model.widths
    out = ok(train([*RUN, f"data.path={shards}", f"run_dir={tmp_path / 'ft'}", f"train.finetune.weights={path}"],
                   timeout=300))
    assert "fine-tuning from" in out and "fresh head: none" in out
    state = ckpt.load_checkpoint(tmp_path / "ft" / "best.pt")
    assert from_dict(state["config"]).model.widths == widths  # the checkpoint rebuilds the pruned net
    for onnx_out, source in ((tmp_path / "ft.onnx", tmp_path / "ft" / "best.pt"), (tmp_path / "p.onnx", path)):
        assert "(pruned)" in exports(source, onnx_out, capsys)
    x = torch.randn(2, 3, 32, 32)
    selected = net_from(state, state["selected_weights"])  # what the export takes by default
    assert abs(onnx_logits(tmp_path / "ft.onnx", x) - selected(x).detach().numpy()).max() < 1e-4


def test_bad_input_is_one_line_and_writes_nothing(best, tmp_path, capsys):
    pytest.importorskip("torch_pruning")

    def fails(main, *args: object, needles: tuple[str, ...]) -> None:
        """In-process (fast): exit 2 and one stderr line naming the file or value."""
        assert main([str(a) for a in args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and all(n in lines[0] for n in needles), lines

    missing, out, onnx_out = tmp_path / "nope.pt", tmp_path / "out.pt", tmp_path / "m.onnx"
    fails(prune.main, missing, "--flops-ratio", 0.5, "--out", out, needles=("nope.pt", "no such file"))
    fails(export.main, missing, onnx_out, needles=("nope.pt", "no such file"))
    fails(prune.main, best, "--flops-ratio", 1.5, "--out", out, needles=("--flops-ratio 1.5",))
    state = ckpt.load_checkpoint(best)
    mobile = build_model(ModelConfig(name="mobilenet_v3_small", num_classes=10)).state_dict()
    config = {**state["config"], "model": {**state["config"]["model"], "name": "mobilenet_v3_small"}}
    torch.save({**state, "config": config, "model": mobile, "ema": None}, tmp_path / "mnv3.pt")
    fails(prune.main, tmp_path / "mnv3.pt", "--flops-ratio", 0.5, "--out", out,
          needles=("mnv3.pt", "mobilenet_v3_small", "prunes ResNets"))
    config = {**state["config"], "model": {**state["config"]["model"], "name": "resnet34"}}
    torch.save({**state, "config": config}, tmp_path / "r34.pt")  # weights of another architecture
    fails(export.main, tmp_path / "r34.pt", onnx_out, needles=("r34.pt", "do not fit resnet34"))
    fails(export.main, tmp_path / "mnv3.pt", onnx_out, "--weights", "ema", needles=("mnv3.pt", "no 'ema' weights"))
    torch.save(mobile, tmp_path / "plain.pt")  # a bare state dict is not a firehose model file
    fails(export.main, tmp_path / "plain.pt", onnx_out, needles=("plain.pt", "missing keys"))
    torch.save({**state, "model": Evil(tmp_path / "pwned")}, tmp_path / "evil.pt")
    fails(prune.main, tmp_path / "evil.pt", "--flops-ratio", 0.5, "--out", out, needles=("evil.pt", "weights-only"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt", "mnv3.pt", "plain.pt", "r34.pt"]  # no output,
    # and the pickle's code did not run (it would have made `pwned`)


def test_widths_are_typed_and_validated_by_the_config_loader():
    from model.resnet import standard_widths
    from train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"model.widths has 2 entries; resnet18 has 20 convs"):
        load_config(None, ["model.name=resnet18", "model.widths=[64, 64]"])
    with pytest.raises(ConfigError, match=r"model.widths\[0\]"):
        load_config(None, ["model.widths=[wide]"])
    widths = standard_widths(18)
    bad = list(widths)
    bad[2] = 32  # layer1.0.conv2 feeds a residual add with the 64-channel stem
    with pytest.raises(ConfigError, match="layer1.0 adds a 64-channel shortcut to 32 channels"):
        load_config(None, ["model.name=resnet18", f"model.widths={bad}"])
    narrow = list(widths)
    narrow[1] = 16  # layer1.0.conv1: inside the block, free to shrink
    cfg = load_config(None, ["data.loader=synthetic", "model.name=resnet18", f"model.widths={narrow}"]).model
    net = build_model(cfg)
    assert net.layer1[0].conv1.out_channels == 16 and net.layer1[0].conv2.in_channels == 16
    assert [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)] == narrow
