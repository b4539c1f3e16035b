"""Printing for the CLI: human text by default, JSON with ``--json``."""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from psvn.core.errors import PsvnError


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value)).decode() + "\n")


def print_error(exc: PsvnError, *, as_json: bool = False) -> None:
    """Human text on stderr; with ``--json`` the problem document (RFC 9457) on stdout instead."""
    if as_json:
        print_json(exc.to_problem())
        return
    where = f" [field {exc.field}]" if exc.field else ""
    rule = f" (rule {exc.rule})" if exc.rule else ""
    mid = f" message {exc.message_id}" if exc.message_id else ""
    print(f"error {exc.code.value}{where}{rule}{mid}: {exc.detail}", file=sys.stderr)
    for v in exc.violations:
        exp = f" (expected {v.expected})" if v.expected else ""
        print(f"  - {v.path or '/'}: {v.message} [{v.rule}]{exp}", file=sys.stderr)
