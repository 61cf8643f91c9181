"""The training loop: `python -m train --config configs/demo.yaml [key=value ...]`.

config (typed YAML) -> trainer (builds loaders, model, optimizer; resumes; runs epochs) ->
engine (the hot loop) + evaluate (exact top-1/top-5) -> checkpoint (atomic, weights-only) and
log (provenance, metrics.jsonl, summary.json). export writes ONNX from a checkpoint.
"""
