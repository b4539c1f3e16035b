"""``psvn certs``: the network CA, gateway and system certificates, revocation, inspection."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from psvn.core import addresses

DEFAULT_DIR = Path(".devnet/pki")

_HELP_DIR = "PKI directory holding ca.crt, ca.key and ca.crl (default: %(default)s)"
_HELP_DAYS = "validity in days (default: %(default)s)"
_ISSUE_DAYS = 825


def _dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, metavar="DIR", help=_HELP_DIR)


def _days_arg(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--days", type=int, default=default, help=_HELP_DAYS)


def _host_arg(parser: argparse.ArgumentParser, help_: str) -> None:
    parser.add_argument("--host", action="append", metavar="HOST", help=help_)


def _finish(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int],
            days: int | None = None) -> None:
    """Every command's last options: --days (a validity, where given) and --dir; then its function."""
    if days is not None:
        _days_arg(parser, days)
    _dir_arg(parser)
    parser.set_defaults(func=func)


def _print_cert_key(title: str, cert: Path, key: Path) -> None:
    """The heading and file lines every issuing command prints, aligned the same way."""
    print(title)
    print(f"  certificate  {cert}")
    print(f"  key (0600)   {key}")


def _org(value: str) -> str:
    """The organisation, validated (an error names the field ``org``)."""
    from psvn.certs.ca import check_org

    return check_org(value)


def org_dir(pki_dir: Path, org: str) -> Path:
    """Where a gateway's files live in a PKI directory: DIR/orgs/<token>/."""
    return Path(pki_dir) / "orgs" / addresses.token(org)


def _init(args: argparse.Namespace) -> int:
    from psvn.certs.ca import fingerprint, init_ca

    ca = init_ca(args.dir, common_name=args.cn, days=args.days, force=args.force)
    _print_cert_key(f"CA created in {ca.directory}", ca.cert_path, ca.key_path)
    print(f"  CRL          {ca.crl_path}")
    print(f"  fingerprint  {fingerprint(ca.cert)}")
    print(f"  expires      {ca.cert.not_valid_after_utc:%Y-%m-%d}")
    return 0


def _issue_gateway(args: argparse.Namespace) -> int:
    from psvn.certs.ca import issue_gateway as issue
    from psvn.certs.ca import load_ca

    org = _org(args.org)
    ca = load_ca(args.dir)
    files = issue(ca, org, org_dir(args.dir, org), hosts=args.host or _default_hosts(),
                  days=args.days, post_quantum=args.post_quantum)
    print(f"gateway {org}: {files.directory}")
    for label, path in (
        ("NATS client cert", files.nats_cert), ("NATS client key", files.nats_key),
        ("HTTPS server cert", files.https_cert), ("HTTPS server key", files.https_key),
        ("signing key (Ed25519)", files.sign_key), ("HPKE key (X25519)", files.hpke_key),
        *((("HPKE key (ML-KEM-768 + X25519)", files.hpke_hybrid),) if files.hpke_hybrid else ()),
    ):
        print(f"  {label:<22} {path}")
    return 0


def _default_hosts() -> tuple[str, ...]:
    from psvn.certs.ca import DEFAULT_HOSTS

    return DEFAULT_HOSTS


def _issue_system(args: argparse.Namespace) -> int:
    from psvn.certs.ca import issue_system as issue
    from psvn.certs.ca import load_ca

    org = _org(args.org)
    ca = load_ca(args.dir)
    cert, key = issue(ca, org, args.system, org_dir(args.dir, org) / "systems", days=args.days)
    _print_cert_key(f"system {addresses.system_uri(org, args.system)}", cert, key)
    return 0


def _issue_server(args: argparse.Namespace) -> int:
    from psvn.certs.ca import issue_server as issue
    from psvn.certs.ca import load_ca

    ca = load_ca(args.dir)
    cert, key = issue(ca, args.name, args.dir / "servers", hosts=args.host or _default_hosts(),
                      days=args.days)
    _print_cert_key(f"server {args.name}", cert, key)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from psvn.certs.ca import cert_uris, fingerprint, load_ca, load_cert
    from psvn.certs.revocation import revoke

    ca = load_ca(args.dir)
    cert = load_cert(args.certfile)
    revoke(ca, cert, reason=x509.ReasonFlags(args.reason))
    who = ", ".join(cert_uris(cert)) or cert.subject.rfc4514_string()
    print(f"revoked {who} (serial {cert.serial_number:x}, fingerprint {fingerprint(cert)})")
    print(f"  CRL re-signed: {ca.crl_path}")
    from psvn import devnet
    from psvn.core.addresses import URI_PREFIX

    orgs = [u[len(URI_PREFIX):] for u in cert_uris(cert) if u.startswith(URI_PREFIX)]
    layout = devnet.Layout(Path(args.dir).parent)
    if orgs and Path(args.dir).resolve().name == "pki" and devnet.revoke_backbone_users(layout, orgs[0]):
        print(f"  the running devnet's backbone revoked {orgs[0]}'s users: its live connections are closed; "
              "issue it a new certificate and .creds to let it back in")
    return 0


