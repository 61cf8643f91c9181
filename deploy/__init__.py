"""After training: ONNX export, INT8 quantization, channel pruning and TensorRT engines."""
