"""Defaults shared by the API, the CLI, the server and the distributed runner (no imports: the CLI reads them)."""

from __future__ import annotations

BOX_THRESHOLD = 0.5
"""Boxes: the largest region ≥ this fraction of the map's peak.

The CAM paper used 0.2 on 14×14 GoogLeNet-GAP maps. With today's 7×7–12×12 maps upsampled bilinearly, 0.2 draws
boxes far larger than the object: on the shapes fixture's validation split (100 images, seed 20262) CorLoc is
0.27 / 0.45 / 0.69 / 0.83 / 0.62 / 0.36 at 0.2 / 0.3 / 0.4 / 0.5 / 0.6 / 0.7 (held-out CorLoc at 0.5: 0.847,
at 0.2: 0.240), and on the bundled photos with ImageNet EfficientNet-Lite1 the 0.2 boxes cover 51–57 % of the
image on average against 17–22 % at 0.5 (docs/evaluation.md). ``--box-threshold 0.2`` gives the paper's boxes.
"""
