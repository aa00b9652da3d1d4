"""ONNX -> FP16 TensorRT engine build step: ``python -m build_engine`` or ``edge build``."""
