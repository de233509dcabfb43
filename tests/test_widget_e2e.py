"""The web chat widget in a real headless browser, through real processes (Done-when 5).

A private stack runs ingest, processing, routing, the AI stage, the widget sender and the widget
service (gunicorn, gevent), with its own PostgreSQL and Redis. Debian's chromium (``make browser``
installs it) loads the inbox's page, writes as a visitor, and reads the conversation from the
page's DOM: the bot's answer arrives over the event stream; replies published while the stream
was down arrive once it reconnects, and only once; and with a second widget replica, what one
replica or the sender publishes reaches a browser held open on the other.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
import requests
from selenium.webdriver.common.by import By

from services.local import infra as localinfra
from services.local.stack import BIN, Service, Stack, private_env, services_for
from tests import browser
from tests.support import wait_for

SERVICES = ["sandbox", "processing", "routing", "scheduler", "ai-premium", "ai", "sender-widget", "widget", "ingest"]
QUESTION = "How do I reset my password?"
ANSWER = "Open Settings, choose Security and press Reset password. The link we email you works for an hour."
HANDOFF = "Thanks, a person from our team will reply here shortly."


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    assert browser.installed(), "chromium and chromedriver are missing: run `make browser` (make test does)"
    env = private_env(tmp_path_factory.mktemp("widget"), 1500 + os.getpid() % 3400, POSTROOM_API_WORKERS="1",
                      POSTROOM_STAGE_DEADLINE_SECONDS="2")
    with Stack(env=env) as running:
        running.start_infra()
        running.key = running.migrate_and_seed()  # type: ignore[attr-defined]
        running.start_services(only=SERVICES)
        running.wait_ready()
        yield running


def api(stack: Stack, method: str, path: str, **kwargs: Any) -> Any:
    response = requests.request(method, f"http://127.0.0.1:{stack.cfg.postroom_api_port}{path}",
                                headers={"Authorization": f"Bearer {stack.key}"}, timeout=10, **kwargs)  # type: ignore[attr-defined]
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
    return response.json()


@pytest.fixture(scope="module")
def inbox(stack: Stack) -> str:
    """The dev workspace's widget inbox, an offline (extractive) chatbot on it, and one answer in
    its knowledge base; the inbox key."""
    key = api(stack, "PUT", "/v1/channels/widget", json={
        "sender": "Acme support", "settings": {"title": "Acme help", "greeting": "Hi! Ask us anything."}})["account"]
    api(stack, "PUT", "/v1/chatbots/widget", json={"provider": "extractive", "handoff_message": HANDOFF})
    api(stack, "POST", "/v1/knowledge-items", json={"title": QUESTION, "body": ANSWER})
    api(stack, "POST", "/v1/knowledge-items", json={"title": "Do you ship to Norway?", "body": "Yes, within five days."})
    return key


def query(stack: Stack, sql: str, *params: Any) -> list[tuple]:
    with psycopg2.connect(stack.cfg.database_url) as conn, conn.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    conn.close()
    return rows


def shown(driver: Any) -> list[dict[str, str]]:
    """The conversation as the page shows it: every message element with its id."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#log [data-id]')).map(e => "
        "({id: e.dataset.id, kind: e.classList.contains('visitor') ? 'visitor' : 'reply', text: e.textContent}))")


def write(driver: Any, text: str) -> None:
    box = driver.find_element(By.ID, "text")
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()


def reply_with(driver: Any, text: str, timeout: float = 20) -> dict[str, str]:
    return wait_for(lambda: next((m for m in shown(driver) if m["kind"] == "reply" and m["text"] == text), None),
                    timeout=timeout, what=f"the reply {text!r} in the page")


def open_page(driver: Any, base: str, key: str) -> None:
    driver.get(f"{base}/widget/{key}")
    wait_for(lambda: driver.execute_script("return localStorage.getItem(arguments[0])", f"postroom-widget:{key}"),
             what="the page to get its visitor token")


def streams_open(url: str) -> float:
    for line in requests.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("postroom_widget_streams "):
            return float(line.split()[1])
    return 0.0


