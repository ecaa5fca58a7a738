"""Export stages: turn a merged student into deployable ONNX folders."""
