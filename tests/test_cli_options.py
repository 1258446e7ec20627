"""One CLI: the shared options mean the same everywhere, the docs table is generated from the commands, and
-q / --json / -m / -o behave alike across commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cam_runtime.cli import app
from cam_runtime.cli.reference import END, SHORT_FLAGS, START, command_options, options_markdown

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "models" / "fixtures" / "shapes"
TEST_SET = ROOT / "models" / "fixtures" / "shapes-test"
NO_JSON = {"demo", "serve", "stream"}
"""Commands with no result to print: the demo is a walkthrough, the server answers over HTTP, stream's output is
JSON lines already."""
ALREADY_QUIET = {"stream"}
"""Commands that print nothing but errors (stdout is their data)."""

runner = CliRunner()


def test_docs_table_is_generated_from_the_commands() -> None:
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    block = START + text.split(START, 1)[1].split(END, 1)[0] + END
    assert block == options_markdown(app), "docs/cli.md is stale: run python -m cam_runtime.cli.reference"


def test_a_short_flag_means_one_option_everywhere() -> None:
    meaning: dict[str, set[str]] = {}
    for names_list in command_options(app).values():
        for names in names_list:
            long_names = [n for n in names if n.startswith("--")]
            for short in (n for n in names if not n.startswith("--")):
                meaning.setdefault(short, set()).add(long_names[0])
    clashes = {short: longs for short, longs in meaning.items() if len(longs) > 1}
    assert not clashes
    for command, names_list in command_options(app).items():
        for names in names_list:
            expected = SHORT_FLAGS.get(names[0])
            if expected is not None:
                assert expected in names, f"camr {command} {names[0]} should also be {expected}"


@pytest.mark.parametrize("command", sorted(command_options(app)))
def test_every_command_takes_the_shared_options_it_needs(command: str) -> None:
    names = {n for option in command_options(app)[command] for n in option}
    if command not in ALREADY_QUIET:
        assert "-q" in names, f"camr {command} has no -q/--quiet"
    if command not in NO_JSON:
        assert "--json" in names, f"camr {command} has no --json"
    if "--device" in names:
        assert "--threads" in names
    if "--force" in names and command not in ALREADY_QUIET:
        assert "--output" in names, f"camr {command} writes files but has no -o/--output"


def test_info_quiet_prints_nothing_and_keeps_the_exit_status(tmp_path: Path) -> None:
    quiet = runner.invoke(app, ["info", "-q", "-m", str(FIXTURE)])
    assert quiet.exit_code == 0 and quiet.stdout == ""
    both = runner.invoke(app, ["info", str(FIXTURE), "-m", str(tmp_path)])
    assert both.exit_code == 2 and "two model folders" in both.output


def test_evaluate_json_is_the_only_stdout(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    lines = (TEST_SET / "boxes.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:4]
    for row in rows:
        name = row.split(",")[0]
        (images / name).write_bytes((TEST_SET / "images" / name).read_bytes())
    (tmp_path / "boxes.csv").write_text("\n".join([header, *rows]) + "\n")
    result = runner.invoke(app, ["evaluate", "-m", str(FIXTURE), "-i", str(images), "--boxes",
                                 str(tmp_path / "boxes.csv"), "-o", str(tmp_path / "out"), "--json", "--steps", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["methods"][0]["method"] == "cam" and data["settings"]["evaluated"] == 3
    quiet = runner.invoke(app, ["evaluate", "-m", str(FIXTURE), "-i", str(images), "--boxes",
                                str(tmp_path / "boxes.csv"), "-o", str(tmp_path / "out"), "-q", "--force",
                                "--steps", "2", "--no-adcc"])
    assert quiet.exit_code == 0 and quiet.stdout == ""


def test_quantize_output_as_argument_or_option(tmp_path: Path) -> None:
    clash = runner.invoke(app, ["quantize", str(tmp_path / "a"), "-o", str(tmp_path / "b"), "-m", str(FIXTURE),
                                "--calibration", str(TEST_SET / "images")])
    assert clash.exit_code == 2 and "two output folders" in clash.output
    missing = runner.invoke(app, ["quantize", "-m", str(FIXTURE), "--calibration", str(TEST_SET / "images")])
    assert missing.exit_code == 2 and "OUTPUT" in missing.output
    no_calibration = runner.invoke(app, ["quantize", "-o", str(tmp_path / "c"), "-m", str(FIXTURE)])
    assert no_calibration.exit_code == 2 and "--calibration" in no_calibration.output
