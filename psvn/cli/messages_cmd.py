"""``psvn send | inbox | status``: use a devnet gateway as one of its members' local systems.

``--as ADDRESS`` picks the member; the command finds that member's gateway URL and example
system certificate in the devnet state folder, and talks to it through the psvn_client SDK.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from psvn.cli.output import print_json
from psvn.core.errors import Code, PsvnError


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from psvn_client import Client

    from psvn import devnet

    layout = devnet.Layout(Path(args.devnet))
    state = devnet.read_state(layout)
    if state is None:
        raise PsvnError(Code.BAD_REQUEST, f"no devnet state in {layout.root}: run `psvn devnet up --detach`",
                        field="--devnet", rule="devnet-running")
    g = state.gateways.get(args.as_)
    if g is None:
        raise PsvnError(Code.UNKNOWN_RECIPIENT, f"--as {args.as_!r} is not a devnet member (one of: "
                        f"{', '.join(state.gateways)})", field="--as", rule="devnet-member")
    cert, key = layout.system_cert(g.org, g.system)
    return Client(g.url, ca=str(layout.ca), cert=str(cert), key=str(key))


def _sdk_errors(func: Any) -> Any:
    """Show SDK errors the way the CLI shows its own: code, field, rule, violations."""

    def run(args: argparse.Namespace) -> int:
        import psvn_client

        try:
            return int(func(args))
        except psvn_client.ConnectionError as exc:  # the member's gateway did not answer at all
            hint = {"tls-failed": "the TLS handshake failed: check the devnet's certificates (psvn certs show)",
                    "timeout": "it did not answer in time"}.get(exc.code, "is its gateway running? "
                                                                  "`psvn devnet status` shows every process")
            raise PsvnError(Code.BAD_REQUEST, f"cannot reach the gateway of {args.as_}: "
                            f"{exc.detail or exc} ({hint})", field="--as", rule=str(exc.code)) from None
        except psvn_client.PsvnError as exc:
            try:
                code = Code(exc.code)
            except ValueError:
                code = Code.INTERNAL
            from psvn.core.errors import Violation

            raise PsvnError(code, exc.detail or str(exc), field=exc.field, rule=exc.rule, message_id=exc.message_id,
                            violations=[Violation(path=v.path, rule=v.rule, message=v.message, expected=v.expected)
                                        for v in exc.violations]) from None

    return run


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--as", dest="as_", required=True, metavar="ADDRESS", help="the member you act as, e.g. ods:RYR")
    p.add_argument("--devnet", default=".devnet", help="devnet state folder (default .devnet)")
    p.add_argument("--json", action="store_true", help="print JSON")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser("send", help="send a message as a member", description="Send FILE (JSON payload, or an "
                       "HL7 v2 message as text) to another member. Prints the message id. Several FILEs, or "
                       "--ndjson, go in batches (POST /v1/messages:batch): one line per message, in order, its id "
                       "or its error; exit 1 if any was refused.")
    _common(s)
    s.add_argument("--to", help="recipient address, e.g. ods:RYR or gss:E06000043/adult-social-care")
    s.add_argument("--type", help="message type from the catalogue, e.g. fhir.r4.ServiceRequest")
    s.add_argument("--purpose", help="purpose / legal basis, e.g. direct-care (required, as for feeds and the "
                   "SDK: the policy decides by it; an --ndjson line may name its own)")
    s.add_argument("--classification", default="OFFICIAL", choices=["OFFICIAL", "OFFICIAL-SENSITIVE"])
    s.add_argument("--subject", help="who the message is about, e.g. nhs:9434765919 (consent checks)")
    s.add_argument("--correlation-id")
    s.add_argument("--idempotency-key", help="with several files, file N is sent with KEY/N")
    s.add_argument("--ndjson", metavar="FILE", help="send every line of FILE ('-' for stdin) as one message: a "
                   "JSON object with the HTTP API's fields (to, type, payload, purpose...); --to, --type, "
                   "--purpose, --classification and --subject fill the fields a line leaves out")
    s.add_argument("files", nargs="*", metavar="FILE", help="payload file(s) ('-' for stdin)")
    s.set_defaults(func=_sdk_errors(_send))

    i = sub.add_parser("inbox", help="list, read and acknowledge received messages")
    isub = i.add_subparsers(title="inbox commands", metavar="ACTION")
    ls = isub.add_parser("list", help="messages delivered and not yet acknowledged")
    _common(ls)
    ls.add_argument("--status", help="filter: delivered (default), acknowledged, quarantined")
    ls.add_argument("--mailbox")
    ls.set_defaults(func=_sdk_errors(_inbox_list))
    g = isub.add_parser("get", help="one message: envelope and payload")
    _common(g)
    g.add_argument("id")
    g.set_defaults(func=_sdk_errors(_inbox_get))
    a = isub.add_parser("ack", help="acknowledge: the sender sees 'acknowledged'")
    _common(a)
    a.add_argument("id")
    a.set_defaults(func=_sdk_errors(_inbox_ack))

    f = sub.add_parser("feed", help="publish to and subscribe to feed topics (pub/sub)",
                       description="Feeds: a member subscribes to a topic for a purpose if the policy's feed "
                       "rules let it; a publisher's event reaches every allowed subscriber's inbox as its own "
                       "sealed, receipted message.")
    fsub = f.add_subparsers(title="feed commands", metavar="ACTION")
    fp = fsub.add_parser("publish", help="publish FILE as one event on TOPIC")
    _common(fp)
    fp.add_argument("topic", help="e.g. sensors.brighton.air")
    fp.add_argument("--type", required=True, help="message type, e.g. cloudevents.air-quality.reading")
    fp.add_argument("--purpose", required=True, help="e.g. environmental-monitoring")
    fp.add_argument("--classification", default="OFFICIAL", choices=["OFFICIAL", "OFFICIAL-SENSITIVE"])
    fp.add_argument("file", help="payload file ('-' for stdin)")
    fp.set_defaults(func=_sdk_errors(_feed_publish))
    fs = fsub.add_parser("subscribe", help="subscribe to TOPIC for a purpose")
    _common(fs)
    fs.add_argument("topic")
    fs.add_argument("--purpose", required=True)
    fs.add_argument("--mailbox", help="deliver into this mailbox (default: the main one)")
    fs.set_defaults(func=_sdk_errors(_feed_subscribe))
    fu = fsub.add_parser("unsubscribe", help="end a subscription")
    _common(fu)
    fu.add_argument("topic")
    fu.set_defaults(func=_sdk_errors(_feed_unsubscribe))
    fl = fsub.add_parser("list", help="this member's subscriptions")
    _common(fl)
    fl.set_defaults(func=_sdk_errors(_feed_list))

    st = sub.add_parser("status", help="where a sent message is: accepted, sent, delivered, acknowledged ...")
    _common(st)
    st.add_argument("id")
    st.add_argument("--wait", metavar="STATUS", choices=("sent", "delivered", "acknowledged"),
                    help="wait until the message reaches STATUS (or a later step): sent, delivered or "
                    "acknowledged; exit 1 if it ends elsewhere (rejected, expired) or --timeout passes")
    st.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="for --wait (default 30)")
    st.set_defaults(func=_sdk_errors(_status))


def _read_text(path: str, flag: str = "FILE") -> str:
    """A payload or NDJSON file's text, or a one-line error naming the file (never a traceback)."""
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    try:
        return p.read_text()
    except FileNotFoundError:
        near = _near(p)
        raise PsvnError(Code.NOT_FOUND, f"{path}: no such file{near}", field=flag, rule="readable-file") from None
    except IsADirectoryError:
        raise PsvnError(Code.BAD_REQUEST, f"{path} is a folder, not a payload file", field=flag,
                        rule="readable-file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PsvnError(Code.BAD_REQUEST, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
                        field=flag, rule="readable-file") from None


