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
from psvn.errors import Code, PsvnError


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
        except psvn_client.PsvnError as exc:
            try:
                code = Code(exc.code)
            except ValueError:
                code = Code.INTERNAL
            from psvn.errors import Violation

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
                       "HL7 v2 message as text) to another member. Prints the message id.")
    _common(s)
    s.add_argument("--to", required=True, help="recipient address, e.g. ods:RYR or gss:E06000043/adult-social-care")
    s.add_argument("--type", required=True, help="message type from the catalogue, e.g. fhir.r4.ServiceRequest")
    s.add_argument("--purpose", default="direct-care", help="purpose / legal basis (default direct-care)")
    s.add_argument("--classification", default="OFFICIAL", choices=["OFFICIAL", "OFFICIAL-SENSITIVE"])
    s.add_argument("--subject", help="who the message is about, e.g. nhs:9434765919 (consent checks)")
    s.add_argument("--correlation-id")
    s.add_argument("--idempotency-key")
    s.add_argument("file", help="payload file ('-' for stdin)")
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
    st.set_defaults(func=_sdk_errors(_status))


def _read_payload(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
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
    with _client(args) as c:
        kw: dict[str, Any] = {"purpose": args.purpose, "classification": args.classification,
                              "subject": args.subject, "correlation_id": args.correlation_id}
        if args.idempotency_key:
            kw["idempotency_key"] = args.idempotency_key
        if args.file.endswith(".xml"):
            kw["datacontenttype"] = "application/fhir+xml"
        res = c.send(args.to, args.type, _read_payload(args.file), **kw)
    return _show(args, {"id": res.id, "status": res.status}, lambda r: print(r["id"]))


def _feed_publish(args: argparse.Namespace) -> int:
    with _client(args) as c:
        pub = c.publish(args.topic, args.type, _read_payload(args.file), purpose=args.purpose,
                        classification=args.classification)

    def human(p: Any) -> None:
        print(f"event {p.event} on {p.topic}: {len(p.deliveries)} delivered, {len(p.refused)} refused")
        for d in p.deliveries:
            print(f"  -> {d.to:<28} {d.id}")
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
