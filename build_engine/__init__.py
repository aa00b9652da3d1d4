"""ONNX -> TensorRT engine build step (GPU machines; in progress)."""
