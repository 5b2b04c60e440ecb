"""Deployment: frozen builtin-op models, and export to SavedModel, TFLite and ONNX."""

from keras_robust_iqa.deployment.export import export_model, export_run
from keras_robust_iqa.deployment.lowering import deployment_model
from keras_robust_iqa.layers.lowered_conv2d import LoweredOrthoConv2D

__all__ = ["LoweredOrthoConv2D", "deployment_model", "export_model", "export_run"]
