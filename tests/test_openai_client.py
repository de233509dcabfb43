"""The model client against a real HTTP server that answers as each case scripts: the error table
(the code before the status), Retry-After, timeouts, the answer size cap, no redirects, the
network guard, and usage (estimated when the server sends none)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from common.errors import PermanentError, Throttled, TransientError
from common.providers import openai_chat
from common.providers.openai_chat import MalformedAnswer

LOOPBACK = "127.0.0.0/8"
REQUEST = {"model": "gpt-test", "messages": [{"role": "system", "content": "x" * 40}, {"role": "user", "content": "y" * 40}],
           "temperature": 0.2, "max_tokens": 50, "stream": False, "n": 1}


class Scripted(BaseHTTPRequestHandler):
    """Answers every request with ``server.script`` (status, headers, body, delay) and records it."""

    server: ModelServer

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(self.rfile.read(length))})
        status, headers, body, delay = self.server.script
        time.sleep(delay)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST  # noqa: N815 - a followed redirect would arrive here

    def log_message(self, *args: Any) -> None:
        pass


class ModelServer(ThreadingHTTPServer):
    daemon_threads = True
    script: tuple[int, dict[str, str], bytes, float]
    seen: list[dict[str, Any]]

    def answer(self, status: int, body: Any, headers: dict[str, str] | None = None, delay: float = 0.0) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.script = (status, {"Content-Type": "application/json", **(headers or {})}, raw, delay)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def model() -> Iterator[ModelServer]:
    server = ModelServer(("127.0.0.1", 0), Scripted)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def chat(content: str | None, usage: dict[str, int] | None = None, finish: str = "stop", **message: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-test",
                            "choices": [{"index": 0, "finish_reason": finish,
                                         "message": {"role": "assistant", "content": content, **message}}]}
    if usage is not None:
        body["usage"] = usage
    return body


def error(code: str | None, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": f"sandbox says {code}", "type": kind, "param": None, "code": code}}


def call(model: ModelServer, key: str | None = "sk-test", timeout: float = 5.0, networks: str = LOOPBACK) -> openai_chat.Completion:
    return openai_chat.complete(model.base_url, key, REQUEST, timeout, allowed_networks=networks)


def test_a_completion_returns_its_content_and_the_servers_usage(model):
    model.answer(200, chat('{"reply": "Open 9 to 5."}', {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}))

    completion = call(model)

    assert (completion.content, completion.finish_reason) == ('{"reply": "Open 9 to 5."}', "stop")
    assert (completion.prompt_tokens, completion.completion_tokens, completion.total_tokens, completion.estimated) == (11, 7, 18, False)
    assert completion.latency_ms >= 0 and not completion.tool_calls
    (seen,) = model.seen
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["Authorization"] == "Bearer sk-test"
    assert seen["body"] == REQUEST


def test_without_usage_tokens_are_estimated_at_four_characters_each_and_marked(model):
    model.answer(200, chat("z" * 10))

    completion = call(model)

    assert (completion.prompt_tokens, completion.completion_tokens, completion.total_tokens) == (20, 3, 23)
    assert completion.estimated


def test_no_authorization_header_is_sent_without_a_key(model):
    model.answer(200, chat('{"reply": "hi"}'))

    call(model, key=None)

    assert "Authorization" not in model.seen[0]["headers"]


@pytest.mark.parametrize(("status", "body", "code"), [
    (429, error("insufficient_quota", "insufficient_quota"), "insufficient_quota"),  # OpenAI's quota answer is a 429
    (401, error("invalid_api_key"), "invalid_api_key"),
    (403, error(None, "permission_denied"), "permission_denied"),
    (404, error("model_not_found"), "model_not_found"),
    (400, error(None), "invalid_request_error"),
    (422, b"not json at all", "422"),
    (418, error(None, None), "418"),  # type: ignore[arg-type]
])
def test_errors_that_no_retry_can_mend_are_permanent(model, status, body, code):
    model.answer(status, body)

    with pytest.raises(PermanentError) as raised:
        call(model)

    assert not isinstance(raised.value, MalformedAnswer)
    assert raised.value.code == code


def test_a_rate_limit_is_throttled_for_its_retry_after(model):
    model.answer(429, error("rate_limit_exceeded", "requests"), {"Retry-After": "7"})

    with pytest.raises(Throttled) as raised:
        call(model)

    assert (raised.value.code, raised.value.retry_after) == ("rate_limit_exceeded", 7.0)


def test_a_rate_limit_without_retry_after_waits_one_second(model):
    model.answer(429, b"{}")

    with pytest.raises(Throttled) as raised:
        call(model)

    assert raised.value.retry_after == 1.0


@pytest.mark.parametrize("status", [500, 502, 503, 408, 409])
def test_server_errors_and_conflicts_are_transient(model, status):
    model.answer(status, error("server_error", "server_error"), {"Retry-After": "3"} if status == 503 else None)

    with pytest.raises(TransientError) as raised:
        call(model)

    assert raised.value.retry_after == (3.0 if status == 503 else None)


def test_a_server_slower_than_the_timeout_is_transient(model):
    model.answer(200, chat('{"reply": "late"}'), delay=1.5)

    started = time.monotonic()
    with pytest.raises(TransientError) as raised:
        call(model, timeout=0.3)

    assert raised.value.code == "timeout"
    assert time.monotonic() - started < 1.4


def test_a_refused_connection_is_transient(model):
    url = model.base_url
    model.shutdown()
    model.server_close()

    with pytest.raises(TransientError) as raised:
        openai_chat.complete(url, "sk", REQUEST, 2.0, allowed_networks=LOOPBACK)

    assert raised.value.code == "connection"


def test_an_answer_over_the_size_cap_is_malformed_and_not_read_further(model):
    model.answer(200, b'{"choices": "' + b"x" * (openai_chat.MAX_ANSWER_BYTES + 10) + b'"}')

    with pytest.raises(MalformedAnswer, match="larger than"):
        call(model)


@pytest.mark.parametrize("body", [b"<html>gateway</html>", b"[]", json.dumps({"choices": []}).encode(),
                                  json.dumps({"choices": [{"message": {"content": 5}}]}).encode()])
def test_a_200_that_is_no_chat_completion_is_malformed(model, body):
    model.answer(200, body)

    with pytest.raises(MalformedAnswer):
        call(model)


def test_tool_calls_and_cut_completions_are_reported_for_validation(model):
    model.answer(200, chat(None, finish="tool_calls", tool_calls=[{"id": "c", "type": "function", "function": {"name": "x"}}]))
    assert call(model).tool_calls

    model.answer(200, chat('{"reply": "Half', finish="length"))
    assert call(model).finish_reason == "length"


def test_redirects_are_not_followed(model):
    model.answer(307, b"", {"Location": model.base_url + "/elsewhere"})

    with pytest.raises(PermanentError, match="redirects are not followed"):
        call(model)

    assert [s["path"] for s in model.seen] == ["/v1/chat/completions"]


def test_a_base_url_on_a_private_address_is_refused_unless_allowed(model):
    model.answer(200, chat('{"reply": "hi"}'))

    with pytest.raises(PermanentError) as raised:
        call(model, networks="")

    assert raised.value.code == "blocked_address"
    assert model.seen == []


def test_the_timeout_is_the_chatbots_but_never_above_the_setting():
    from common.config import settings

    assert openai_chat.effective_timeout(5) == 5
    assert openai_chat.effective_timeout(10_000) == settings.postroom_ai_timeout_seconds
    assert openai_chat.effective_timeout(None) == settings.postroom_ai_timeout_seconds
