"""Every code block in the root README.md runs as written against a fresh devnet.

The blocks are extracted from the README and run in order, as a reader types them into one
terminal at the top of a fresh clone: shell blocks with bash (``set -e``: any failing command
fails the block), Python blocks with the project's interpreter, each in a fresh folder that holds
the repository's files (linked) and no ``.devnet``. Once a block has run ``source
.venv/bin/activate``, later blocks see the venv on PATH, as that terminal would. The only thing the
test sets is ``PSVN_BASE_PORT`` (free ports on a shared machine; `make devnet` and `psvn devnet up`
honour it, documented in the README).

A block that is deliberately not runnable carries ``<!-- not-run: REASON -->`` on the line
before it; :data:`NOT_RUN` names every such block (by its first line) so that marking another
one is a visible change to this test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARK = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.+?)\s*-->$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
RUNNABLE = {"sh": "shell", "bash": "shell", "console": "shell", "python": "python", "py": "python"}

# every block marked not-run, by its first line: adding one here is a deliberate act
NOT_RUN = {
    "make test       # install what the tests need and run the whole suite",
    "error policy-denied (rule ...) message 8dde6669-...: egress: no rule permits a council to send ...",
    "psvn bench --start        # one command: a temporary devnet on free ports, measured, torn down (~25 s)",
    "psvn devnet up --cluster 3 --detach   # three nats-servers, every stream and bucket R3",
    "psvn/       core/ (errors, addresses, config), protocol/ (envelope, message states, subjects, seal,",
}


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    not_run: str | None  # the reason, if marked

    @property
    def first(self) -> str:
        return self.text.splitlines()[0] if self.text else ""

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang or 'no language'}) {self.first[:60]!r}"


def blocks(text: str) -> list[Block]:
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mark = MARK.match(prev)
        out.append(Block(line=start + 1, lang=m.group("lang"), text="\n".join(lines[start + 1:j]),
                         not_run=mark.group("reason") if mark else None))
        i = j + 1
    return out


def test_every_block_is_runnable_or_marked_with_a_reason() -> None:
    found = blocks(README.read_text())
    assert len(found) >= 8
    marked = [b for b in found if b.not_run is not None]
    unmarked_unknown = [str(b) for b in found if b.not_run is None and b.lang not in RUNNABLE]
    assert not unmarked_unknown, f"blocks neither runnable (sh/python) nor marked not-run: {unmarked_unknown}"
    assert {b.first for b in marked} == NOT_RUN, "\n".join(f"{b}: {b.not_run}" for b in marked)
    for b in marked:  # counted and named in the test's output (pytest -rA shows it)
        print(f"not run: {b}: {b.not_run}")
    print(f"{len(found) - len(marked)} blocks run, {len(marked)} marked not-run")


def test_blocks_are_found_and_marks_are_read() -> None:
    sample = "x\n```sh\necho hi\n```\n<!-- not-run: an example -->\n\n```\nout\n```\n"
    got = blocks(sample)
    assert [(b.line, b.lang, b.text, b.not_run) for b in got] == [(2, "sh", "echo hi", None),
                                                                 (7, "", "out", "an example")]


def fresh_clone(tmp: Path) -> Path:
    """A folder that looks like a fresh clone after install: the repository's files linked in, the
    project's venv as .venv, no .devnet."""
    work = tmp / "clone"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name in {".devnet", ".venv", ".git"} or entry.name.startswith(".pytest"):
            continue
        (work / entry.name).symlink_to(entry)
    # the project's venv, its parts linked into a .venv of the clone's own, whose install stamp says
    # "installed": `make devnet` must not reinstall from this linked folder (an editable install
    # pointing here), and nothing in the real venv is touched
    venv = Path(sys.prefix)
    (work / ".venv").mkdir()
    for entry in venv.iterdir():
        if not entry.name.startswith(".installed"):
            (work / ".venv" / entry.name).symlink_to(entry)
    (work / ".venv" / ".installed").touch()
    return work


def test_readme_blocks_run_as_written(tmp_path: Path) -> None:
    from psvn.bench import free_port_range

    # `make test` runs the suite from the project's venv: the README's commands must exist there
    assert (Path(sys.prefix) / "bin" / "psvn").exists(), "run the tests from the project's venv (make test)"
    work = fresh_clone(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PSVN_DEBUG"}}
    env["PSVN_BASE_PORT"] = str(free_port_range())
    env.pop("PYTHONPATH", None)
    runnable = [b for b in blocks(README.read_text()) if b.not_run is None]
    activated = False
    try:
        for b in runnable:
            if RUNNABLE[b.lang] == "shell":
                argv = ["bash", "-e", "-o", "pipefail", "-c", b.text]
            else:
                argv = [str(work / ".venv" / "bin" / "python"), "-c", b.text]
            run_env = dict(env)
            if activated:
                run_env["VIRTUAL_ENV"] = str(work / ".venv")
                run_env["PATH"] = f"{work / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
            res = subprocess.run(argv, cwd=work, env=run_env, capture_output=True, text=True, timeout=180)
            assert res.returncode == 0, f"{b} failed ({res.returncode}):\n{b.text}\n--- stdout\n" \
                                        f"{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"
            assert "Traceback" not in res.stderr, f"{b}:\n{res.stderr[-3000:]}"
            activated = activated or "source .venv/bin/activate" in b.text
    finally:
        subprocess.run([str(work / ".venv" / "bin" / "psvn"), "devnet", "--dir", str(work / ".devnet"), "down"],
                       cwd=work, env=env, capture_output=True, timeout=60)