def _near(p: Path) -> str:
    """' (did you mean examples/referral.json?)' when a file of a close name sits beside it."""
    import difflib

    folder = p.parent if str(p.parent) else Path(".")
    try:
        names = [c.name for c in folder.iterdir() if c.is_file()]
    except OSError:
        return ""
    close = difflib.get_close_matches(p.name, names, n=1, cutoff=0.75)
    return f" (did you mean {folder / close[0]}?)" if close else ""


def _read_payload(path: str) -> Any:
    text = _read_text(path)
    if path.endswith(".xml"):
        return text  # FHIR XML travels as text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.replace("\r\n", "\r").replace("\n", "\r") if text.startswith("MSH|") else text


def _show(args: argparse.Namespace, value: Any, human: Callable[[Any], None]) -> int:
    """``--json`` prints the SDK's result as JSON; otherwise ``human`` prints it for people."""
    if args.json:
        print_json(_plain(value))
    else:
        human(value)
    return 0


def _send(args: argparse.Namespace) -> int:
    if args.ndjson is not None and args.files:
        raise PsvnError(Code.BAD_REQUEST, "give payload files or --ndjson, not both", field="--ndjson",
                        rule="one-source")
    if args.ndjson is None and not args.files:
        raise PsvnError(Code.BAD_REQUEST, "nothing to send: give a payload FILE (or several), or --ndjson FILE",
                        field="FILE", rule="required")
    if args.ndjson is None:
        for flag, value, example in (("--to", args.to, "ods:RYR"), ("--type", args.type, "fhir.r4.ServiceRequest"),
                                     ("--purpose", args.purpose, "direct-care")):
            if not value:
                raise PsvnError(Code.BAD_REQUEST, f"{flag} is required to send payload files, e.g. {flag} "
                                f"{example} (an --ndjson line may name its own)", field=flag, rule="required")
    if args.ndjson is not None or len(args.files) > 1:
        return _send_batch(args)
    args.file = args.files[0]
    with _client(args) as c:
        kw: dict[str, Any] = {"purpose": args.purpose, "classification": args.classification,
                              "subject": args.subject, "correlation_id": args.correlation_id}
        if args.idempotency_key:
            kw["idempotency_key"] = args.idempotency_key
        if args.file.endswith(".xml"):
            kw["datacontenttype"] = "application/fhir+xml"
        res = c.send(args.to, args.type, _read_payload(args.file), **kw)
    return _show(args, {"id": res.id, "status": res.status}, lambda r: print(r["id"]))


