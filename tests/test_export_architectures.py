"""End to end: every architecture the README lists exports (random weights, smallest input) and explains a photo."""

from __future__ import annotations

import gc
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the export extra (tensorflow, tf2onnx) is not installed")

from cam_runtime import CamEngine  # noqa: E402
from export.architectures import ARCHITECTURES, SUPPORTED  # noqa: E402
from export.exporter import export_model  # noqa: E402

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_architectures() -> list[str]:
    """The --arch names the README's Exporting section lists (ranges like ``efficientnetb0–b3`` expanded)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Exporting", 1)[1].split("(`--arch`)", 1)[0]
    names: list[str] = []
    for token in re.findall(r"`([a-z0-9/–-]+)`", section):
        if "–" in token:  # efficientnetb0–b3
            stem, first, last = re.fullmatch(r"([a-z]+)b(\d)–b(\d)", token).groups()  # type: ignore[union-attr]
            names += [f"{stem}b{i}" for i in range(int(first), int(last) + 1)]
        elif "/" in token:  # resnet50/101/152, resnet50v2/101v2/152v2
            first, *rest = token.split("/")
            stem = re.match(r"[a-z]+", first).group(0)  # type: ignore[union-attr]
            names += [first, *(stem + r for r in rest)]
        else:
            names.append(token)
    return names


def test_readme_lists_exactly_the_supported_architectures() -> None:
    assert sorted(readme_architectures()) == SUPPORTED


@pytest.fixture(scope="module")
def shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for all exports; each test removes its model folder afterwards to keep the disk small."""
    return tmp_path_factory.mktemp("arch-exports")


LARGER_INPUT = {"resnet152": 96, "resnet152v2": 96, "efficientnetb1": 64, "efficientnetb2": 64, "efficientnetb3": 64}
"""Deep random networks at 32 px (a 1×1 feature map) amplify float32 conversion differences towards or past the
features tolerance (2e-3): ResNet152 9.7e-3, ResNet152V2 2.4e-3, EfficientNetB1 1.3e-3 at 32 px; at 96 px
1.15e-3 and 1.8e-4, at 64 px 1.4e-4."""


def input_size_for(arch: str) -> int:
    """The size each architecture is tested at: its smallest input, or LARGER_INPUT's."""
    return max(ARCHITECTURES[arch].min_size, LARGER_INPUT.get(arch, 0))


@pytest.mark.parametrize("arch", SUPPORTED)
def test_architecture_exports_and_explains(arch: str, shared_tmp: Path, photo_arrays: dict[str, np.ndarray]) -> None:
    size = input_size_for(arch)
    folder = shared_tmp / arch
    try:
        manifest = export_model(folder, arch=arch, weights="random", input_size=size)
        parity = manifest.provenance["parity"]
        assert parity["probabilities_max_abs"] <= 1e-4 and parity["features_max_rel"] <= 2e-3
        assert not parity["constant_outputs"], parity
        engine = CamEngine.load(folder, device="cpu", threads=1)
        first, second = engine.explain([photo_arrays["chelsea"], photo_arrays["coffee"]], top_k=2)
        probs = [p.probability for p in first.top_k]
        # A non-degenerate random model: the top class stands out of the uniform 1/1000 and inputs differ.
        assert probs[0] > 2e-3, probs
        assert [p.class_id for p in first.top_k] != [p.class_id for p in second.top_k] or \
            abs(first.top_k[0].probability - second.top_k[0].probability) > 1e-4
        assert first.heatmap.shape == photo_arrays["chelsea"].shape[:2]
        assert np.isfinite(first.heatmap).all() and first.heatmap.max() == pytest.approx(1.0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        # Keras keeps every built model's graph state and tf2onnx's traced functions: 19 exports in one process
        # reached 16 GB without this.
        tf.keras.backend.clear_session()
        gc.collect()
