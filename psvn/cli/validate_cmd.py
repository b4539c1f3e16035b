"""``psvn validate`` and ``psvn catalogue``: the gateway's payload validation, offline.

Same policy set, same code, same messages as the gateway's ``invalid-payload`` problem, so an
integrator can fix a message before it ever reaches the network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from psvn.cli.output import print_error, print_json
from psvn.core.errors import Code, PsvnError
from psvn.policies import bundle
from psvn.policies.catalogue import Catalogue
from psvn.policies.validation import XML_TYPES, PayloadValidator, invalid_payload_error, media_type


def _document(args: argparse.Namespace) -> dict[str, Any]:
    """The policy set to validate against: a folder (default: the built-in one), or with
    ``--devnet`` the version the running network enforces, so the answer is the gateway's."""
    if getattr(args, "devnet", None):
        from psvn import devnet

        return devnet.enforced_policy(devnet.Layout(Path(args.devnet)))
    return bundle.load_dir(args.policy or bundle.DEFAULT_DIR)


def _load(args: argparse.Namespace) -> tuple[Catalogue, dict[str, Any], int]:
    doc = _document(args)
    return Catalogue.from_document(doc), doc.get("schemas", {}), int(doc.get("version", 0))


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PsvnError(Code.BAD_REQUEST, f"cannot read {path}: {exc.strerror}", field="FILE",
                        rule="file-readable") from exc


def _content_type(args: argparse.Namespace) -> str | None:
    """``--content-type`` if given, else FHIR XML for a ``.xml`` file (what the gateway's
    ``Content-Type`` header says on the wire), else the type's own format."""
    if args.content_type:
        return str(args.content_type)
    if args.file != "-" and Path(args.file).suffix.lower() == ".xml":
        return "application/fhir+xml"
    return None


def cmd_validate(args: argparse.Namespace) -> int:
    catalogue, schemas, version = _load(args)
    validator = PayloadValidator(catalogue, schemas)
    entry = catalogue.get(args.type)
    body = _read(args.file)
    content_type = _content_type(args)
    violations = validator.validate(args.type, body, content_type=content_type)
    if not violations:
        as_xml = media_type(content_type) in XML_TYPES
        if args.json:
            result = {"valid": True, "type": args.type, "standard": entry.standard, "file": args.file,
                      "policy_version": version}
            if as_xml:
                result["content_type"] = media_type(content_type)
            print_json(result)
        else:
            print(f"valid: {args.file} conforms to {entry.standard} for {args.type}"
                  + (" (FHIR XML)" if as_xml else ""))
        return 0
    err = invalid_payload_error(entry, violations)
    if args.json:
        print_json(err.to_problem(instance=args.file))
    else:
        print_error(err)
    return 1


def cmd_catalogue_list(args: argparse.Namespace) -> int:
    catalogue, _, _ = _load(args)
    entries = sorted(catalogue, key=lambda e: e.type)
    if args.json:
        print_json([e.summary() for e in entries])
        return 0
    rows = [("TYPE", "STANDARD", "VERSION", "VALIDATOR", "OWNER")]
    rows += [(e.type, e.standard, e.version, e.validator, e.owner) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    return 0


def cmd_catalogue_show(args: argparse.Namespace) -> int:
    catalogue, _, _ = _load(args)
    summary = catalogue.get(args.type).summary()
    if args.json:
        print_json(summary)
        return 0
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            print(f"{key.ljust(width)}  ")
            for item in value:
                print("  - " + ", ".join(f"{k}={v}" for k, v in item.items()))
        elif isinstance(value, dict):
            print(f"{key.ljust(width)}  ")
            for k, v in value.items():
                print(f"  {k} -> {v}")
        elif isinstance(value, list):
            print(f"{key.ljust(width)}  {', '.join(map(str, value))}")
        else:
            print(f"{key.ljust(width)}  {value}")
    return 0


def register(subparsers: Any) -> None:
    policy_help = "policy-set folder (default: the built-in policies/default)"
    devnet_help = "use the policy version the running devnet in DIR enforces (e.g. .devnet)"
    v = subparsers.add_parser(
        "validate", help="validate a payload offline against its catalogue type's standard",
        description="Validate FILE as the payload of a message of catalogue type TYPE, with the "
        "gateway's own validators and messages. Exit 0 when valid, 1 with every violation when not.",
        epilog="examples: psvn validate --type fhir.r4.ServiceRequest examples/referral.json\n"
        "          psvn validate --type fhir.r4.Patient examples/patient.xml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("--type", required=True, help="catalogue type, e.g. fhir.r4.ServiceRequest or hl7v2.ADT_A01")
    v.add_argument("file", metavar="FILE", help="payload file (JSON, FHIR XML, or HL7 v2 ER7 text); - for stdin")
    v.add_argument("--content-type", metavar="MEDIA_TYPE",
                   help="how to read FILE, as the gateway reads a Content-Type header: application/fhir+xml "
                   "(or application/xml, text/xml) for FHIR XML; default: FHIR XML for a .xml file, "
                   "else the type's own format")
    v.add_argument("--json", action="store_true", help="print the RFC 9457 problem document (or a result)")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--policy", metavar="DIR", help=policy_help)
    src.add_argument("--devnet", metavar="DIR", help=devnet_help)
    v.set_defaults(func=cmd_validate)

    c = subparsers.add_parser("catalogue", help="list or show the network's message types",
                              description="The message catalogue: each type's open standard, "
                              "version, profile, validator, owner and limits.")
    csub = c.add_subparsers(title="catalogue commands", metavar="COMMAND")
    ls = csub.add_parser("list", help="every message type")
    ls.add_argument("--json", action="store_true", help="JSON output")
    src = ls.add_mutually_exclusive_group()
    src.add_argument("--policy", metavar="DIR", help=policy_help)
    src.add_argument("--devnet", metavar="DIR", help=devnet_help)
    ls.set_defaults(func=cmd_catalogue_list)
    show = csub.add_parser("show", help="one message type in full")
    show.add_argument("type", metavar="TYPE")
    show.add_argument("--json", action="store_true", help="JSON output")
    src = show.add_mutually_exclusive_group()
    src.add_argument("--policy", metavar="DIR", help=policy_help)
    src.add_argument("--devnet", metavar="DIR", help=devnet_help)
    show.set_defaults(func=cmd_catalogue_show)
    c.set_defaults(func=lambda _args: (c.print_help(), 2)[1])
