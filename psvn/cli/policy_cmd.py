"""``psvn policy``: lint, test, explain and diff the network's policy set.

Everything here reads policy folders (or a signed bundle file, unverified, for ``diff``) and calls
the pure functions in policies/lint.py and policies/review.py: no network, no keys. Signing
and publishing with two-person approval are separate commands (``psvn policy sign/publish``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgspec

from psvn.cli.output import print_json
from psvn.core.addresses import MEMBER_TYPES
from psvn.core.errors import Code, PsvnError
from psvn.policies import bundle
from psvn.policies.consent import ConsentChange, ConsentRegistry
from psvn.policies.engine import DecisionRequest
from psvn.policies.lint import LintReport, lint_dir
from psvn.policies.review import (
    DiffReport,
    Explanation,
    SuiteReport,
    diff,
    explain,
    group_changes,
    load_suite,
    run_suite,
)

DEFAULT = str(bundle.DEFAULT_DIR)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "policy", help="lint, test, explain and diff the network's policy set",
        description="Check the network's one policy set before it is signed and published: "
        "lint finds mistakes, test runs the examples kept beside it (tests.toml), explain says "
        "which rules decide a request and why, diff lists the real decisions a change alters.")
    ps = p.add_subparsers(title="policy commands", metavar="COMMAND")
    from psvn.cli.policy_admin_cmd import add_commands

    add_commands(ps)  # propose / approve / publish / reject / proposals / history (two-person rule)

    def usage(_args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)

    lint = ps.add_parser("lint", help="syntax, unknown names, unreachable and conflicting rules",
                         description="Exit status 1 if there are errors (with --strict: warnings).")
    lint.add_argument("dir", nargs="?", default=DEFAULT, metavar="DIR",
                      help="policy folder (default: the built-in default set)")
    lint.add_argument("--strict", action="store_true", help="fail on warnings as well")
    lint.add_argument("--members", metavar="FILE",
                      help="JSON object {address: member type} from the registry, to flag unknown members")
    lint.add_argument("--devnet", metavar="DIR", default=None,
                      help="flag members this devnet's registry does not hold, exactly as the console's lint "
                      "does (e.g. --devnet .devnet; --members FILE for another network)")
    lint.add_argument("--json", action="store_true", help="machine-readable output")
    lint.set_defaults(func=cmd_lint)

    test = ps.add_parser("test", help="run the example decisions in tests.toml",
                         description="Exit status 1 if any example fails.")
    test.add_argument("dir", nargs="?", default=DEFAULT, metavar="DIR")
    test.add_argument("--suite", metavar="FILE", help="another tests.toml (default: DIR/tests.toml)")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing examples too")
    test.add_argument("--json", action="store_true")
    test.set_defaults(func=cmd_test)

    ex = ps.add_parser("explain", help="which rules decide a request, and why (not)",
                       description="Decide one request and show every rule's part: matched or not, and "
                       "why. With --devnet DIR it decides as the network does: on the policy version the "
                       "gateways enforce, each member's type looked up in the registry. Otherwise it decides "
                       "offline on a policy folder DIR (default: the built-in set), and --from-type/--to-type "
                       "say the member types. Exit status 0 whatever the decision.")
    ex.add_argument("dir", nargs="?", default=None, metavar="DIR",
                    help="a policy folder to decide with offline (default: the network's enforced version)")
    ex.add_argument("--devnet", metavar="DIR", default=None,
                    help="decide on the policy version this devnet enforces, member types from its registry "
                    "(e.g. --devnet .devnet)")
    ex.add_argument("--from", dest="sender", required=True, metavar="ADDR",
                    help="sending member, e.g. ods:RYR (for subscribe: the publisher, '' for any)")
    ex.add_argument("--from-type", default="", choices=("", *MEMBER_TYPES), metavar="T",
                    help=f"its member type ({', '.join(MEMBER_TYPES)}); looked up in the registry when "
                    "deciding on a network")
    ex.add_argument("--to", default="", metavar="ADDR",
                    help="recipient member or member/mailbox (for subscribe: the subscriber)")
    ex.add_argument("--to-type", default="", metavar="T", help="its member type (looked up on a network)")
    ex.add_argument("--type", required=True, metavar="TYPE", help="message type, e.g. fhir.r4.ServiceRequest")
    ex.add_argument("--purpose", required=True, metavar="P", help="e.g. direct-care")
    ex.add_argument("--classification", default="OFFICIAL", metavar="C",
                    help="OFFICIAL (default) or OFFICIAL-SENSITIVE")
    ex.add_argument("--subject", metavar="S", help="subject reference, e.g. nhs:9434765919")
    ex.add_argument("--opted-out", metavar="P,P", default="",
                    help="purposes the subject has opted out of ('*' for all), to see consent rules act")
    ex.add_argument("--action", choices=("send", "publish", "subscribe"), default="send")
    ex.add_argument("--topic", metavar="T", help="feed topic for publish/subscribe")
    ex.add_argument("--ttl", type=int, metavar="SECONDS", help="requested time to live")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_explain)

    df = ps.add_parser("diff", help="which real decisions change between two versions",
                       description="Enumerate every decision the two versions can tell apart "
                       "(member types and named members x catalogue types x purposes x "
                       "classifications x consent cases) and list those that change. OLD and NEW "
                       "are policy folders, folded JSON documents or signed bundle files (read, "
                       "not verified).")
    df.add_argument("old", metavar="OLD")
    df.add_argument("new", metavar="NEW")
    df.add_argument("--rules", action="store_true",
                    help="also list decisions whose outcome stays but whose deciding rules change")
    df.add_argument("--limit", type=int, default=40, metavar="N", help="groups to print (default 40)")
    df.add_argument("--exit-code", action="store_true", help="exit 1 if any decision changes")
    df.add_argument("--json", action="store_true", help="every change, not grouped")
    df.set_defaults(func=cmd_diff)


# --- lint -------------------------------------------------------------------------------------


def cmd_lint(args: argparse.Namespace) -> int:
    members = None
    if args.members:
        members = _read_json(Path(args.members))
        if not isinstance(members, dict):
            raise PsvnError(Code.BAD_REQUEST, f"{args.members}: expected a JSON object "
                            "{address: member type}", field="--members")
    source = ""
    if args.devnet is not None:
        if members is not None:
            raise PsvnError(Code.BAD_REQUEST, "give --members FILE or --devnet DIR, not both", field="--devnet",
                            rule="one-source")
        from psvn import devnet

        layout = devnet.Layout(Path(args.devnet))
        members = devnet.registry_member_types(layout)
        source = f" (members checked against the registry of the devnet under {layout.root})"
    report = lint_dir(_folder(args.dir), members=members)
    failed = bool(report.errors) or (args.strict and bool(report.warnings))
    if args.json:
        print_json({"ok": not failed, "counts": report.counts(), "findings": report.findings})
    else:
        print(format_lint(report, args.dir) + source)
    return 1 if failed else 0


def format_lint(report: LintReport, where: str) -> str:
    lines = []
    for f in report.findings:
        loc = f.where() or where
        rid = f" [{f.rule_id}]" if f.rule_id else ""
        lines.append(f"{loc}: {f.severity} {f.kind}{rid}: {f.message}")
    c = report.counts()
    lines.append(f"{c['error']} error(s), {c['warning']} warning(s), {c['info']} note(s)")
    return "\n".join(lines)


# --- test -------------------------------------------------------------------------------------


def cmd_test(args: argparse.Namespace) -> int:
    folder = _folder(args.dir)
    doc = bundle.load_dir(folder)
    cases = load_suite(args.suite or folder)
    report = run_suite(doc, cases)
    if args.json:
        print_json(report)
    else:
        print(format_suite(report, verbose=args.verbose))
    return 0 if report.ok else 1


def format_suite(report: SuiteReport, *, verbose: bool = False) -> str:
    lines = []
    for r in report.results:
        if r.passed and not verbose:
            continue
        lines.append(f"{'PASS' if r.passed else 'FAIL'}  {r.name}")
        for problem in r.problems:
            lines.append(f"      {problem}")
    if report.uncovered:
        lines.append(f"rules no example exercises: {', '.join(report.uncovered)}")
    lines.append(f"{report.passed} passed, {report.failed} failed "
                 f"(policy version {report.policy_version})")
    return "\n".join(lines)


# --- explain ----------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    doc, from_type, to_type, source = _explain_basis(args)
    recipient, _, mailbox = args.to.partition("/")
    req = DecisionRequest(
        action=args.action, sender=args.sender, sender_type=from_type, recipient=recipient,
        recipient_type=to_type, mailbox=mailbox or None, type=args.type, purpose=args.purpose,
        classification=args.classification, subject=args.subject, topic=args.topic,
        ttl_seconds=args.ttl)
    registry = None
    opted = [p.strip() for p in args.opted_out.split(",") if p.strip()]
    if opted:
        if not args.subject:
            raise PsvnError(Code.BAD_REQUEST, "--opted-out needs --subject", field="--opted-out")
        registry = ConsentRegistry()
        registry.apply(ConsentChange(subject=args.subject, seq=1, opt_outs=opted,
                                     effective="2000-01-01T00:00:00Z", issuer="(explain)"))
    result = explain(doc, req, consent=registry)
    if args.json:
        print_json(result)
    else:
        print(format_explanation(result))
        print(f"\ndecided on {source}")
    return 0


def _explain_basis(args: argparse.Namespace) -> tuple[dict[str, Any], str, str, str]:
    """The document and the two member types to decide with, and a line saying where they came from.

    On a network (``--devnet DIR``): the version the gateways enforce and the registry's types, as
    a gateway decides. Offline (a folder, by default the built-in set): the folder, and the types
    the user gives. Never chosen by what happens to run in the current folder."""
    from psvn import devnet

    recipient = args.to.partition("/")[0]
    use_net = args.devnet is not None
    if args.devnet is not None and args.dir is not None:
        raise PsvnError(Code.BAD_REQUEST, "give a policy folder DIR or --devnet, not both", field="--devnet",
                        rule="one-source")
    if use_net:
        layout = devnet.Layout(Path(args.devnet))
        orgs = [a for a in dict.fromkeys((args.sender, recipient)) if a]
        doc, types = devnet.enforced_policy_and_types(layout, orgs)
        found = {"--from-type": (args.from_type, types.get(args.sender, "")),
                 "--to-type": (args.to_type, types.get(recipient, ""))}
        for flag, (given, registered) in found.items():
            if given and registered and given != registered:
                raise PsvnError(Code.BAD_REQUEST, f"{flag} {given}: the registry records "
                                f"{args.sender if flag == '--from-type' else recipient} as {registered} (leave "
                                f"{flag} out on a network)", field=flag, rule="registry-member-type")
        source = (f"policy version {doc.get('version')} enforced by the devnet under {layout.root}, member "
                  f"types from its registry ({', '.join(f'{o} {t}' for o, t in types.items()) or 'none'})")
        return doc, found["--from-type"][1] or args.from_type, found["--to-type"][1] or args.to_type, source
    folder = args.dir or DEFAULT
    doc = bundle.load_dir(_folder(folder))
    if args.sender and not args.from_type:
        raise PsvnError(Code.BAD_REQUEST, f"--from-type is required offline (deciding on the folder {folder}): "
                        f"the member type of {args.sender}, one of {', '.join(MEMBER_TYPES)}; or explain on "
                        "a running network with --devnet DIR, which looks it up", field="--from-type",
                        rule="required")
    if recipient and not args.to_type:
        raise PsvnError(Code.BAD_REQUEST, f"--to-type is required offline (deciding on the folder {folder}): "
                        f"the member type of {recipient}; or use --devnet DIR", field="--to-type", rule="required")
    source = f"policy version {doc.get('version')} from the folder {folder} (offline: not necessarily what " \
             "the network enforces)"
    return doc, args.from_type, args.to_type, source


def format_explanation(e: Explanation) -> str:
    d = e.decision
    verdict = "ALLOW" if d.allow else "DENY"
    lines = [f"{verdict} by {', '.join(d.rule_ids)} (stage {d.stage}, policy version {d.policy_version})",
             f"  {d.reason}"]
    if d.supporting_rule_ids:
        lines.append(f"  relying on: {', '.join(d.supporting_rule_ids)}")
    if d.retention_days is not None:
        ttl = f", time to live at most {d.max_ttl_seconds} s" if d.max_ttl_seconds else ""
        lines.append(f"  kept {d.retention_days} days{ttl}")
    lines.append("")
    lines.append("rules, stage by stage ('=>' decided, '+' matched, '-' did not match):")
    stage = None
    deciding = set(d.rule_ids) | set(d.supporting_rule_ids)
    width = max((len(s.rule_id) for s in e.steps), default=10)
    for s in e.steps:
        if s.stage != stage:
            stage = s.stage
            lines.append(f"  {stage}")
        mark = "=>" if s.rule_id in deciding else ("+ " if s.matched else "- ")
        lines.append(f"    {mark} {s.rule_id.ljust(width)}  {s.why}")
    return "\n".join(lines)


# --- diff -------------------------------------------------------------------------------------


def cmd_diff(args: argparse.Namespace) -> int:
    old, new = load_document(args.old), load_document(args.new)
    report = diff(old, new, rule_changes=args.rules)
    if args.json:
        print_json(report)
    else:
        print(format_diff(report, limit=args.limit))
    return 1 if args.exit_code and report.changes else 0


def format_diff(report: DiffReport, *, limit: int = 40) -> str:
    c = report.counts
    lines = [f"policy version {report.old_version} -> {report.new_version}: "
             f"{report.compared} decisions compared; {c['now-denied']} now denied, "
             f"{c['now-allowed']} now allowed, {c['rules-changed']} decided by other rules"]
    groups = group_changes(report.changes)
    for g in groups[:limit]:
        head = {"now-denied": "NOW DENIED ", "now-allowed": "NOW ALLOWED", "rules-changed": "RULES      "}[g.kind]
        where = f" on {g.topic}" if g.topic else ""
        lines.append(f"{head} {g.action} {g.from_type} -> {g.to or '(feed)'}{where}, {g.type}, "
                     f"{g.purpose}, {g.classification}  x{g.count}")
        lines.append(f"            was {_outcome(g.example.old)}; now {_outcome(g.example.new)}")
    if len(groups) > limit:
        lines.append(f"... and {len(groups) - limit} more group(s) (--limit, or --json for all)")
    if not report.changes:
        lines.append("no decision changes")
    return "\n".join(lines)


def _outcome(o: Any) -> str:
    return f"{'allow' if o.allow else 'deny'} by {', '.join(o.rule_ids)}"


# --- loading ----------------------------------------------------------------------------------


def _folder(path: str) -> Path:
    p = Path(path)
    if not (p / "policyset.toml").is_file():
        raise PsvnError(Code.NOT_FOUND, f"{path}: not a policy folder (no policyset.toml)",
                        field="DIR", rule="policy-folder")
    return p


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PsvnError(Code.BAD_REQUEST, f"{path}: {exc}", field=str(path)) from exc


def load_document(path: str) -> dict[str, Any]:
    """A policy folder, a folded JSON document, or a signed bundle file (not verified here)."""
    p = Path(path)
    if p.is_dir():
        return bundle.load_dir(_folder(path))
    if not p.is_file():
        raise PsvnError(Code.NOT_FOUND, f"{path}: no such policy folder or file", field=path)
    data = p.read_bytes()
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError:
        try:
            doc = msgspec.json.decode(bundle.decode(data).document)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise PsvnError(Code.BAD_REQUEST, f"{path}: neither a JSON policy document nor a "
                            f"signed policy bundle ({exc})", field=path) from exc
    if not isinstance(doc, dict) or "rules" not in doc:
        raise PsvnError(Code.BAD_REQUEST, f"{path}: not a policy document (no rules)", field=path)
    return doc
