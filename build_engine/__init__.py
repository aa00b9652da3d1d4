"""ONNX -> FP16 TensorRT engine build step: ``python -m build_engine`` or ``edge build``.

It imports nothing of edge: edge passes the facts about a model in (build_engine.models), and
imports the engine folder's layout and sidecar (build_engine.sidecar) and the machine facts
(build_engine.machine) from here.
"""
