"""report.html: random-weights banner, colour-scale legend, percentages, small inputs enlarged, short paths,
sorting/filtering; curves.png: y-axis label, legend off the curves, distinguishable lines."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cam_runtime.cli import app
from cam_runtime.cli.bench_cmd import example_images
from cam_runtime.curves_plot import LEFT, LEGEND_W, PANEL_W, curves_image, line_style, plot_box
from cam_runtime.report import (
    THUMB_SIDE,
    colormap_legend_uri,
    display_size,
    is_random_weights,
    percent,
    short_sources,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "models" / "fixtures" / "shapes"
IMAGES = ROOT / "models" / "fixtures" / "shapes-test" / "images"


def explain(*args: object) -> str:
    """Run ``camr explain`` in-process (quiet) and return the report page."""
    result = CliRunner().invoke(app, ["explain", *(str(a) for a in args), "-q"])
    assert result.exit_code == 0, result.output
    out = Path(str(args[args.index("-o") + 1]))
    return (out / "report.html").read_text(encoding="utf-8")


def decode_png_uri(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    image = cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


@pytest.fixture()
def nested_inputs(tmp_path: Path) -> Path:
    """Fixture images (48×48) in two subfolders of one root."""
    root = tmp_path / "data" / "shapes"
    for sub, name in (("a", "0000_star.png"), ("b", "0001_circle.png")):
        (root / sub).mkdir(parents=True)
        shutil.copy(IMAGES / name, root / sub / name)
    return root


# --- random weights banner ------------------------------------------------------------------------------------------


def test_random_weights_get_a_banner(tmp_path: Path) -> None:
    model = tmp_path / "random-model"
    shutil.copytree(FIXTURE, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["weights"] = "random (seed 1234; BatchNormalization statistics calibrated on noise)"
    (model / "manifest.json").write_text(json.dumps(manifest))
    image = IMAGES / "0000_star.png"
    page = explain(image, "-m", model, "-o", tmp_path / "out-random")
    assert "class='banner'" in page and "Random weights" in page and "seed 1234" in page
    trained = explain(image, "-m", FIXTURE, "-o", tmp_path / "out-trained")
    assert "class='banner'" not in trained and "Random weights" not in trained


@pytest.mark.parametrize(("weights", "random"), [("random (seed 0)", True), ("Random", True), ("imagenet", False),
                                                 ("from model file", False), (None, False)])
def test_is_random_weights(weights: object, random: bool) -> None:
    assert is_random_weights(weights) is random


# --- colour-scale legend ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("colormap", ["jet", "turbo", "inferno"])
def test_legend_is_the_colormap_from_0_to_1(colormap: str) -> None:
    legend = decode_png_uri(colormap_legend_uri(colormap))
    assert legend.shape == (12, 256, 3)
    cmap = getattr(cv2, f"COLORMAP_{colormap.upper()}")
    expected = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[None, :], cmap)[0]
    # Each column i is the colour the overlays give map value i/255 (PNG is lossless).
    assert np.abs(legend[6].astype(int) - expected.astype(int)).max() <= 1
    assert (legend == legend[:1]).all()  # every row the same


def test_page_legend_follows_the_colormap_option(tmp_path: Path) -> None:
    page = explain(IMAGES / "0000_star.png", "-m", FIXTURE, "-o", tmp_path / "out", "--colormap", "turbo")
    assert f"src='{colormap_legend_uri('turbo')}'" in page
    assert colormap_legend_uri("jet") not in page
    assert "colour scale (turbo)" in page and "<span>0</span>" in page and "<span>1</span>" in page


# --- percentages, small inputs, short paths ----------------------------------------------------------------------


@pytest.mark.parametrize(("p", "text"), [(0.1234, "12.3%"), (1.0, "100.0%"), (0.0, "0.0%"), (1e-5, "<0.1%"),
                                         (0.0006, "0.1%")])
def test_percent(p: float, text: str) -> None:
    assert percent(p) == text


def test_page_shows_percentages_enlarged_small_inputs_and_short_paths(nested_inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    page = explain(nested_inputs, "-r", "-m", FIXTURE, "-o", out, "-k", "2")
    records = json.loads((out / "report.json").read_text())["images"]
    for record in records:
        for p in record["top_k"]:
            assert f"({p['class_id']}): <span title='p={p['probability']:.6g}'>{percent(p['probability'])}</span>" \
                   in page
        short = str(Path(record["source"]).relative_to(nested_inputs))
        assert short in ("a/0000_star.png", "b/0001_circle.png")
        assert f"<td class='src' title='{record['source']}'>{short}</td>" in page
    assert f"inputs under: {nested_inputs}" in page
    assert "p=0." not in re.sub(r"title='p=[^']*'", "", page)  # probabilities are shown as percentages only
    # 48×48 inputs: every thumbnail is shown enlarged to the thumbnail box, pixelated rather than blurred.
    assert page.count("class='px'") == 3 * len(records)  # input + 2 overlays per row
    assert page.count(f"width='{THUMB_SIDE}' height='{THUMB_SIDE}'") == 3 * len(records)
    assert "img.px{image-rendering:pixelated" in page


def test_large_inputs_are_not_enlarged(tmp_path: Path) -> None:
    page = explain(example_images()[0], "-m", FIXTURE, "-o", tmp_path / "out")
    assert "class='px'" not in page


def test_display_size() -> None:
    assert display_size(48, 48) == (THUMB_SIDE, THUMB_SIDE)
    assert display_size(40, 20) == (THUMB_SIDE, THUMB_SIDE // 2)
    assert display_size(THUMB_SIDE, 10) is None and display_size(640, 480) is None


def test_short_sources() -> None:
    assert short_sources(["/d/x/a/1.png", "/d/x/b/2.png"]) == ("/d/x", ["a/1.png", "b/2.png"])
    assert short_sources(["/d/x/1.png"]) == ("/d/x", ["1.png"])
    assert short_sources(["/d/x/1.png", "<stdin>"]) == ("/d/x", ["1.png", "<stdin>"])
    assert short_sources(["/a/1.png", "rel/2.png"]) == ("", ["/a/1.png", "rel/2.png"])  # mixed: left as they are
    assert short_sources(["1.png", "2.png"]) == ("", ["1.png", "2.png"])


# --- sorting and filtering ------------------------------------------------------------------------------------------


def test_table_is_complete_without_the_script(nested_inputs: Path, tmp_path: Path) -> None:
    (nested_inputs / "a" / "broken.png").write_bytes(b"nope")
    result = CliRunner().invoke(app, ["explain", str(nested_inputs), "-r", "-m", str(FIXTURE), "-o",
                                      str(tmp_path / "out"), "-q"])
    assert result.exit_code == 1
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    without_script = re.sub(r"<script>.*?</script>", "", page, flags=re.S)
    assert without_script.count("<tr data-i=") == 2 and without_script.count("<tr class='failed' data-i=") == 1
    assert "<input id='filter' type='search'" in page and "hidden>" in page  # no dead control without JS
    assert re.findall(r"data-p='([^']*)'", page) and all(float(v) <= 1.0 for v in re.findall(r"data-p='([^']*)'",
                                                                                              page))
    assert page.count("<script>") == 1 and "http" not in re.sub(r"data:[^']*", "", page)


def test_sorting_and_filtering_in_a_browser(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("needs Debian's chromium and chromium-driver packages (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("0000_star.png", "0001_circle.png", "0004_square.png", "0005_cross.png"):
        shutil.copy(IMAGES / name, folder / name)
    out = tmp_path / "out"
    explain(folder, "-m", FIXTURE, "-o", out)
    records = json.loads((out / "report.json").read_text())["images"]
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get((out / "report.html").as_uri())
        assert browser.find_element(By.ID, "filter").is_displayed()

        def order() -> list[str]:
            return browser.execute_script("return [...document.querySelectorAll('#rows tbody tr')]"
                                          ".filter(r => !r.hidden).map(r => r.dataset.i)")

        header = browser.find_element(By.CSS_SELECTOR, "th[data-key='p']")
        header.click()
        by_p = sorted(range(len(records)), key=lambda i: records[i]["top_k"][0]["probability"])
        assert order() == [str(i + 1) for i in by_p]
        header.click()
        assert order() == [str(i + 1) for i in reversed(by_p)]
        browser.find_element(By.CSS_SELECTOR, "th[data-key='name']").click()
        assert order() == ["1", "2", "3", "4"]  # the names sort as the folder did
        browser.find_element(By.ID, "filter").send_keys("circle")
        assert order() == ["2"]
    finally:
        browser.quit()


# --- curves.png -----------------------------------------------------------------------------------------------------


def test_line_styles_are_distinct_beyond_colour() -> None:
    styles = [line_style(i) for i in range(10)]
    assert len({(s.dash, s.marker) for s in styles[:3]}) == 3
    assert len({(s.colour, s.dash, s.marker) for s in styles}) == 10
    assert len({(s.dash, s.marker) for s in styles}) >= 7  # tells the methods apart without colour


def test_curves_have_a_y_label_a_legend_off_the_plot_and_dashes() -> None:
    x = np.linspace(0.0, 1.0, 17)
    curves = {"cam": 1 - x, "gradcam": np.full(17, 0.5), "scorecam": x * x}
    image = curves_image(curves, curves)
    panel_w = LEFT + PANEL_W + LEGEND_W
    assert image.shape[1] == 2 * panel_w
    x0, y0, x1, y1 = plot_box()
    for panel in (image[:, :panel_w], image[:, panel_w:]):
        # y-axis label: ink in the left margin, left of the tick labels.
        assert (panel[y0:y1, : x0 - 40] < 128).any()
        # The legend: each method's colour appears in the column right of the plot, none of it inside the plot box.
        legend = panel[:, x1 + 2:]
        for index in range(len(curves)):
            colour = np.array(line_style(index).colour)
            assert (np.abs(legend.astype(int) - colour).sum(axis=2) < 30).any()
        # gradcam (dashed) at 0.5: the plot row has its colour with gaps in between, not a solid line.
        row = panel[round(y1 - 0.5 * (y1 - y0)), x0 + 2: x1 - 2].astype(int)
        dashed = (np.abs(row - np.array(line_style(1).colour)).sum(axis=1) < 60)
        assert 0.3 < dashed.mean() < 0.9