def test_the_page_loads_under_its_csp_and_a_visitor_question_gets_the_bots_answer(stack, inbox):
    page = requests.get(f"{stack.widget_url}/widget/{inbox}", timeout=10)
    assert page.status_code == 200
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "frame-ancestors *" in policy
    with browser.chromium() as driver:
        open_page(driver, stack.widget_url, inbox)
        assert driver.find_element(By.CLASS_NAME, "title").text == "Acme help"
        write(driver, QUESTION)
        answer = reply_with(driver, ANSWER)
        visitor = [m for m in shown(driver) if m["kind"] == "visitor"]
        assert [m["text"] for m in visitor] == [QUESTION] and int(visitor[0]["id"]) < int(answer["id"])
        (author, status), = query(stack, "SELECT author, status FROM message WHERE id = %s", int(answer["id"]))
        assert author == "bot"
        wait_for(lambda: query(stack, "SELECT status FROM message WHERE id = %s", int(answer["id"]))[0][0] == "delivered",
                 what="the browser's acknowledgement to deliver the answer")
        refused = [line for line in browser.console_errors(driver) if "Content Security Policy" in line]
        assert not refused, refused  # the page runs entirely under its own policy


def test_replies_sent_while_the_stream_was_down_arrive_once_it_reconnects(stack, inbox):
    widget = next(s for s in services_for(stack.cfg) if s.name == "widget")
    with browser.chromium() as driver:
        open_page(driver, stack.widget_url, inbox)
        write(driver, "I want to talk to a human")
        reply_with(driver, HANDOFF)  # a handoff keyword: the bot hands over at once, and says so
        visitor_id = max(int(m["id"]) for m in shown(driver) if m["kind"] == "visitor")
        (conversation,), = query(stack, "SELECT conversation_id FROM message WHERE id = %s", visitor_id)
        assert query(stack, "SELECT status FROM conversation WHERE id = %s", conversation) == [("open",)]

        stack.stop_service("widget")
        agent = [api(stack, "POST", f"/v1/conversations/{conversation}/messages", json={"body": body})["message"]["id"]
                 for body in ("Hello, this is Dana from Acme.", "How can I help?")]
        wait_for(lambda: all(status == "sent" for status, in query(
            stack, "SELECT status FROM message WHERE id = ANY(%s)", agent)), what="the agent's replies published")
        stack.start_service(widget)

        for body in ("Hello, this is Dana from Acme.", "How can I help?"):
            reply_with(driver, body, timeout=30)
        time.sleep(1.5)  # a second reconnect or a late wake-up would show them again
        ids = [m["id"] for m in shown(driver)]
        assert len(ids) == len(set(ids)) == 4, shown(driver)
        assert [m["text"] for m in shown(driver)].count(HANDOFF) == 1
        wait_for(lambda: all(status == "delivered" for status, in query(
            stack, "SELECT status FROM message WHERE id = ANY(%s)", agent)), what="the agent's replies acknowledged")


def test_a_reply_published_on_one_replica_reaches_a_browser_on_the_other(stack, inbox):
    port = localinfra.free_port()
    replica_b = f"http://127.0.0.1:{port}"
    stack.start_service(Service("widget-b", [str(BIN / "postroom"), "widget", "--port", str(port)]))
    wait_for(lambda: _answers(f"{replica_b}/healthz"), timeout=30, what="the second widget replica")
    with browser.chromium() as driver:
        open_page(driver, replica_b, inbox)
        wait_for(lambda: streams_open(replica_b) == 1, what="the browser's stream on replica B")
        driver.execute_script(  # when each message appears in the page, by the browser's clock
            "window.seenAt = {}; new MutationObserver(() => document.querySelectorAll('#log [data-id]').forEach("
            "e => { if (!(e.dataset.id in window.seenAt)) window.seenAt[e.dataset.id] = Date.now(); }))"
            ".observe(document.getElementById('log'), {childList: true});")
        token = driver.execute_script("return localStorage.getItem(arguments[0])", f"postroom-widget:{inbox}")

        # Replica A serves the visitor's message (say, from another tab): A publishes it, B shows it.
        posted = requests.post(f"{stack.widget_url}/widget/{inbox}/messages", headers={"Authorization": f"Bearer {token}"},
                               json={"client_id": str(uuid.uuid4()), "body": "Do you ship to Norway?"}, timeout=10)
        assert posted.status_code == 202, posted.text
        wait_for(lambda: any(m["id"] == str(posted.json()["id"]) for m in shown(driver)), what="A's message on B")

        # The bot's answer is published by sender-widget; B's subscription wakes the stream at once.
        answer = reply_with(driver, "Yes, within five days.")
        seen_ms = driver.execute_script("return window.seenAt[arguments[0]]", answer["id"])
        (sent_ms,), = query(stack, "SELECT (extract(epoch FROM sent_at) * 1000)::bigint FROM message WHERE id = %s",
                            int(answer["id"]))
        assert seen_ms - sent_ms < 1000, f"the reply took {seen_ms - sent_ms} ms from sent to the page"
    stack.stop_service("widget-b")


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
