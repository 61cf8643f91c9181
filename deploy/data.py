"""Validation batches for ONNX models, from the project's own validation pipeline.

The same loader the trainer evaluates with (pipeline.loader.build_loader, split "val", on the
CPU) yields fp16 channels-last batches; ONNX Runtime and TensorRT take float32 NCHW, so each
batch is converted once here. The model's input shape (channels, side) says how to build it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from deploy.io import DeployError, require
from pipeline.config import DataConfig
from pipeline.loader import build_loader
from pipeline.pt_file import first_line
from pipeline.shards import ShardError


def onnx_input(path: str | Path) -> tuple[str, int, int]:
    """(input name, channels, side px) of an ONNX model with a (batch, C, H, H) input.
    DeployError naming the file if it is missing, not ONNX, or its input is not square NCHW."""
    onnx = require("onnx")
    if not Path(path).is_file():
        raise DeployError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # a protobuf decode error: not an ONNX file
        raise DeployError(f"{path}: not an ONNX model ({first_line(e)})") from None
    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(graph_inputs) != 1:
        raise DeployError(f"{path}: expected one image input, found {len(graph_inputs)}")
    dims = [d.dim_value for d in graph_inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[2] != dims[3] or not dims[1] or not dims[2]:
        raise DeployError(f"{path}: input {graph_inputs[0].name!r} is {dims}, expected (batch, C, H, H)")
    return graph_inputs[0].name, dims[1], dims[2]


def val_batches(shards: str | Path, batch_size: int, channels: int, side_px: int,
                max_batches: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images float32 NCHW contiguous, labels int64) numpy batches of the validation split in
    file order, every sample once (the last batch may be smaller), `max_batches` at most.
    Centre crop of `side_px` px, normalized like training; channels 4 = zero-padded RGB.
    DeployError naming the folder if it holds no usable validation shards or no samples."""
    cfg = DataConfig(path=str(shards), loader="dali", batch_size=batch_size, val_image_size=side_px,
                     num_threads=min(4, os.cpu_count() or 1), pad_channels=channels == 4, output="float16")
    try:
        loader = build_loader(cfg, "val", 0, 1, torch.device("cpu"))
    except (ShardError, OSError, ValueError) as e:  # no folder, no shards, 0 samples
        raise DeployError(f"{shards}: no validation samples ({e})") from None
    if loader.num_samples == 0:
        raise DeployError(f"{shards}: no validation samples")
    for i, (images, labels) in enumerate(loader.epoch(0)):
        if max_batches is not None and i >= max_batches:
            break
        yield images.float().contiguous().numpy(), labels.numpy()
