"""Keras → cam-model folder exporter (the only package that imports TensorFlow, Keras or tf2onnx)."""
