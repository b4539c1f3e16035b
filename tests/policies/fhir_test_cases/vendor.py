"""Regenerate this folder from a clone of ``FHIR/fhir-test-cases`` (Apache-2.0).

    python tests/policies/fhir_test_cases/vendor.py /path/to/fhir-test-cases[.git] [commit]

Takes every case of ``validator/manifest.json`` with ``version`` 4.0 (R4) that needs no profile,
package, supporting file, fetcher or logical model (the base specification only), copies its
input under ``cases/`` and writes ``cases.json``: per case the upstream name, file, module, the
resource type, and the Java reference validator's verdict (``valid``: no issue of severity
error or fatal in its expected outcome) with the texts of its errors. Upstream manifest entries
whose input or outcome file is absent are left out.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXCLUDE = {"supporting", "supporting5", "profiles", "profile", "packages", "logical", "package-map",
           "fetcher", "bundle-param", "ips", "certificate", "matchetype", "use-test", "new-xver-mode",
           "advisor", "sct", "generate-shapshot", "crumb-trail"}
OPTIONS = {"security-checks", "examples", "best-practice", "validateReference", "validateContains",
           "for-publication", "allow-comments", "assumeValidRestReferences", "allowed-extension-domain",
           "noHtmlInMarkdown", "no-experimental-content", "r5-bundle-relative-reference-policy", "tags"}


def main(repo: str, commit: str = "HEAD") -> None:
    git = ["git", f"--git-dir={repo}"] if repo.endswith(".git") or Path(repo, "HEAD").exists() \
        else ["git", "-C", repo]
    sha = subprocess.run([*git, "rev-parse", commit], capture_output=True, check=True, text=True).stdout.strip()

    def show(path: str) -> bytes | None:
        r = subprocess.run([*git, "show", f"{sha}:{path}"], capture_output=True)
        return r.stdout if r.returncode == 0 else None

    manifest = json.loads(show("validator/manifest.json") or b"{}")
    rows: list[dict[str, Any]] = []
    for c in manifest["test-cases"]:
        if c.get("version") != "4.0" or EXCLUDE & c.keys() or "java" not in c:
            continue
        src = show(f"validator/{c['file']}")
        java = c["java"]
        outcome = json.loads(show(f"validator/outcomes/{java}") or b"null") if isinstance(java, str) else None
        if src is None or (outcome is None and not isinstance(java, dict)):
            continue
        if outcome is not None:
            errors = [(i.get("details") or {}).get("text") or i.get("diagnostics") or ""
                      for i in outcome.get("issue", []) if i.get("severity") in ("error", "fatal")]
        else:
            errors = ["(error)"] * int(java.get("errorCount", 0))
        rows.append({"name": c["name"], "file": c["file"], "module": c.get("module", ""),
                     "resourceType": _resource_type(c["file"], src), "valid": not errors,
                     "errors": errors, "options": {k: c[k] for k in sorted(OPTIONS & c.keys())}})
        dest = HERE / "cases" / c["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src)
    (HERE / "cases.json").write_text(json.dumps({"upstream": "https://github.com/FHIR/fhir-test-cases",
                                                 "commit": sha, "cases": rows}, indent=1) + "\n")
    licence = show("LICENSE.txt") or show("LICENSE")
    if licence:
        (HERE / "LICENSE.txt").write_bytes(licence)
    print(f"{len(rows)} cases from {sha}")


def _resource_type(name: str, src: bytes) -> str:
    if name.endswith(".json"):
        try:
            rt = json.loads(src).get("resourceType")
            return rt if isinstance(rt, str) else ""
        except (ValueError, AttributeError):
            return ""
    text = re.sub(rb"<\?.*?\?>|<!--.*?-->", b"", src, flags=re.S)
    m = re.search(rb"<([A-Za-z]+)[\s>/]", text)
    return m.group(1).decode() if m else ""


if __name__ == "__main__":
    main(*sys.argv[1:])
