"""``psvn``: run, inspect and use a psvn network from the command line.

Each command group lives in its own module under ``psvn.cli`` and exposes
``register(subparsers)``; a command sets ``func`` (returning an exit code) on its parser.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, NoReturn

from psvn import __version__
from psvn.core.errors import PsvnError

GROUPS = [
    "psvn.cli.devnet_cmd",
    "psvn.cli.messages_cmd",
    "psvn.cli.certs_cmd",
    "psvn.cli.policy_cmd",
    "psvn.cli.validate_cmd",
    "psvn.cli.serve_cmd",
    "psvn.cli.console_cmd",
    "psvn.cli.bench_cmd",
    "psvn.cli.registry_cmd",
]

EPILOG = """\
first steps:
  psvn devnet up --detach          a whole local network: CA, nats-server, registry, policy,
                                   council, NHS trust, GP, operator and citizen-store gateways, console
  psvn send --as gss:E06000043 --to ods:RYR --type fhir.r4.ServiceRequest \\
       --purpose direct-care examples/referral.json
  psvn inbox list --as ods:RYR     what the trust has received (then: inbox get / inbox ack ID)
  psvn status --as gss:E06000043 ID
  psvn feed subscribe --as ods:RYR sensors.brighton.air --purpose environmental-monitoring
  psvn feed publish --as gss:E06000043 sensors.brighton.air --type cloudevents.air-quality.reading \\
       --purpose environmental-monitoring examples/air-quality.json
  psvn validate --type hl7v2.ADT_A01 examples/adt_a01.hl7
  psvn policy explain --devnet .devnet --from ods:RYR --to gss:E06000043 \\
       --type fhir.r4.ServiceRequest --purpose direct-care   (the network's version and registry)
  psvn bench --start               end-to-end throughput against raw nats-py JetStream
  psvn devnet down

Every command answers --help. Errors print the problem code, the field and the rule.
"""


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake on the command line is one line naming the flag (and where the
    usage is), not the whole usage block; exit status 2 as argparse's."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error usage: {self.prog}: {message} (`{self.prog} --help` shows every option)\n")

    def parse_known_args(  # type: ignore[override]
            self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        """A command's own parser names a flag it does not know (and its own --help); argparse
        would hand it up to ``psvn``, whose help does not list the command's options."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None and self.prog != "psvn":
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="psvn",
        description="psvn - the Public Services virtual Network: one encrypted, policy-enforcing "
        "message bus for councils, the NHS and their partners.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"psvn {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in GROUPS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("asyncio").setLevel(logging.ERROR)  # TLS EOF chatter from asyncio's ssl transport
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except PsvnError as exc:
        from psvn.cli.output import print_error

        print_error(exc, as_json=bool(getattr(args, "json", False)))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `psvn inbox get ... | head`
        return 0
    except Exception as exc:  # never a traceback for a user's mistake: one line naming what it can
        return unexpected(exc, args)


def unexpected(exc: BaseException, args: argparse.Namespace) -> int:
    """One line for an error no command turned into a PsvnError: the file an OSError names, the
    address a socket could not bind, else the exception's type and text. ``PSVN_DEBUG=1`` shows
    the traceback as well (for bug reports)."""
    import errno
    import os
    import traceback

    from psvn.cli.output import print_error
    from psvn.core.errors import Code

    if os.environ.get("PSVN_DEBUG"):
        traceback.print_exc()
    if isinstance(exc, OSError) and exc.filename:
        names = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        err = PsvnError(Code.BAD_REQUEST, f"{names}: {exc.strerror or exc}", field=str(exc.filename),
                        rule="file")
    elif isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        err = PsvnError(Code.BAD_REQUEST, f"address already in use: {exc}", rule="port-free")
    else:
        text = " ".join(str(exc).split()) or "(no detail)"
        err = PsvnError(Code.INTERNAL, f"{type(exc).__name__}: {text} (PSVN_DEBUG=1 shows the traceback)",
                        rule="unexpected")
    print_error(err, as_json=bool(getattr(args, "json", False)))
    return 1


if __name__ == "__main__":
    sys.exit(main())
