"""Deployment formats of a trained backbone: ONNX (checked against torch) and safetensors."""
