"""deploy.quantize, deploy.evaluate, deploy.trt and benchmarks.infer on the `shards` fixture
(50 validation images) with a small ResNet-18 at 32 px exported to ONNX."""

import json

import numpy as np
import pytest
import torch

from deploy import evaluate, quantize, trt
from deploy.data import val_batches
from deploy.export import export_onnx
from model import ModelConfig, build_model
from pipeline.shards import load_split

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
SIDE = 32


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """(the ONNX file, the PyTorch net it came from): ResNet-18, 10 classes, BN statistics set."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="resnet18", num_classes=10, zero_init_residual=False)).eval()
    path = tmp_path_factory.mktemp("onnx") / "r18.onnx"
    export_onnx(net, path, channels=3, size_px=SIDE)
    return path, net


@pytest.fixture(scope="module")
def int8(fp32, shards):
    """{"cpu": path, "tensorrt": path}: QDQ models for both activation targets."""
    out = {}
    for target in quantize.TARGETS:
        out[target] = fp32[0].with_name(f"r18.{target}.int8.onnx")
        assert quantize.main([str(fp32[0]), "--calib-data", str(shards), "--calib-batches", "1",
                              "--batch-size", "16", "--target", target, "--out", str(out[target])]) == 0
    return out


def fails(main, argv, capsys, *needles) -> None:
    """The bad-input contract: exit 2 and one stderr line naming the file or value."""
    assert main([str(a) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and all(n in lines[0] for n in needles), lines


def test_evaluate_scores_every_image_like_pytorch(fp32, shards, tmp_path):
    path, net = fp32
    out = tmp_path / "e.json"
    assert evaluate.main([str(path), "--data", str(shards), "--batch-size", "16", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["samples"] == load_split(shards, "val").num_samples
    correct1 = correct5 = 0
    with torch.no_grad():  # expected: the PyTorch net over the same validation batches
        for images, labels in val_batches(shards, 16, 3, SIDE):
            top = net(torch.from_numpy(images)).topk(5, dim=1).indices.numpy()
            correct1 += int((top[:, 0] == labels).sum())
            correct5 += int((top == labels[:, None]).any(1).sum())
    assert result["top1"] == pytest.approx(100 * correct1 / result["samples"])
    assert result["top5"] == pytest.approx(100 * correct5 / result["samples"])
    assert result["infer_img_per_s"] > 0 and len(result["infer_img_per_s_repeats"]) == evaluate.REPEATS
    assert result["provenance"]["git_commit"] and result["provenance"]["torch"] == torch.__version__


def test_int8_is_qdq_per_channel_and_close_to_fp32(fp32, int8, shards):
    path, _ = fp32
    for target, zero_point_type in (("cpu", onnx.TensorProto.UINT8), ("tensorrt", onnx.TensorProto.INT8)):
        model = onnx.load(str(int8[target]))
        ops = {n.op_type for n in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
        inits = {t.name: t for t in model.graph.initializer}
        weight_dq = [n for n in model.graph.node  # dequantizing a 4-d (conv weight) initializer
                     if n.op_type == "DequantizeLinear" and len(getattr(inits.get(n.input[0]), "dims", ())) == 4]
        conv_weight_scales = [inits[n.input[1]] for n in weight_dq]
        assert conv_weight_scales and all(len(s.dims) == 1 and s.dims[0] > 1 for s in conv_weight_scales)  # per channel
        activation_zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert {z.data_type for z in activation_zero_points} == {zero_point_type}
    images, _ = next(val_batches(shards, 16, 3, SIDE))
    ref = ort.InferenceSession(str(path)).run(None, {"images": images})[0]
    for target in quantize.TARGETS:
        got = ort.InferenceSession(str(int8[target])).run(None, {"images": images})[0]
        assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.95, target  # the same function, quantized


def test_quantize_bad_input_is_one_line_and_writes_nothing(fp32, tmp_path, capsys):
    path, _ = fp32
    out = tmp_path / "q.onnx"
    fails(quantize.main, [tmp_path / "nope.onnx", "--calib-data", tmp_path, "--out", out], capsys, "nope.onnx")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(quantize.main, [path, "--calib-data", empty, "--out", out], capsys, "empty", "no validation samples")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    fails(quantize.main, [tmp_path / "junk.onnx", "--calib-data", empty, "--out", out], capsys, "junk.onnx")
    fails(evaluate.main, [path, "--data", empty], capsys, "empty", "no validation samples")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "junk.onnx"]


def test_trt_refuses_bad_input_then_names_what_is_missing(fp32, int8, tmp_path, capsys):
    path, _ = fp32
    plan = tmp_path / "m.plan"
    fails(trt.main, [tmp_path / "nope.onnx", "--precision", "fp16", "--out", plan], capsys, "nope.onnx")
    fails(trt.main, [path, "--precision", "int8", "--out", plan], capsys, "r18.onnx", "QuantizeLinear")
    fails(trt.main, [int8["cpu"], "--precision", "int8", "--out", plan], capsys, "uint8", "--target tensorrt")
    try:
        trt.require_gpu_tensorrt()
    except trt.DeployError as e:  # this machine: one line naming the missing piece
        fails(trt.main, [int8["tensorrt"], "--precision", "int8", "--out", plan], capsys, str(e))
        assert "tensorrt" in str(e) or "GPU" in str(e)
    else:
        assert not plan.exists()
        pytest.skip("TensorRT and a GPU are both here: nothing missing to name (the bad inputs above were checked)")
    assert not plan.exists()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", trt.PRECISIONS)
def test_trt_engine_matches_onnx_runtime(fp32, int8, tmp_path, precision):
    pytest.importorskip("tensorrt")
    source = fp32[0] if precision == "fp16" else int8["tensorrt"]
    plan = tmp_path / f"{precision}.plan"
    assert trt.main([str(source), "--precision", precision, "--out", str(plan), "--batch-size", "8"]) == 0
    images = np.random.default_rng(0).standard_normal((8, 3, SIDE, SIDE), dtype=np.float32)
    ref = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    got = trt.Engine(plan.read_bytes())(torch.from_numpy(images).cuda())
    torch.cuda.synchronize()
    got = got.cpu().numpy()
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() < (0.02 if precision == "fp16" else 0.1) * scale
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.75


def test_infer_benchmark_writes_every_row(shards, tmp_path):
    pytest.importorskip("torch_pruning")
    from benchmarks import infer

    out = tmp_path / "infer.json"
    assert infer.main(["--model", "resnet18", "--image-size", str(SIDE), "--batch-size", "4", "--repeats", "1",
                       "--calib-batches", "1", "--student", "mobilenet_v3_small", "--threads", "1",
                       "--json", str(out), "--markdown", str(tmp_path / "t.md")]) == 0
    result = json.loads(out.read_text())
    rows = {r["row"]: r for r in result["rows"]}
    assert len(rows) == 10 and rows["ONNX Runtime INT8 (QDQ, per-channel)"]["img_per_s"] > 0
    assert rows["pruned, ONNX Runtime FP32"]["gflop_per_img"] <= 0.5 * rows["ONNX Runtime FP32"]["gflop_per_img"]
    if not torch.cuda.is_available():
        assert rows["TensorRT FP16"]["note"].startswith("not available: ")
    assert result["provenance"]["git_commit"] and "| TensorRT INT8 |" in (tmp_path / "t.md").read_text()

