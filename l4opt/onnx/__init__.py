"""ONNX graphs read and edited: GEMM/conv and Q/DQ recognition, per-layer Q/DQ choices, mixed formats."""
