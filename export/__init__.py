"""Keras → cam-model folder exporter (the only package that imports TensorFlow, Keras or tf2onnx)."""

import os

# TensorFlow prints INFO lines (oneDNN, CPU features) at import; our users want one line per outcome.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
