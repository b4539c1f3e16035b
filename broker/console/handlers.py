"""The console's JSON API: authenticate, check the role, call storage, answer JSON or a problem.

Every API call carries ``Authorization: Bearer <token>`` (no cookies), so another site cannot
make a logged-in browser call it (no CSRF); POST bodies must be JSON. Roles:

- ``compliance-officer``: edit, lint, test, simulate, propose; withdraw their own proposal;
- ``approver``: review (lint, test, simulate, diff), approve, publish, reject;
- ``operator``: read the overview, proposals and history.

The two-person rule is enforced in broker/policy_admin.py on user names, not here on roles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from aiohttp import web

from psvn.broker import policy_admin
from psvn.broker.auth import Principal, TokenAuthority
from psvn.broker.console.storage import ConsoleStore
from psvn.core.errors import Code, PsvnError
from psvn.policies import review

log = structlog.get_logger("psvn.broker.console")

STORE: web.AppKey[ConsoleStore] = web.AppKey("store", ConsoleStore)
TOKENS: web.AppKey[TokenAuthority] = web.AppKey("tokens", TokenAuthority)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
EDITORS = ("compliance-officer", "approver")
ANYONE = ("compliance-officer", "approver", "operator")
DIFF_GROUPS = 60  # change groups the simulation returns (the counts cover all)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(status=status, content_type="application/json", body=msgspec.json.encode(data))


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def requires(*roles: str) -> Callable[[Handler], Handler]:
    """Verify the bearer token and that its role is one of ``roles`` (401 / 403 otherwise)."""

    def wrap(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise PsvnError(Code.UNAUTHENTICATED, "sign in: send Authorization: Bearer <console token> "
                                "(psvn console token --user NAME --role ROLE)", field="Authorization",
                                rule="token-required")
            who = request.app[TOKENS].verify(token.strip())
            if who.role not in roles:
                raise PsvnError(Code.FORBIDDEN, f"{who.user} signed in as {who.role}; this needs "
                                f"{' or '.join(roles)}", field="role", rule="console-role")
            request[PRINCIPAL] = who
            return await handler(request)

        checked.__name__ = handler.__name__
        checked.__doc__ = handler.__doc__
        return checked

    return wrap


async def body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise PsvnError(Code.BAD_REQUEST, "send a JSON body (Content-Type: application/json)",
                        field="Content-Type", rule="json-body")
    try:
        data = msgspec.json.decode(await request.read())
    except msgspec.DecodeError as exc:
        raise PsvnError(Code.MALFORMED_JSON, f"request body: {exc}", field="body", rule="json") from exc
    if not isinstance(data, dict):
        raise PsvnError(Code.BAD_REQUEST, "the body must be a JSON object", field="body", rule="json-body")
    return data


def text_field(data: dict[str, Any], name: str, *, required: bool = True, limit: int = 512 * 1024) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise PsvnError(Code.BAD_REQUEST, f"{name} must be a string", field=name, rule="field-type")
    if len(value) > limit:
        raise PsvnError(Code.BAD_REQUEST, f"{name} is longer than {limit} characters", field=name,
                        rule="field-size")
    return value


def _lint_json(report: Any) -> dict[str, Any]:
    return {"ok": report.ok, "counts": report.counts(), "findings": report.findings}


async def _draft(store: ConsoleStore, rules_text: str) -> tuple[policy_admin.Current, dict[str, Any] | None, Any]:
    """The edited text as the next version of what is published, and its lint report."""
    cur = await store.current()
    doc, report = await asyncio.to_thread(policy_admin.lint_text, cur.document, rules_text,
                                          version=cur.signed.version + 1, members=store.member_types())
    return cur, doc, report


def _lint_failed(report: Any) -> PsvnError:
    err = policy_admin.lint_error(report)
    err.detail = "the rules do not lint: " + err.detail.partition(": ")[2]
    return err


# -- views ------------------------------------------------------------------------------------


@requires(*ANYONE)
async def whoami(request: web.Request) -> web.Response:
    return json_response(principal(request))


@requires(*ANYONE)
async def current_policy(request: web.Request) -> web.Response:
    """The published version and the text the editor starts from."""
    return json_response(await request.app[STORE].editor_source())


@requires(*EDITORS)
async def lint(request: web.Request) -> web.Response:
    data = await body(request)
    rules_text = text_field(data, "rules_text")
    assert rules_text is not None
    cur, _, report = await _draft(request.app[STORE], rules_text)
    return json_response({**_lint_json(report), "version": cur.signed.version + 1})


def _suite(store: ConsoleStore, tests_text: str | None) -> list[review.Case]:
    if tests_text is not None:
        return policy_admin.parse_tests_text(tests_text)
    if store.admin.suite is None:
        raise PsvnError(Code.NOT_FOUND, "no example suite: send tests_text", field="tests_text",
                        rule="suite-missing")
    return store.admin.suite


@requires(*EDITORS)
async def run_tests(request: web.Request) -> web.Response:
    data = await body(request)
    rules_text = text_field(data, "rules_text")
    tests_text = text_field(data, "tests_text", required=False)
    assert rules_text is not None
    store = request.app[STORE]
    _, doc, report = await _draft(store, rules_text)
    if doc is None or report.errors:
        raise _lint_failed(report)
    cases = _suite(store, tests_text)
    suite = await asyncio.to_thread(review.run_suite, doc, cases)
    return json_response({"ok": suite.ok, "passed": suite.passed, "failed": suite.failed,
                          "policy_version": suite.policy_version, "uncovered": suite.uncovered,
                          "results": [{"name": r.name, "passed": r.passed, "expected": r.expected,
                                       "problems": r.problems, "allow": r.decision.allow,
                                       "rule_ids": r.decision.rule_ids, "reason": r.decision.reason}
                                      for r in suite.results]})


async def _simulate(store: ConsoleStore, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    events = await store.recent_audit()

    def work() -> dict[str, Any]:
        report = review.diff(old, new)
        groups = review.group_changes(report.changes)
        traffic = policy_admin.replay(old, new, events, store.member_types())
        return {"old_version": report.old_version, "new_version": report.new_version,
                "diff": {"compared": report.compared, "counts": report.counts, "groups": groups[:DIFF_GROUPS],
                         "group_count": len(groups)},
                "traffic": traffic}

    return await asyncio.to_thread(work)


@requires(*EDITORS)
async def simulate(request: web.Request) -> web.Response:
    """What would change: every decision the two versions tell apart, and recent real traffic."""
    data = await body(request)
    rules_text = text_field(data, "rules_text")
    assert rules_text is not None
    store = request.app[STORE]
    cur, doc, report = await _draft(store, rules_text)
    if doc is None or report.errors:
        raise _lint_failed(report)
    return json_response(await _simulate(store, cur.document, doc))


@requires(*ANYONE)
async def list_proposals(request: web.Request) -> web.Response:
    status = request.query.get("status")
    items = await request.app[STORE].admin.proposals(status=status)
    return json_response({"proposals": [p.summary() for p in items]})


@requires("compliance-officer")
async def create_proposal(request: web.Request) -> web.Response:
    data = await body(request)
    rules_text = text_field(data, "rules_text")
    tests_text = text_field(data, "tests_text", required=False)
    note = text_field(data, "note", required=False, limit=2000) or ""
    assert rules_text is not None
    store = request.app[STORE]
    _, doc, report = await _draft(store, rules_text)
    if doc is None:
        raise _lint_failed(report)
    p = await store.admin.propose(doc, principal(request).user, rules_text=rules_text, tests_text=tests_text,
                                  note=note)
    return json_response(p.summary(), status=201)


@requires(*ANYONE)
async def get_proposal(request: web.Request) -> web.Response:
    store = request.app[STORE]
    p = await store.admin.get(request.match_info["id"])
    return json_response({**p.summary(), "rules_text": p.rules_text, "tests_text": p.tests_text,
                          "rules_diff": await store.rules_diff(p)})


@requires(*EDITORS)
async def simulate_proposal(request: web.Request) -> web.Response:
    store = request.app[STORE]
    p = await store.admin.get(request.match_info["id"])
    cur = await store.current()
    return json_response(await _simulate(store, cur.document, p.document))


@requires("approver")
async def approve(request: web.Request) -> web.Response:
    p = await request.app[STORE].admin.approve(request.match_info["id"], principal(request).user)
    return json_response(p.summary())


@requires("approver")
async def publish(request: web.Request) -> web.Response:
    p = await request.app[STORE].admin.publish(request.match_info["id"], principal(request).user)
    return json_response(p.summary())


@requires("approver", "compliance-officer")
async def reject(request: web.Request) -> web.Response:
    """An approver turns a proposal down; a compliance officer may withdraw their own."""
    data = await body(request)
    reason = text_field(data, "reason", required=False, limit=2000) or ""
    who = principal(request)
    admin = request.app[STORE].admin
    p = await admin.get(request.match_info["id"])
    if who.role == "compliance-officer" and p.proposer != who.user:
        raise PsvnError(Code.FORBIDDEN, f"{who.user} may withdraw only their own proposals; {p.id} is "
                        f"{p.proposer}'s", field="role", rule="console-role")
    return json_response((await admin.reject(p.id, who.user, reason)).summary())


@requires(*ANYONE)
async def history(request: web.Request) -> web.Response:
    return json_response({"history": await request.app[STORE].admin.history()})


def _version(text: str, field: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise PsvnError(Code.BAD_REQUEST, f"{field} must be a policy version number (1, 2, ...), not {text!r}",
                        field=field, rule="policy-version")
    return v


@requires(*ANYONE)
async def version_text(request: web.Request) -> web.Response:
    """The rules text of an accepted version in the history (not only the current one)."""
    src = await request.app[STORE].version_source(_version(request.match_info["version"], "version"))
    return json_response({"version": src.version, "proposer": src.proposer, "approver": src.approver,
                          "published_at": src.published_at, "rules_text": src.rules_text, "source": src.source})


@requires(*ANYONE)
async def version_diff(request: web.Request) -> web.Response:
    """GET /api/history/{version}/diff?against=N: rules.toml of version N against this one."""
    new = _version(request.match_info["version"], "version")
    old = _version(request.query.get("against", ""), "against")
    diff = await request.app[STORE].versions_diff(old, new)
    return json_response({"old_version": old, "new_version": new, "rules_diff": diff})


@requires(*ANYONE)
async def overview(request: web.Request) -> web.Response:
    return json_response(await request.app[STORE].overview())


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/whoami", whoami)
    r.add_get("/api/policy/current", current_policy)
    r.add_post("/api/policy/lint", lint)
    r.add_post("/api/policy/test", run_tests)
    r.add_post("/api/policy/simulate", simulate)
    r.add_get("/api/proposals", list_proposals)
    r.add_post("/api/proposals", create_proposal)
    r.add_get("/api/proposals/{id}", get_proposal)
    r.add_get("/api/proposals/{id}/simulate", simulate_proposal)
    r.add_post("/api/proposals/{id}/approve", approve)
    r.add_post("/api/proposals/{id}/publish", publish)
    r.add_post("/api/proposals/{id}/reject", reject)
    r.add_get("/api/history", history)
    r.add_get("/api/history/{version}", version_text)
    r.add_get("/api/history/{version}/diff", version_diff)
    r.add_get("/api/overview", overview)
