"""Write docs/errors.md from tests/catalogue.py, the list that tests/test_catalogue.py checks message by message.

    python scripts/make_error_catalogue.py
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from catalogue import CASES  # noqa: E402

AREAS = {"recipe": "Recipes", "option": "Command-line options", "data": "Data", "model": "Models",
         "run": "Failures at run time"}


def render() -> str:
    lines = [
        "# Bad-input catalogue",
        "",
        "Every input dpo-cli refuses, with the exact message it prints (after `error: `) and its exit code. Each entry",
        "is a test (`tests/test_catalogue.py`); this page is generated from the same list by",
        "`python scripts/make_error_catalogue.py`. `/tmp/x` stands for wherever your files are; `*` for a part that",
        "depends on your machine.",
    ]
    for area, title in AREAS.items():
        lines += ["", f"## {title}", "", "| input | exit | message |", "|---|---|---|"]
        for case in (c for c in CASES if c.area == area):
            message = case.message.replace("{tmp}", "/tmp/x").replace("|", "\\|")
            # a message that quotes code in backticks needs a longer fence, and spaces inside it
            code = f"`` {message} ``" if "`" in message else f"`{message}`"
            lines.append(f"| {case.what} | {case.exit_code} | {code} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    (REPO / "docs" / "errors.md").write_text(render(), encoding="utf-8")
    print(f"wrote docs/errors.md ({len(CASES)} entries)")
