"""The usual TensorFlow/Keras CAM tutorial pipeline, implemented as the benchmark's reference.

Keras ``load_img`` → ``preprocess_input`` → ``model.predict`` (features and probabilities) →
``scipy.ndimage.zoom`` of the 7x7x2048 features to 224x224x2048 → dot with the class weights →
``cv2.resize`` to the photo size → ``cv2.applyColorMap`` + ``addWeighted`` → ``cv2.imwrite``.

Run as a script (``python benchmarks/reference_tf.py IMAGE OUT.jpg``) for the fresh-process measurement.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class ReferencePipeline:
    """ResNet50 (random weights: ImageNet weights cannot be downloaded here) explained the tutorial way."""

    def __init__(self) -> None:
        import keras

        base = keras.applications.ResNet50(weights=None)
        self.keras = keras
        self.model = keras.Model(base.input, [base.get_layer("conv5_block3_out").output, base.output])
        self.class_weights = base.get_layer("predictions").get_weights()[0]  # [2048, 1000]

    def explain(self, image_path: Path, output: Path) -> dict[str, Any]:
        """One photo → overlay written; returns stage timings in ms."""
        import cv2
        import numpy as np
        import scipy.ndimage
        from keras.applications.resnet50 import preprocess_input

        t0 = time.perf_counter()
        image = self.keras.utils.load_img(image_path, target_size=(224, 224))
        x = preprocess_input(self.keras.utils.img_to_array(image)[None])
        t1 = time.perf_counter()
        features, probs = self.model.predict(x, verbose=0)
        t2 = time.perf_counter()
        class_id = int(np.argmax(probs[0]))
        upsampled = scipy.ndimage.zoom(features[0], (224 / 7, 224 / 7, 1), order=1)  # 224x224x2048
        cam = upsampled @ self.class_weights[:, class_id]
        t3 = time.perf_counter()
        original = cv2.imread(str(image_path))
        cam = cv2.resize(cam, (original.shape[1], original.shape[0]))
        cam = np.maximum(cam, 0) / (cam.max() + 1e-12)
        heat = cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET)
        cv2.imwrite(str(output), cv2.addWeighted(original, 0.5, heat, 0.5, 0))
        t4 = time.perf_counter()
        return {"load_preprocess": (t1 - t0) * 1e3, "predict": (t2 - t1) * 1e3, "zoom_dot_map": (t3 - t2) * 1e3,
                "overlay_write": (t4 - t3) * 1e3, "total": (t4 - t0) * 1e3, "class_id": class_id}


def main() -> None:
    """Fresh-process run on one image (what a user running the tutorial script pays)."""
    image, output = Path(sys.argv[1]), Path(sys.argv[2])
    ReferencePipeline().explain(image, output)


if __name__ == "__main__":
    main()
