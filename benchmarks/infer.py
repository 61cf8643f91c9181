"""Inference side by side in one run on one device: PyTorch, ONNX Runtime FP32/INT8, TensorRT,
the pruned model and the MobileNet student.

    python -m benchmarks.infer [--ckpt CKPT | --model resnet50 --image-size 224] [--pruned PRUNED.pt ...]
        [--student-ckpt CKPT | --student mobilenet_v3_large] [--data SHARDS] [--batch-size 32]
        [--json OUT.json] [--markdown OUT.md]

Each row: batch-1 latency (ms, median of repeats) and batch-N throughput (img/s, median of
repeats), both on inputs already in memory after warm-up (data loading excluded), and top-1 over
the whole validation split of --data beside it where the row's weights are trained (from
--ckpt / --pruned / --student-ckpt). Without --ckpt the main model has random weights (speed
only); without --pruned it is pruned here to half its FLOPs (deploy.prune). INT8 is calibrated on
--data's validation batches (or on random batches without --data). TensorRT rows need tensorrt
and a GPU, else they say "not available: <why>". The JSON carries train.provenance.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from deploy import prune, quantize, trt
from deploy.data import val_batches
from deploy.evaluate import run_rate, session
from deploy.export import export_onnx
from deploy.io import DeployError
from deploy.model_file import build_from_file, load_model_file
from model import ModelConfig, build_model, flops_per_image
from pipeline.atomic import atomic_write
from train.provenance import provenance

COLUMNS = ("row", "latency_b1_ms", "img_per_s", "top1", "gflop_per_img", "note")


def torch_runner(net: torch.nn.Module, bf16: bool):
    """numpy float32 NCHW batch -> numpy logits, channels-last eval (bf16 autocast when asked)."""
    net = net.eval().to(memory_format=torch.channels_last)

    @torch.no_grad()
    def run(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return net(x).float().numpy()

    return run


def ort_runner(path: Path, threads: int):
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    return lambda images: sess.run(None, {name: images})[0]


def top1(run, data: list[tuple[np.ndarray, np.ndarray]]) -> float:
    correct = sum(int((run(images).argmax(1) == labels).sum()) for images, labels in data)
    return 100.0 * correct / sum(len(labels) for _, labels in data)


def measure(name: str, run, batch: np.ndarray, repeats: int, data, trained: bool, gflop: float, note: str = "") -> dict:
    """One row: batch-1 latency, batch-N img/s (model alone), top-1 where the weights are trained."""
    latency_ms = 1000.0 / run_rate(run, [batch[:1]], warmup=2, repeats=max(repeats, 5))["per_s"]
    img_per_s = run_rate(run, [batch], warmup=1, repeats=repeats)["per_s"]
    row = {"row": name, "latency_b1_ms": latency_ms, "img_per_s": img_per_s,
           "top1": top1(run, data) if data and trained else None, "gflop_per_img": gflop, "note": note}
    print(format_row(row), flush=True)
    return row


def format_row(r: dict) -> str:
    if r.get("img_per_s") is None:
        return f"{r['row']:<34} {r['note']}"
    top = f"{r['top1']:6.2f}" if r.get("top1") is not None else "     -"
    return (f"{r['row']:<34} {r['latency_b1_ms']:9.2f} ms {r['img_per_s']:9.1f} img/s  top-1 {top}  "
            f"{r['gflop_per_img']:.3f} GFLOP  {r['note']}")


def classes(net: torch.nn.Module) -> int:
    """The width of the network's last Linear (its classifier)."""
    return [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


def load_net(path: str | None, fallback: ModelConfig):
    """(net, trained?, val image size or None) from a checkpoint / pruned file, else a fresh net."""
    if path is None:
        return build_model(fallback).eval(), False, None
    net, cfg, _ = build_from_file(load_model_file(path), path)
    return net, True, cfg.data.val_image_size


def markdown(result: dict, command: str) -> str:
    p = result["provenance"]
    dirty = " (dirty)" if p["git_dirty"] else ""
    lines = [f"Measured {p['time']} on {p['cpu']} ({p['cores']} cores), device {p['device']}; torch {p['torch']}, "
             f"onnxruntime {result['onnxruntime']}; {result['threads']} threads; git {p['git_commit'][:12]}{dirty}.",
             f"Command: `{command}`", f"Batch {result['batch_size']}, {result['image_size']} px; "
             "latency at batch 1 and img/s at batch N are medians of repeats, model alone (inputs in memory).", "",
             "| row | batch-1 latency (ms) | img/s | top-1 (%) | GFLOP/img | note |", "|---|---|---|---|---|---|"]
    cell = lambda r, k, f: "-" if r.get(k) is None else format(r[k], f)
    for r in result["rows"]:
        lines.append(f"| {r['row']} | {cell(r, 'latency_b1_ms', '.2f')} | {cell(r, 'img_per_s', '.1f')} | "
                     f"{cell(r, 'top1', '.2f')} | {cell(r, 'gflop_per_img', '.3f')} | {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.infer", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", help="trainer checkpoint of the main model (else random --model weights)")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--image-size", type=int, default=None, help="px; default: the checkpoint's val size, else 224")
    p.add_argument("--pruned", action="append", default=[],
                   help="pruned file or fine-tuned checkpoint (repeatable); else the model is pruned here to 0.5x")
    p.add_argument("--student-ckpt", help="MobileNet student checkpoint (else random --student weights)")
    p.add_argument("--student", default="mobilenet_v3_large")
    p.add_argument("--data", help="shard folder: top-1 over its validation split, INT8 calibration")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for PyTorch and ONNX Runtime alike; 0 = each library's default")
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows, size = run_rows(args)
    except DeployError as e:
        print(f"infer: {e}", file=sys.stderr)
        return 2
    import onnxruntime

    result = {"rows": rows, "batch_size": args.batch_size, "image_size": size, "data": args.data,
              "ckpt": args.ckpt, "pruned": args.pruned, "student_ckpt": args.student_ckpt,
              "onnxruntime": onnxruntime.__version__, "threads": args.threads or torch.get_num_threads(),
              "provenance": provenance(torch.device("cpu"))}
    command = "python -m benchmarks.infer " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.json:
        atomic_write(args.json, (json.dumps(result, indent=2) + "\n").encode())
    if args.markdown:
        atomic_write(args.markdown, markdown(result, command).encode())
    return 0


def run_rows(args) -> tuple[list[dict], int]:
    """Every row of the table, in one process (see the module docstring); (rows, image side px)."""
    main_net, trained, size = load_net(args.ckpt, ModelConfig(name=args.model))
    size = args.image_size or size or 224
    channels = next(m for m in main_net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    data = list(val_batches(args.data, args.batch_size, channels, size)) if args.data else []
    batch = np.random.default_rng(0).standard_normal((args.batch_size, channels, size, size), dtype=np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:

        def both(label: str, net: torch.nn.Module, is_trained: bool, note: str = "") -> Path:
            """PyTorch eager fp32 and ONNX Runtime FP32 rows of `net`; returns its ONNX file."""
            g = flops_per_image(net, size).flops / 1e9
            rows.append(measure(f"{label}PyTorch eager fp32", torch_runner(net, False), batch, args.repeats, data,
                                is_trained, g, note))
            if not label:
                rows.append(measure("PyTorch eager bf16 (autocast)", torch_runner(net, True), batch, args.repeats,
                                    data, is_trained, g, note))
            path = Path(tmp) / f"{len(rows)}.onnx"
            export_onnx(net.float().to(memory_format=torch.contiguous_format), path, channels, size)
            rows.append(measure(f"{label}ONNX Runtime FP32", ort_runner(path, args.threads), batch, args.repeats,
                                data, is_trained, g, note))
            return path

        fp32 = both("", main_net, trained)
        calib = [b for b, _ in data[: args.calib_batches]] or [batch] * args.calib_batches
        int8 = Path(tmp) / "int8.onnx"
        quantize.quantize_batches(fp32, calib, int8, "cpu")
        rows.append(measure("ONNX Runtime INT8 (QDQ, per-channel)", ort_runner(int8, args.threads), batch,
                            args.repeats, data, trained, rows[-1]["gflop_per_img"],
                            "calibrated on " + ("--data" if data else "random batches")))
        try:
            trt.require_gpu_tensorrt()
            why = "measured by `python -m deploy.trt` on a GPU machine"
        except DeployError as e:
            why = f"not available: {e}"
        for precision in ("FP16", "INT8"):
            rows.append({"row": f"TensorRT {precision}", "note": why})
            print(format_row(rows[-1]), flush=True)
        for path in args.pruned:
            pruned_net, pruned_trained, _ = load_net(path, ModelConfig())
            both("pruned, ", pruned_net, pruned_trained, f"from {path}")
        if not args.pruned:
            fresh = build_model(ModelConfig(name=args.model, num_classes=classes(main_net))).eval()
            both("pruned, ", prune.prune_to_flops(fresh, 0.5, size), False, "random weights pruned here to <= 0.5x")
        student_cfg = ModelConfig(name=args.student, num_classes=classes(main_net), in_channels=channels)
        student, student_trained, _ = load_net(args.student_ckpt, student_cfg)
        both(f"{args.student}, ", student, student_trained)
    return rows, size


if __name__ == "__main__":
    sys.exit(main())
