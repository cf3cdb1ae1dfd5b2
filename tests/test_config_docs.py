"""docs/configuration.md is generated from the settings' declarations: stale means wrong."""

import subprocess
import sys
from pathlib import Path

from governor.config.docs import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_the_committed_reference_is_what_the_declarations_generate():
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: run `python -m governor.config.docs > docs/configuration.md`")


def test_the_command_in_the_reference_prints_it():
    out = subprocess.run([sys.executable, "-m", "governor.config.docs"], capture_output=True, text=True,
                         check=True).stdout
    assert out == render()
