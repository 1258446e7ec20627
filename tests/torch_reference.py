"""pytorch-grad-cam as a reference implementation in the tests (the torch-test extra), importable without
torchvision: PyPI's torchvision wheel is built for CUDA torch and fails to import next to the CPU torch wheel."""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

import pytest

STAND_IN_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops")


def import_pytorch_grad_cam() -> Any:
    """Import pytorch-grad-cam (skipping the test without it), with a torchvision stand-in where needed.

    pytorch-grad-cam imports torchvision at import time, for preprocessing helpers and detection targets only; the
    stand-in lets the CAM classes and metrics under test import (they never call it) and is removed from
    sys.modules afterwards, so torch.onnx does not see it.
    """
    pytest.importorskip("torch", reason="the torch-test extra (PyTorch CPU) is not installed")
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        pytest.skip("grad-cam (pytorch-grad-cam, the torch-test extra) is not installed", allow_module_level=True)
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]

        def unavailable(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("torchvision is not installed (stand-in used by the tests)")

        modules = {name: types.ModuleType(name) for name in STAND_IN_MODULES}
        for name in ("Compose", "Normalize", "ToTensor"):
            setattr(modules["torchvision.transforms"], name, unavailable)
        modules["torchvision.transforms.functional"].resize = unavailable  # type: ignore[attr-defined]
        modules["torchvision.ops"].box_iou = unavailable  # type: ignore[attr-defined]
        for name, module in modules.items():
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(modules[parent], child, module)
        sys.modules.update(modules)
        try:
            import pytorch_grad_cam
            import pytorch_grad_cam.metrics.road
            import pytorch_grad_cam.utils.image
            import pytorch_grad_cam.utils.model_targets
        finally:
            for name in modules:
                sys.modules.pop(name, None)
        return pytorch_grad_cam
    import pytorch_grad_cam
    import pytorch_grad_cam.metrics.road
    import pytorch_grad_cam.utils.image
    import pytorch_grad_cam.utils.model_targets

    return pytorch_grad_cam
