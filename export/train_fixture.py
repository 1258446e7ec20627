"""Train the "shapes" fixture: a small GAP → Dense CNN on seeded synthetic glyphs, exported as a model folder.

``python -m export.train_fixture`` rewrites ``models/fixtures/shapes/`` (the exported model folder) and
``models/fixtures/shapes-test/`` (held-out PNGs, ``boxes.csv`` and a few Pascal VOC files). Everything is
seeded: the data through NumPy, the weights through ``keras.utils.set_random_seed`` with deterministic ops.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .shapes_data import CLASSES, IMAGE_SIZE, ShapesSet, make_dataset, write_test_set

DEFAULT_SEED = 20260
DEFAULT_OUTPUT = Path("models/fixtures/shapes")
DEFAULT_TEST_OUTPUT = Path("models/fixtures/shapes-test")
FEATURES_LAYER = "features"


@dataclass(frozen=True)
class TrainConfig:
    """Dataset sizes and optimiser settings; the defaults make the committed fixture."""

    seed: int = DEFAULT_SEED
    train_size: int = 6000
    test_size: int = 150
    epochs: int = 7
    batch_size: int = 32
    learning_rate: float = 2e-3
    """Peak of a cosine decay to zero over all steps (the last epochs settle BatchNorm and the weights)."""


def build_model(num_classes: int = len(CLASSES), size: int = IMAGE_SIZE) -> Any:
    """Four conv/BN/ReLU blocks at stride 4 (12×12 maps for 48×48 inputs) → GlobalAveragePooling2D → Dense(softmax).

    The last conv is dilated so its receptive field (34 px) covers the largest glyph while the map stays fine
    enough for boxes. The input is raw 0-255 RGB; scaling is the first layer so the manifest needs no mean/std.
    """
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    for i, (filters, dilation) in enumerate(((16, 1), (32, 1), (48, 1), (64, 2))):
        if i in (1, 2):
            x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)  # short training: track statistics fast
        x = layers.ReLU(name=FEATURES_LAYER if i == 3 else None)(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="shapes_cnn")


def train(config: TrainConfig) -> tuple[Any, dict[str, Any], ShapesSet]:
    """Train on fresh data; return the model, provenance numbers and the held-out set."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    train_set = make_dataset(config.train_size, config.seed)
    test_set = make_dataset(config.test_size, config.seed + 1)
    model = build_model()
    steps = config.epochs * -(-config.train_size // config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(train_set.images.astype(np.float32), train_set.labels, epochs=config.epochs,
              batch_size=config.batch_size, shuffle=True, verbose=0)
    seconds = time.perf_counter() - start
    probs = model.predict(test_set.images.astype(np.float32), verbose=0)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == test_set.labels))
    provenance = {
        "fixture": {
            "script": "export/train_fixture.py", "seed": config.seed, "train_size": config.train_size,
            "test_size": config.test_size, "epochs": config.epochs, "batch_size": config.batch_size,
            "learning_rate": config.learning_rate, "heldout_accuracy_keras": round(accuracy, 4),
            "training_seconds": round(seconds, 1), "classes": list(CLASSES), "image_size": IMAGE_SIZE,
        }
    }
    return model, provenance, test_set


def export_fixture(model: Any, output: Path, provenance: dict[str, Any], *, force: bool = True) -> Any:
    """Save the Keras model and run it through the normal exporter into ``output``."""
    from .exporter import export_model

    with tempfile.TemporaryDirectory(prefix="shapes-fixture-") as tmp:
        model_path = Path(tmp) / "shapes.keras"
        labels_path = Path(tmp) / "labels.txt"
        model.save(model_path)
        labels_path.write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
        return export_model(output, model_path=model_path, labels_path=labels_path, force=force,
                            **_provenance_argument(provenance))


def _provenance_argument(provenance: dict[str, Any]) -> dict[str, Any]:
    """The exporter's keyword for extra manifest keys, if it has one."""
    import inspect

    from .exporter import export_model

    parameters = inspect.signature(export_model).parameters
    for name in ("provenance", "extra"):
        if name in parameters:
            return {name: provenance}
    return {}


def make_fixture(output: Path = DEFAULT_OUTPUT, test_output: Path | None = DEFAULT_TEST_OUTPUT,
                 config: TrainConfig | None = None) -> dict[str, Any]:
    """Train, export to ``output`` and (re)write the held-out set to ``test_output``; returns provenance."""
    config = config or TrainConfig()
    model, provenance, test_set = train(config)
    manifest = export_fixture(model, Path(output), provenance)
    if not _provenance_argument(provenance) or "fixture" not in manifest.provenance:
        (Path(output) / "fixture.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    if test_output is not None:
        test_output = Path(test_output)
        staging = Path(tempfile.mkdtemp(prefix=f".{test_output.name}.tmp-", dir=test_output.parent))
        try:
            write_test_set(staging, test_set)
            if test_output.exists():
                shutil.rmtree(test_output)
            staging.rename(test_output)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return provenance


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m export.train_fixture [--output DIR] [--test-output DIR] [--epochs N]``."""
    parser = argparse.ArgumentParser(prog="python -m export.train_fixture", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="model folder to (re)write")
    parser.add_argument("--test-output", type=Path, default=DEFAULT_TEST_OUTPUT, help="held-out set folder")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--train-size", type=int, default=TrainConfig.train_size)
    parser.add_argument("--test-size", type=int, default=TrainConfig.test_size)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    args = parser.parse_args(argv)
    config = TrainConfig(seed=args.seed, train_size=args.train_size, test_size=args.test_size, epochs=args.epochs)
    provenance = make_fixture(args.output, args.test_output, config)
    print(json.dumps(provenance["fixture"], indent=2))


if __name__ == "__main__":
    main()
