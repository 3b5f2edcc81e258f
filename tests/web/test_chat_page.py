"""The web chat page in a real browser: Debian's chromium, driven by Playwright, against a real
node. Two browser contexts (two people, separate storage) register, open a direct conversation,
chat both ways, edit, react, see each other type; one comes back later and finds the
conversation restored from localStorage plus the catch-up of what it missed. The node's files
never hold the text: encryption happens in the browsers.

Every wait is on a page condition (Playwright's auto-waiting `expect`), never a sleep.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.helpers import NodeProcess
from tests.web.conftest import CHROMIUM, TIMEOUT_MS, Person

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; "
        ".ci/run installs it)",
    ),
]

PASSWORD = "a long enough password"


def register(page: Page, user: str) -> None:
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Register").click()
    expect(page.locator("#me")).to_have_text(user)


def send(page: Page, text: str) -> None:
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_label("Message", exact=True).press("Enter")


def message(page: Page, text: str) -> Locator:
    return page.locator("#messages li.msg", has_text=text)


def test_two_browsers_chat_through_a_node_that_cannot_read_them(
    node: NodeProcess, person: Callable[[str], Person], artifacts: Path
) -> None:
    expect.set_options(timeout=TIMEOUT_MS)
    alice_profile, bob_profile = person("alice"), person("bob")
    alice, bob = alice_profile.open(), bob_profile.open()

    register(alice, "alice")
    register(bob, "bob")

    # Alice opens the direct conversation and writes first.
    alice.get_by_label("Chat with").fill("bob")
    alice.get_by_role("button", name="Start").click()
    expect(alice.locator("#conv-title")).to_have_text("bob")
    send(alice, "hello bob, this is alice")
    expect(message(alice, "hello bob, this is alice")).to_be_visible()

    # Bob sees it arrive in his list with an unread count, opens it, answers.
    bob_row = bob.locator("#conv-list button", has_text="alice")
    expect(bob_row.locator(".unread")).to_have_text("1")
    bob_row.click()
    expect(message(bob, "hello bob, this is alice")).to_be_visible()
    expect(bob_row.locator(".unread")).to_have_count(0)
    send(bob, "hi alice, bob here")
    expect(message(alice, "hi alice, bob here")).to_be_visible()

    # Typing indicator: bob types, alice sees it; sending clears it.
    bob.get_by_label("Message", exact=True).press_sequentially("typing…")
    expect(alice.locator("#typing")).to_have_text("bob is typing…")
    bob.get_by_label("Message", exact=True).press("Enter")
    expect(message(alice, "typing…")).to_be_visible()
    expect(alice.locator("#typing")).to_have_text("")

    # Alice edits her first message; bob sees the new text, marked as edited.
    message(alice, "hello bob, this is alice").get_by_role("button", name="Edit message").click()
    expect(alice.locator("#editing")).to_be_visible()
    send(alice, "hello bob, this is alice (edited)")
    edited = message(bob, "hello bob, this is alice (edited)")
    expect(edited).to_be_visible()
    expect(edited.locator(".edited")).to_have_text("edited")

    # Bob reacts to it; alice sees the reaction with its count.
    edited.get_by_role("button", name="React 👍").click()
    reaction = message(alice, "(edited)").locator(".reactions button")
    expect(reaction).to_have_text("👍 1")
    expect(reaction).to_have_attribute("title", "bob")

    # Alice recalls a message; both see the tombstone instead of the text.
    send(alice, "oops, wrong chat")
    expect(message(bob, "oops, wrong chat")).to_be_visible()
    alice.once("dialog", lambda dialog: dialog.accept())
    message(alice, "oops, wrong chat").get_by_role("button", name="Delete message").click()
    expect(message(bob, "oops, wrong chat")).to_have_count(0)
    expect(bob.locator("#messages li.msg.deleted")).to_have_text(re.compile("message deleted"))

    # The safety number is the same 30 digits in both browsers.
    alice.get_by_role("button", name="Safety number").click()
    bob.get_by_role("button", name="Safety number").click()
    digits = r"^\d{5}( \d{5}){5}$"
    expect(alice.locator("#safety-number")).to_have_text(re.compile(digits))
    expect(bob.locator("#safety-number")).to_have_text(alice.locator("#safety-number").inner_text())

    # Alice goes away; bob writes; alice comes back in the same browser profile: the
    # conversation is restored from localStorage (no login) and the catch-up brings the rest.
    alice.close()
    send(bob, "written while alice was away")
    expect(message(bob, "written while alice was away")).to_be_visible()
    alice = alice_profile.open()
    expect(alice.locator("#me")).to_have_text("alice")
    expect(alice.locator("#auth-view")).to_be_hidden()
    expect(alice.locator("#conv-title")).to_have_text("bob")  # reopened by itself
    for text in (
        "hello bob, this is alice (edited)",
        "hi alice, bob here",
        "written while alice was away",
    ):
        expect(message(alice, text)).to_be_visible()
    expect(message(alice, "(edited)").locator(".reactions button")).to_have_text("👍 1")
    # And a plain reload resumes it too, live again afterwards.
    alice.reload()
    expect(message(alice, "written while alice was away")).to_be_visible()
    send(bob, "welcome back")
    expect(message(alice, "welcome back")).to_be_visible()
    expect(alice.locator("#banner")).to_be_hidden()

    alice.screenshot(path=str(artifacts / "chat-page-alice.png"))
    message(bob, "written while alice was away").hover()  # show a message's action toolbar
    bob.screenshot(path=str(artifacts / "chat-page-bob.png"))
    assert alice_profile.errors == [] and bob_profile.errors == []
    # The node relayed all of it without being able to read it: no text on its disk.
    for path in node.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for text in (b"hello bob", b"bob here", b"while alice was away"):
                assert text not in data, f"plaintext {text!r} in {path}"


def test_history_pages_back_from_the_newest_messages(
    node: NodeProcess, person: Callable[[str], Person]
) -> None:
    expect.set_options(timeout=TIMEOUT_MS)
    alice_profile, bob_profile = person("alice"), person("bob")
    alice, bob = alice_profile.open(), bob_profile.open()
    register(alice, "alice")
    register(bob, "bob")
    bob.get_by_label("Chat with").fill("alice")
    bob.get_by_role("button", name="Start").click()
    expect(bob.locator("#conv-title")).to_have_text("alice")
    for i in range(1, 36):
        send(bob, f"numbered message {i:02d}")
    expect(message(bob, "numbered message 35")).to_be_visible()

    # A fresh browser for alice: she gets the newest page (30 messages) and a way back.
    alice.locator("#conv-list button", has_text="bob").click()
    expect(message(alice, "numbered message 35")).to_be_visible()
    expect(alice.locator("#messages li.msg")).to_have_count(30)
    expect(message(alice, "numbered message 05")).to_have_count(0)
    expect(alice.get_by_role("button", name="Load older messages")).to_be_visible()
    alice.get_by_label("Messages", exact=True).hover()
    alice.mouse.wheel(0, -20_000)  # scrolling to the top loads the older page
    expect(message(alice, "numbered message 01")).to_be_visible()
    expect(alice.locator("#messages li.msg")).to_have_count(35)
    expect(alice.get_by_role("button", name="Load older messages")).to_be_hidden()

    # Log out, then back in through the form: this browser is a new device for alice, so the
    # old chain keys come from bob's online device by key request (docs/e2ee.md) and the
    # history reads again.
    alice.get_by_role("button", name="Log out").click()
    expect(alice.locator("#auth-view")).to_be_visible()
    alice.get_by_label("Username").fill("alice")
    alice.get_by_label("Password").fill("not the password")
    alice.get_by_role("button", name="Log in").click()
    expect(alice.locator("#auth-error")).not_to_be_empty()  # a wrong password says so
    alice.get_by_label("Password").fill(PASSWORD)
    alice.get_by_role("button", name="Log in").click()
    expect(alice.locator("#me")).to_have_text("alice")
    alice.locator("#conv-list button", has_text="bob").click()
    expect(message(alice, "numbered message 35")).to_be_visible()
    # The one console error is the browser's own note of the refused login (401).
    assert [e for e in alice_profile.errors if "401" not in e or "/v1/login" not in e] == []
    assert len(alice_profile.errors) == 1 and bob_profile.errors == []


def test_a_banner_shows_while_the_node_is_gone(
    node: NodeProcess, person: Callable[[str], Person]
) -> None:
    expect.set_options(timeout=TIMEOUT_MS)
    alice_profile, bob_profile = person("alice"), person("bob")
    alice, bob = alice_profile.open(), bob_profile.open()
    register(alice, "alice")
    register(bob, "bob")
    alice.get_by_label("Chat with").fill("bob")
    alice.get_by_role("button", name="Start").click()
    send(alice, "before the restart")
    expect(bob.locator("#conv-list button", has_text="alice")).to_be_visible()
    banner = alice.get_by_role("status").filter(has_text="Reconnecting")
    expect(banner).to_be_hidden()

    node.stop()
    expect(banner).to_be_visible()
    expect(bob.get_by_role("status").filter(has_text="Reconnecting")).to_be_visible()
    node.start()  # same port and data: the SDK reconnects by itself
    expect(banner).to_be_hidden()
    send(alice, "after the restart")
    bob.locator("#conv-list button", has_text="alice").click()
    expect(message(bob, "before the restart")).to_be_visible()
    expect(message(bob, "after the restart")).to_be_visible()
    # The failed reconnect attempts are logged by chromium as errors; nothing else may be.
    unexpected = [
        e
        for e in alice_profile.errors + bob_profile.errors
        if "WebSocket connection" not in e and "ERR_CONNECTION_REFUSED" not in e
    ]
    assert unexpected == []
