"""The policy editor in headless Debian chromium (Playwright), against real gateways.

Edit -> lint error shown inline -> fix -> tests pass -> what would change -> submit; sign in as
another person, an approver -> approve -> publish; the history shows the new version and every
gateway enforces it.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.broker.test_console import Console, start_console
from tests.broker.test_policy_admin import DENY_RULE_ID, edited_rules, wait_versions
from tests.conftest import Network
from tests.gateway.test_service import call, referral


def find_chromium(bundled: str) -> str:
    """A system chromium (Debian's, as CI installs it) or Playwright's own, whichever exists."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if bundled and Path(bundled).exists():
        return bundled
    raise AssertionError("the console's browser test needs Chromium: `sudo apt-get install -y chromium` "
                         "(as .ci/run does) or `.venv/bin/playwright install chromium`")


ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT = 30_000  # ms; a generous ceiling for a loaded CI machine, not a performance assertion


@pytest.fixture
async def con(network: Network) -> AsyncIterator[Console]:
    c = await start_console(network)
    try:
        yield c
    finally:
        await c.server.stop()


async def sign_in(page: Page, con: Console, user: str, role: str) -> None:
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#token", con.token(user, role))
    await page.click("#login-submit")
    await expect(page.locator("#who-name")).to_have_text(user)
    await expect(page.locator("#who-role")).to_have_text(role)
    assert await page.input_value("#token") == ""  # the pasted token does not linger in the page


async def sign_out(page: Page) -> None:
    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_edit_test_submit_approve_publish_in_the_browser(con: Console, tmp_path: Path) -> None:
    net = con.net
    code, sent = await call(net, net.COUNCIL, "POST", "/v1/messages", referral("ods:RYR"))
    assert code == 202, sent  # recent traffic for the simulation to replay

    typo_rules = edited_rules().replace('types = ["fhir.r4.ServiceRequest"]\noverrides',
                                        'types = ["fhir.r4.ServiceRequst"]\noverrides')
    typo_line = next(i for i, t in enumerate(typo_rules.splitlines(), 1) if "ServiceRequst" in t)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=find_chromium(pw.chromium.executable_path), args=ARGS)
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(TIMEOUT)
        page = await context.new_page()
        page_errors: list[str] = []
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        try:
            await page.goto(con.url + "/")

            # a bad token is explained in words, not as the JWT library's exception name
            await expect(page.locator("#login")).to_be_visible()
            await page.fill("#token", "not-a-token")
            await page.click("#login-submit")
            await expect(page.locator("#login-error")).to_contain_text("not a console token")
            assert "DecodeError" not in (await page.locator("#login-error").text_content() or "")

            # --- the compliance officer edits ------------------------------------------------
            await sign_in(page, con, "alice", "compliance-officer")
            await expect(page.locator("#editor-status")).to_contain_text("editing the rules for version 2")
            await expect(page.locator("#lint-summary")).to_contain_text("Lint OK")
            assert (await page.input_value("#rules")).startswith("# The psvn network's rules")

            await page.fill("#rules", typo_rules)  # typing triggers lint
            await expect(page.locator("#lint-summary")).to_have_text("1 lint error(s)")
            marked = page.locator(f"#gutter .ln.error[data-line='{typo_line}']")
            await expect(marked).to_have_count(1)
            assert "not in the message catalogue" in (await marked.get_attribute("title") or "")
            finding = page.locator("#findings li.error")
            await expect(finding).to_contain_text(f"line {typo_line}")
            await expect(finding).to_contain_text("fhir.r4.ServiceRequst")
            await finding.locator("a[data-line]").click()  # jumps to the line in the editor
            selected = await page.evaluate(
                "(() => { const t = document.getElementById('rules'); "
                "return t.value.slice(t.selectionStart, t.selectionEnd); })()")
            assert "ServiceRequst" in selected
            await page.screenshot(path=str(tmp_path / "lint-error.png"))

            # submitting a broken change is refused by the server, with the reason shown
            await page.click("#btn-submit")
            await expect(page.locator("#submit-result .problem")).to_contain_text("policy-lint")

            await page.fill("#rules", edited_rules())
            await expect(page.locator("#lint-summary")).to_contain_text("Lint OK")
            await expect(page.locator("#gutter .ln.error")).to_have_count(0)
            # the refusal answered the broken text: once fixed, its error box goes
            await expect(page.locator("#submit-result .problem")).to_have_count(0)

            await page.click("#btn-test")
            await expect(page.locator("#test-summary")).to_contain_text(" passed, 0 failed")

            await page.click("#btn-simulate")
            await expect(page.locator("#sim-summary")).to_contain_text("from version 1 to 2", timeout=TIMEOUT)
            await expect(page.locator("#traffic-summary")).to_contain_text("1 would be decided differently")
            await expect(page.locator("#sim-results")).to_contain_text(sent["id"])

            await page.fill("#note", "pause council referrals to the trust")
            await page.click("#btn-submit")
            await expect(page.locator("#submitted")).to_contain_text("(version 2) for approval")
            pid = (await page.locator("#submitted code").text_content() or "").strip()
            assert pid.startswith("p")
            await page.click("#tabbtn-proposals")
            row = page.locator(f"tr[data-proposal='{pid}']")
            await expect(row.locator(".pill")).to_have_text("proposed")
            await expect(row.locator("button[data-action=approve]")).to_have_count(0)  # not for her role
            await sign_out(page)

            # --- the same person as an approver is refused by the server --------------------
            await sign_in(page, con, "alice", "approver")
            await page.locator(f"tr[data-proposal='{pid}'] button[data-action=approve]").click()
            await expect(page.locator("#proposal-message .problem")).to_contain_text("two-person-rule")
            await expect(page.locator(f"tr[data-proposal='{pid}'] .pill")).to_have_text("proposed")
            await sign_out(page)

            # --- another person approves and publishes ----------------------------------------
            await sign_in(page, con, "bob", "approver")
            row = page.locator(f"tr[data-proposal='{pid}']")
            await row.locator("button[data-action=review]").click()
            await expect(page.locator("#proposal-detail pre.diff")).to_contain_text(f'+id = "{DENY_RULE_ID}"')
            await row.locator("button[data-action=approve]").click()
            await expect(page.locator("#approved-msg")).to_contain_text(f"Approved proposal {pid}")
            await expect(row.locator(".pill")).to_have_text("approved")
            # publishing changes the whole network: it asks first, and Cancel publishes nothing
            await row.locator("button[data-action=publish]").click()
            dialog = page.locator("#confirm-publish")
            await expect(dialog).to_be_visible()
            await expect(page.locator("#confirm-publish-text")).to_contain_text("Publish version 2")
            # the simulation behind it replays the decision space and recent traffic: on busy
            # cores it has taken over the default 5 s
            await expect(page.locator("#confirm-publish-impact")).to_contain_text("now denied", timeout=30_000)
            await page.click("#confirm-publish-no")
            await expect(dialog).to_be_hidden()
            await expect(page.locator("#publish-cancelled")).to_contain_text(f"{pid} was not published")
            await expect(row.locator(".pill")).to_have_text("approved")
            await row.locator("button[data-action=publish]").click()
            await expect(dialog).to_be_visible()
            await page.click("#confirm-publish-yes")
            await expect(page.locator("#published-msg")).to_contain_text(
                "Published version 2 (proposed by alice, approved by bob)")
            await expect(row.locator(".pill")).to_have_text("published")

            await page.click("#tabbtn-history")
            newest = page.locator("#history-table tbody tr").first
            await expect(newest).to_have_attribute("data-version", "2")
            await expect(newest).to_contain_text("alice")
            await expect(newest).to_contain_text("bob")
            await expect(newest).to_contain_text(pid)
            await expect(newest).to_contain_text("accepted")

            # any version's text, and its differences from another
            await page.locator("#history-table button[data-view='1']").click()
            await expect(page.locator("#version-title")).to_contain_text("Version 1")
            await expect(page.locator("#version-text")).to_contain_text('id = "care-referrals"')
            assert DENY_RULE_ID not in (await page.locator("#version-text").text_content() or "")
            await page.locator("#history-table button[data-view='2']").click()
            await expect(page.locator("#version-title")).to_contain_text("Version 2")
            await expect(page.locator("#version-text")).to_contain_text(DENY_RULE_ID)
            assert await page.input_value("#diff-against") == "1"
            await page.click("#btn-diff")
            await expect(page.locator("#version-diff h4")).to_have_text("Changes from version 1 to 2")
            await expect(page.locator("#version-diff pre.diff")).to_contain_text(f'+id = "{DENY_RULE_ID}"')

            assert await wait_versions(net, 2) == {org: 2 for org in net.gateways}
            await page.click("#tabbtn-overview")
            await expect(page.locator("#overview-status")).to_have_text("Published policy version 2.")
            for org in net.gateways:
                await expect(page.locator(f"tr[data-member='{org}'] .pill")).to_have_text("version 2")
            await page.screenshot(path=str(tmp_path / "overview.png"))

            assert await context.cookies() == []  # bearer token only: nothing a forged request could ride on
            assert page_errors == []
        finally:
            await browser.close()

    code, body = await call(net, net.COUNCIL, "POST", "/v1/messages", referral("ods:RYR"))
    assert (code, body["rule"], body["policy_version"]) == (403, DENY_RULE_ID, 2)
