"""The README's state diagram is generated from the state machine's table; keep them equal."""

from __future__ import annotations

import re
from pathlib import Path

from robotclient.runtime.statemachine import TRANSITIONS, mermaid

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_diagram_is_generated_from_the_table() -> None:
    text = README.read_text()
    match = re.search(r"<!-- state-diagram:start -->\n```mermaid\n(.*?)```\n<!-- state-diagram:end -->", text, re.S)
    assert match, "README lacks the generated state diagram block"
    assert match.group(1) == mermaid().rstrip("\n") + "\n", "run: python -m robotclient.runtime.statemachine"
    for rule in TRANSITIONS:
        for source in rule.sources:
            assert f"{source.value} --> {rule.target.value}: {rule.event.value}" in match.group(1)