def _crl(args: argparse.Namespace) -> int:
    from psvn.certs.ca import load_ca
    from psvn.certs.revocation import refresh_crl

    ca = load_ca(args.dir)
    crl = refresh_crl(ca, days=args.days)
    print(f"CRL re-signed: {ca.crl_path}")
    print(f"  revoked certificates  {len(crl)}")
    print(f"  next update           {crl.next_update_utc:%Y-%m-%d %H:%M} UTC")
    return 0


def _describe(cert_path: Path, pki_dir: Path) -> dict[str, Any]:
    from psvn.certs.ca import CA_CRL, cert_uris, fingerprint, load_cert
    from psvn.certs.revocation import is_revoked

    cert = load_cert(cert_path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        eku = [oid._name for oid in usage]
    except x509.ExtensionNotFound:
        eku = []
    revoked: bool | None = None
    if (Path(pki_dir) / CA_CRL).exists():
        revoked = is_revoked(pki_dir, cert)
    now = dt.datetime.now(dt.UTC)
    return {
        "path": str(cert_path),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "uris": cert_uris(cert),
        "dns": dns,
        "ips": ips,
        "extended_key_usage": eku,
        "serial": f"{cert.serial_number:x}",
        "fingerprint_sha256": fingerprint(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "expired": cert.not_valid_after_utc < now,
        "days_left": (cert.not_valid_after_utc - now).days,
        "revoked": revoked,
    }


def _show(args: argparse.Namespace) -> int:
    info = _describe(args.certfile, args.dir)
    if args.json:
        from psvn.cli.output import print_json

        print_json(info)
        return 0
    revoked = {True: "YES", False: "no", None: f"unknown (no CRL in {args.dir})"}[info["revoked"]]
    expiry = "EXPIRED" if info["expired"] else f"{info['days_left']} days left"
    rows = [
        ("subject", info["subject"]),
        ("issuer", info["issuer"]),
        ("SAN URIs", ", ".join(info["uris"]) or "-"),
        ("SAN DNS/IP", ", ".join(info["dns"] + info["ips"]) or "-"),
        ("key usage", ", ".join(info["extended_key_usage"]) or "-"),
        ("serial", info["serial"]),
        ("fingerprint", info["fingerprint_sha256"]),
        ("expires", f"{info['not_after']} ({expiry})"),
        ("revoked", revoked),
    ]
    for label, value in rows:
        print(f"{label:<12} {value}")
    return 0


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A group without a sub-command prints its help and fails (exit 2), like argparse does."""

    def func(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return func


def _commands(
    parser: argparse.ArgumentParser, title: str, metavar: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """A command group: its sub-commands, and its help with exit 2 when none is given."""
    parser.set_defaults(func=_usage(parser))
    return parser.add_subparsers(title=title, metavar=metavar)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    certs = subparsers.add_parser(
        "certs",
        help="the network CA, gateway and system certificates, revocation",
        description="Manage the network's PKI: one CA; per member a gateway's NATS client "
        "certificate (SAN urn:psvn:org:<org>), HTTPS server certificate, Ed25519 signing key and "
        "X25519 HPKE key; per local system a client certificate (SAN "
        "urn:psvn:system:<org>/<system>); and the CA's revocation list.",
        epilog="example:\n  psvn certs init\n  psvn certs issue gateway --org gss:E06000043\n"
        "  psvn certs issue system --org gss:E06000043 --system case-mgmt\n"
        "  psvn certs show .devnet/pki/orgs/gss_E06000043/nats.crt",
        formatter_class=fmt,
    )
    sub = _commands(certs, "certs commands", "COMMAND")

    p = sub.add_parser(
        "init", help="create the network CA",
        description="Create the network CA: DIR/ca.crt, DIR/ca.key (0600) and an empty signed "
        "CRL DIR/ca.crl. Refuses to replace an existing CA unless --force (replacing it "
        "invalidates every certificate it issued).",
    )
    _dir_arg(p)
    p.add_argument("--force", action="store_true", help="replace an existing CA")
    p.add_argument("--cn", default="psvn network CA", help="CA common name (default: %(default)s)")
    _days_arg(p, 3650)
    p.set_defaults(func=_init)

    issue = sub.add_parser(
        "issue", help="issue certificates and keys",
        description="Issue a gateway's, a local system's or a server's certificate.",
    )
    isub = _commands(issue, "what to issue", "KIND")

    p = isub.add_parser(
        "gateway", help="a member gateway's certificates and message keys",
        description="Write DIR/orgs/<token>/: nats.crt/.key (NATS client cert, only SAN "
        "urn:psvn:org:ORG), https.crt/.key (the gateway's HTTPS server cert), sign.key "
        "(Ed25519) and hpke.key (X25519); with --post-quantum also hpke-hybrid.key "
        "(ML-KEM-768 + X25519). Re-issuing replaces the files with fresh keys.",
    )
    p.add_argument("--org", required=True, help="member address, e.g. ods:RYR or gss:E06000043")
    p.add_argument("--post-quantum", action="store_true",
                   help="also issue a hybrid ML-KEM-768 + X25519 HPKE key; register it (gateway "
                   "config hpke_hybrid) and senders seal to this member post-quantum")
    _host_arg(p, "DNS name or IP for the HTTPS cert (repeatable; default localhost, 127.0.0.1, ::1)")
    _finish(p, _issue_gateway, days=_ISSUE_DAYS)

    p = isub.add_parser(
        "system", help="a local system's client certificate",
        description="Write DIR/orgs/<token>/systems/NAME.crt/.key: the client certificate a "
        "local system presents to its own gateway (only SAN urn:psvn:system:ORG/NAME).",
    )
    p.add_argument("--org", required=True, help="member address, e.g. gss:E06000043")
    p.add_argument("--system", required=True, metavar="NAME",
                   help="system name: lower-case letters, digits and '-', e.g. case-mgmt")
    _finish(p, _issue_system, days=_ISSUE_DAYS)

    p = isub.add_parser(
        "server", help="a nats-server (backbone) certificate",
        description="Write DIR/servers/NAME.crt/.key: serverAuth + clientAuth (cluster routes), "
        "DNS/IP SANs from --host.",
    )
    p.add_argument("--name", required=True, help="file name and CN, e.g. nats-1")
    _host_arg(p, "DNS name or IP (repeatable; default localhost, 127.0.0.1, ::1)")
    _finish(p, _issue_server, days=_ISSUE_DAYS)

    reasons = [r.value for r in x509.ReasonFlags if r is not x509.ReasonFlags.remove_from_crl]
    p = sub.add_parser(
        "revoke", help="revoke a certificate (adds it to the CA's CRL)",
        description="Add CERTFILE's serial to DIR/ca.crl and re-sign it. Gateways' HTTPS servers "
        "reload the CRL and refuse the certificate at the handshake. On the backbone (nats-server has "
        "no CRL support) revoking a gateway's certificate revokes every backbone user of that member "
        "in its account JWT, pushed to a running devnet using DIR at once (live connections closed, "
        "no reload). To shut a whole member out, use `psvn devnet revoke ORG`. Idempotent. The CRL is "
        "valid for 7 days; re-running any revoke re-signs it.",
    )
    p.add_argument("certfile", type=Path, metavar="CERTFILE", help="the certificate (PEM)")
    p.add_argument("--reason", default="unspecified", choices=reasons,
                   help="RFC 5280 reason (default: %(default)s)")
    _finish(p, _revoke)

    p = sub.add_parser(
        "crl", help="re-sign the CRL (do this at least weekly)",
        description="Re-sign DIR/ca.crl with the same entries and a new next-update time. TLS "
        "servers that check the CRL refuse every client once it has expired, so run this "
        "(e.g. daily from cron) well before then.",
    )
    p.add_argument("--days", type=int, default=7, help="days until next update (default: 7)")
    _finish(p, _crl)

    p = sub.add_parser(
        "show", help="show a certificate: subject, SAN URIs, fingerprint, expiry, revoked?",
        description="Print a certificate's subject, SANs, SHA-256 fingerprint, expiry and whether "
        "the CA in DIR has revoked it.",
    )
    p.add_argument("certfile", type=Path, metavar="CERTFILE", help="the certificate (PEM or DER)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _finish(p, _show)