class _Item:
    """One message of a batch send as the CLI reads it: where it came from (file name or
    NDJSON line), and either the request body or why it could not even be read."""

    def __init__(self, label: str, body: dict[str, Any] | None = None, error: PsvnError | None = None) -> None:
        self.label, self.body, self.error = label, body, error


def _file_items(args: argparse.Namespace) -> list[_Item]:
    items: list[_Item] = []
    for n, path in enumerate(args.files):
        try:
            payload = _read_payload(path)
        except PsvnError as exc:
            items.append(_Item(path, error=exc))
            continue
        body: dict[str, Any] = {"to": args.to, "type": args.type, "payload": payload, "purpose": args.purpose,
                                "classification": args.classification}
        for name, value in (("subject", args.subject), ("correlation_id", args.correlation_id),
                            ("idempotency_key", f"{args.idempotency_key}/{n}" if args.idempotency_key else None),
                            ("datacontenttype", "application/fhir+xml" if path.endswith(".xml") else None)):
            if value is not None:
                body[name] = value
        items.append(_Item(path, body))
    return items


def _ndjson_items(args: argparse.Namespace) -> list[_Item]:
    """Each non-blank line one message; a line that is not a JSON object is that line's error."""
    text = _read_text(args.ndjson, "--ndjson")
    defaults = {"to": args.to, "type": args.type, "purpose": args.purpose, "classification": args.classification,
                "subject": args.subject}
    items: list[_Item] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        label = f"line {n}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            items.append(_Item(label, error=PsvnError(Code.MALFORMED_JSON, f"{label} is not JSON: {exc}",
                                                      field=label, rule="json-syntax")))
            continue
        if not isinstance(value, dict):
            items.append(_Item(label, error=PsvnError(Code.INVALID_ENVELOPE, f"{label} is not a JSON object (a "
                                                      "message with to, type, payload, purpose...)", field=label,
                                                      rule="request-schema")))
            continue
        items.append(_Item(label, {**{k: v for k, v in defaults.items() if v is not None}, **value}))
    return items


def _send_batch(args: argparse.Namespace) -> int:
    """Several files or an NDJSON file: sent through ``send_many`` (batches within the gateway's
    limits), reported one line per message in input order, refusals included, never a traceback."""
    import psvn_client

    items = _ndjson_items(args) if args.ndjson is not None else _file_items(args)
    to_send = [i for i in items if i.body is not None]
    with _client(args) as c:
        results = iter(c.send_many([i.body for i in to_send if i.body is not None]))
    rows: list[dict[str, Any]] = []
    failed = 0
    for item in items:
        if item.error is not None:
            problem = item.error.to_problem()
        else:
            res = next(results)
            if res.result is not None:
                rows.append({"id": res.result.id, "status": res.result.status, "duplicate": res.result.duplicate,
                             "idempotency_key": res.idempotency_key, "policy": _plain(res.result.policy),
                             "source": item.label})
                continue
            err: psvn_client.PsvnError | None = res.error
            assert err is not None
            problem = dict(err.problem) or {"code": err.code, "status": err.status, "detail": err.detail or str(err),
                                            "field": err.field, "rule": err.rule, "message_id": err.message_id}
        failed += 1
        rows.append({**problem, "source": item.label})
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            print(_batch_line(row))
    return 1 if failed else 0


