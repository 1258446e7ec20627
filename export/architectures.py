"""keras.applications models the exporter knows, each with its own preprocessing as mean/std."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cam_runtime.model import Preprocess

# Keras' preprocess_input modes, written as (pixels_0_255_in_color_order - mean) / std.
CAFFE = Preprocess("BGR", (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), "nearest")
TF = Preprocess("RGB", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5), "nearest")
TORCH = Preprocess("RGB", (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255), "nearest")
IDENTITY = Preprocess("RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "nearest")  # model rescales inside (EfficientNet)


@dataclass(frozen=True)
class Architecture:
    """A keras.applications constructor, its preprocessing and its default input size."""

    name: str
    constructor: str
    preprocess: Preprocess
    size: int = 224
    min_size: int = 32
    refused: bool = False  # known only so head detection can say why it is refused

    def build(self, weights: str | None, input_size: int | None = None) -> Any:
        """Instantiate the Keras model (imports keras)."""
        import keras

        factory: Callable[..., Any] = getattr(keras.applications, self.constructor)
        kwargs: dict[str, Any] = {"weights": weights, "include_top": True}
        # Always explicit: MobileNetV3 and ConvNeXt otherwise build with a dynamic (None) spatial size.
        kwargs["input_shape"] = (input_size or self.size, input_size or self.size, 3)
        return factory(**kwargs)


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture("resnet50", "ResNet50", CAFFE),
    Architecture("resnet101", "ResNet101", CAFFE),
    Architecture("resnet152", "ResNet152", CAFFE),
    Architecture("resnet50v2", "ResNet50V2", TF),
    Architecture("resnet101v2", "ResNet101V2", TF),
    Architecture("resnet152v2", "ResNet152V2", TF),
    Architecture("mobilenet", "MobileNet", TF),
    Architecture("mobilenetv2", "MobileNetV2", TF),
    Architecture("densenet121", "DenseNet121", TORCH),
    Architecture("densenet169", "DenseNet169", TORCH),
    Architecture("densenet201", "DenseNet201", TORCH),
    Architecture("efficientnetb0", "EfficientNetB0", IDENTITY),
    Architecture("efficientnetb1", "EfficientNetB1", IDENTITY, 240),
    Architecture("efficientnetb2", "EfficientNetB2", IDENTITY, 260),
    Architecture("efficientnetb3", "EfficientNetB3", IDENTITY, 300),
    Architecture("efficientnetv2b0", "EfficientNetV2B0", IDENTITY),
    Architecture("xception", "Xception", TF, 299, 71),
    Architecture("inceptionv3", "InceptionV3", TF, 299, 75),
    Architecture("inceptionresnetv2", "InceptionResNetV2", TF, 299, 75),
    # Known and refused by head detection (kept so the refusal explains why instead of "unknown arch").
    Architecture("vgg16", "VGG16", CAFFE, refused=True),
    Architecture("vgg19", "VGG19", CAFFE, refused=True),
    Architecture("convnexttiny", "ConvNeXtTiny", IDENTITY, refused=True),
    Architecture("mobilenetv3small", "MobileNetV3Small", IDENTITY, refused=True),
    Architecture("mobilenetv3large", "MobileNetV3Large", IDENTITY, refused=True),
]}
"""Architecture name (lower case, as given to --arch) → description."""


SUPPORTED: list[str] = sorted(name for name, a in ARCHITECTURES.items() if not a.refused)
"""Architectures that export (the others are refused by head detection, with the reason)."""
