"""Configuration: one TOML file per process, each section a typed class.

A bad or unknown key is reported by its dotted name (``gateway.listen_port: Expected int``),
never as a stack trace, so an operator can fix the file without reading the source.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import tomli_w

from psvn.core.errors import Code, PsvnError

T = TypeVar("T")

_AT = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def _dotted(msg: str) -> tuple[str, str]:
    m = _AT.search(msg)
    if not m:
        return "", msg
    path = m.group("path").replace("[", ".").replace("]", "")
    return path, msg[: m.start()]


def convert(data: dict[str, object], cls: type[T], *, source: str = "config") -> T:
    """Turn a plain mapping into the typed config ``cls``; errors name the bad key."""
    try:
        return msgspec.convert(data, cls, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        path, msg = _dotted(str(exc))
        named = re.search(r"(unknown|missing required) field `([^`]+)`", msg)
        if named:
            path = f"{path}.{named.group(2)}" if path else named.group(2)
            msg = "unknown key" if named.group(1) == "unknown" else "required key missing"
        raise PsvnError(Code.CONFIG_INVALID, f"{source}: {path or '(top level)'}: {msg}",
                        field=path or None, rule="config-schema") from exc


def load(path: Path | str, cls: type[T]) -> T:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise PsvnError(Code.CONFIG_INVALID, f"{p}: no such file", field=str(p), rule="config-file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PsvnError(Code.CONFIG_INVALID, f"{p}: {exc}", rule="toml-syntax") from exc
    return convert(data, cls, source=str(p))


def _dec_hook(type_: type, obj: object) -> object:
    if type_ is Path and isinstance(obj, str):
        return Path(obj)
    raise NotImplementedError


def dump(value: msgspec.Struct) -> str:
    """Render a config Struct back to TOML (devnet writes the files it then loads); a setting
    that is None is left out, as the file would leave it out."""
    builtins = msgspec.to_builtins(value, enc_hook=lambda o: str(o) if isinstance(o, Path) else o)
    return tomli_w.dumps(_without_none(builtins))


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in data.items() if v is not None}