def _batch_line(row: dict[str, Any]) -> str:
    """One message's outcome on one line: its id, or its error as the CLI shows errors."""
    if "code" not in row:
        return f"{row['source']}: {row['id']} {row['status']}{' (duplicate)' if row['duplicate'] else ''}"
    where = f" [field {row['field']}]" if row.get("field") else ""
    rule = f" (rule {row['rule']})" if row.get("rule") else ""
    mid = f" message {row['message_id']}" if row.get("message_id") else ""
    line = f"{row['source']}: error {row['code']}{where}{rule}{mid}: {row.get('detail') or ''}"
    violations = row.get("violations") or []
    if violations:
        line += " | " + "; ".join(f"{v.get('path') or '/'}: {v.get('message')} [{v.get('rule')}]" for v in violations)
    return " ".join(line.split())  # one line, whatever the detail held


def _feed_publish(args: argparse.Namespace) -> int:
    with _client(args) as c:
        pub = c.publish(args.topic, args.type, _read_payload(args.file), purpose=args.purpose,
                        classification=args.classification)

    def human(p: Any) -> None:
        # a delivery's status is what the gateway answered (`accepted`: on the backbone, its
        # receipt not yet back); `psvn status --as ... ID` follows it to delivered
        counts: dict[str, int] = {}
        for d in p.deliveries:
            counts[d.status] = counts.get(d.status, 0) + 1
        summary = ", ".join(f"{n} {st}" for st, n in counts.items()) or "0 accepted"
        print(f"event {p.event} on {p.topic}: {summary}, {len(p.refused)} refused")
        for d in p.deliveries:
            print(f"  -> {d.to:<28} {d.id}  {d.status}")
        for r in p.refused:
            print(f"  x  {r.to:<28} {r.code} ({', '.join(r.rule_ids) or r.rule})")

    return _show(args, pub, human)


def _feed_subscribe(args: argparse.Namespace) -> int:
    with _client(args) as c:
        sub = c.subscribe(args.topic, purpose=args.purpose, mailbox=args.mailbox)
    return _show(args, sub, lambda s: print(f"{s.subscriber} subscribed to {s.topic} for {s.purpose}"))


def _feed_unsubscribe(args: argparse.Namespace) -> int:
    with _client(args) as c:
        c.unsubscribe(args.topic)
    return _show(args, {"unsubscribed": args.topic}, lambda r: print(f"unsubscribed from {r['unsubscribed']}"))


def _feed_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        subs = c.subscriptions()

    def human(items: list[Any]) -> None:
        print("\n".join(f"{s.topic:<32} {s.purpose:<28} {s.mailbox or ''}" for s in items) or "(no subscriptions)")

    return _show(args, subs, human)


def _print_inbox(items: list[Any]) -> None:
    if not items:
        print("(no messages)")
    for i in items:
        print(f"{i.id}  {i.time}  from {i.sender:<15} {i.type:<28} {i.status}")


def _print_message(msg: Any) -> None:
    for k, v in _plain(msg.envelope).items():
        if v not in (None, ""):
            print(f"{k}: {v}")
    print()
    payload = msg.payload
    print(payload if isinstance(payload, str) else json.dumps(payload, indent=2))


def _print_status(st: Any) -> None:
    print(f"{st.id}  {st.status}  to {st.to}  {st.type}")
    for h in st.history:
        reason = f"  ({h.reason})" if h.reason else ""
        print(f"  {h.time}  {h.status}{reason}")
    if st.reason:
        print(f"reason: {st.reason}")


def _inbox_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        return _show(args, c.inbox(mailbox=args.mailbox, status=args.status), _print_inbox)


def _inbox_get(args: argparse.Namespace) -> int:
    with _client(args) as c:
        return _show(args, c.get(args.id), _print_message)


def _inbox_ack(args: argparse.Namespace) -> int:
    with _client(args) as c:
        return _show(args, c.ack(args.id), lambda r: print(f"{r.id} {r.status}"))


def _status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.wait:
            return _show(args, c.wait_for_status(args.id, args.wait, timeout=args.timeout), _print_status)
        return _show(args, c.status(args.id), _print_status)


def _plain(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name.rstrip("_"): _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj
