"""docs/options.md is generated from the schema and the commands' arguments, and kept up to date."""
from pathlib import Path

from wubugen.cli import build_parser
from wubugen.config import PRESETS, options
from wubugen.config.reference import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "options.md"


def test_options_doc_is_up_to_date():
    assert DOC.read_text() == render(build_parser()), \
        "docs/options.md is out of date with the schema, the presets or a command's arguments: " \
        "run `python scripts/gen_options.py`"


def test_options_doc_has_every_option_and_the_presets_side_by_side():
    text = render(build_parser())
    for o in options():
        assert f"| `--{o.name}`" in text and f"`{o.toml_key}`" in text
    presets_header = "| option | default | " + " | ".join(f"`{p}`" for p in PRESETS) + " |"
    assert presets_header in text
    for command in ("data inspect", "data demo", "phases", "sample", "evaluate", "inspect", "train"):
        assert f"### `wubugen {command}`" in text
