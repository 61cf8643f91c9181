"""Deployment: channel pruning, ONNX export, INT8 quantization, ONNX Runtime evaluation, TensorRT.

Every command takes a file and writes a file: `python -m deploy.prune | export | quantize |
evaluate | trt`. Bad input is one line on stderr naming the file or value, exit code 2, and no
output file (outputs are written to a temporary file in the same folder, then renamed).
deploy/ imports model/, pipeline/ and train/ (checkpoints, config, provenance), never benchmarks/.
"""
