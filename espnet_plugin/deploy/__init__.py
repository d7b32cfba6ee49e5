"""Deployment of compact models outside PyTorch: ONNX export (``onnx_export``)."""
