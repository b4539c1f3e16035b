"""Every Python block in policies/README.md runs as written (in order, in one namespace), so the
engine's documented calls cannot rot."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "policies" / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_every_python_block_runs_and_decides() -> None:
    blocks = python_blocks(README.read_text())
    assert blocks, "policies/README.md has no python block"
    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    decision = namespace["decision"]
    assert getattr(decision, "allow", None) is True  # the trust may refer to the council for direct care
    assert "True" in out.getvalue().splitlines()[0]
