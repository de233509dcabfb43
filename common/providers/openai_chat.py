"""One client for any OpenAI-compatible chat server (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM),
and its error table.

It is plain HTTP over ``requests`` through the SSRF guard (a chatbot's ``base_url`` is a tenant's
choice, vetted against POSTROOM_AI_ALLOWED_NETWORKS), with a connect and a read timeout, no
hidden retries (no urllib3 ``Retry``: the AI stage decides, and a retry costs a tenant money),
no redirects, and an answer read up to ``MAX_ANSWER_BYTES``. Failures map onto ``common.errors``
(the error *code* is checked before the status: OpenAI answers ``insufficient_quota`` with 429):

=====================================================  ===================  ==========================
answer                                                 raised               the AI stage then
=====================================================  ===================  ==========================
``insufficient_quota``; 401, 403, 404, 400, 422;       ``PermanentError``   fallback message, handoff
other 4xx, a redirect, a refused address                                    ``provider_error``
429 otherwise (``rate_limit_exceeded``)                ``Throttled``        pauses the key, waits
                                                                            ``Retry-After`` (or 1 s)
5xx, 408, 409, connect error, timeout                  ``TransientError``   backs off, retries
200 whose body is no chat completion                   ``MalformedAnswer``  handoff ``malformed``
=====================================================  ===================  ==========================

A model call has no side effect but its cost, so a read timeout is transient here (a sender's
would be an unknown outcome). A 200 returns a ``Completion``; its content is validated by
``services.processing.answers``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import requests

from common import metrics
from common.config import settings
from common.errors import PermanentError, ProviderError, Throttled, TransientError
from common.netguard import BlockedAddress
from common.providers.transport import guarded_session, retry_after_seconds

MAX_ANSWER_BYTES = 1_048_576
CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_THROTTLE_SECONDS = 1.0
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 422})
TRANSIENT_STATUSES = frozenset({408, 409})
PERMANENT_CODES = frozenset({"insufficient_quota", "invalid_api_key", "model_not_found", "billing_hard_limit_reached"})
CHARS_PER_TOKEN = 4  # the estimate when a server reports no usage


class MalformedAnswer(PermanentError):
    """The server answered 200 with something that is not a chat completion."""

    def __init__(self, message: str):
        super().__init__(message, code="malformed")


@dataclass(frozen=True)
class Completion:
    """A chat completion's first choice, its token counts and how long the call took."""

    content: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool  # the server sent no usage: ceil(characters / 4) on both sides
    latency_ms: int
    tool_calls: bool = False  # the model asked for a tool (none is ever offered): malformed


def endpoint(base_url: str) -> str:
    """``<base_url>/chat/completions`` (``base_url`` ends in ``/v1`` for OpenAI-compatible servers)."""
    return base_url.rstrip("/") + "/chat/completions"


def effective_timeout(chatbot_seconds: float | None) -> float:
    """The chatbot's own timeout, never above POSTROOM_AI_TIMEOUT_SECONDS."""
    limit = settings.postroom_ai_timeout_seconds
    return min(chatbot_seconds, limit) if chatbot_seconds and chatbot_seconds > 0 else limit


def complete(base_url: str, api_key: str | None, request: dict[str, Any], timeout_seconds: float | None = None,
             *, allowed_networks: str | None = None) -> Completion:
    """POST ``request`` (an OpenAI chat completions body) and return its first choice.

    Parameters:
      timeout_seconds: the chatbot's; capped by POSTROOM_AI_TIMEOUT_SECONDS (connect: at most 5 s).
      allowed_networks: CIDRs the guard lets through (default POSTROOM_AI_ALLOWED_NETWORKS).

    Raises:
      PermanentError, Throttled, TransientError, MalformedAnswer: as the module's table says.
    """
    timeout = effective_timeout(timeout_seconds)
    model = metrics.model_label(str(request.get("model") or ""))
    started = time.monotonic()
    outcome = "ok"
    try:
        completion = _call(base_url, api_key, request, timeout, started,
                           settings.postroom_ai_allowed_networks if allowed_networks is None else allowed_networks)
    except ProviderError as exc:
        outcome = _outcome(exc)
        raise
    finally:
        metrics.AI_REQUESTS.labels(model=model, outcome=outcome).observe(time.monotonic() - started)
    metrics.AI_TOKENS.labels(model=model, kind="prompt").inc(completion.prompt_tokens)
    metrics.AI_TOKENS.labels(model=model, kind="completion").inc(completion.completion_tokens)
    return completion


def _outcome(exc: ProviderError) -> str:
    if isinstance(exc, MalformedAnswer):
        return "malformed"
    if isinstance(exc, Throttled):
        return "throttled"
    return "permanent" if isinstance(exc, PermanentError) else "transient"


def _call(base_url: str, api_key: str | None, request: dict[str, Any], timeout: float, started: float,
          networks: str) -> Completion:
    headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "postroom"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    body = json.dumps(request, ensure_ascii=False).encode()
    try:
        with guarded_session(networks).post(endpoint(base_url), data=body, headers=headers, stream=True,
                                            timeout=(min(CONNECT_TIMEOUT_SECONDS, timeout), timeout),
                                            allow_redirects=False) as response:
            answer, whole = read_capped(response, started + timeout)
            status, retry_after = response.status_code, response.headers.get("Retry-After")
    except BlockedAddress as exc:
        raise PermanentError(f"the model server's address is refused: {exc}", code="blocked_address") from None
    except requests.Timeout:
        raise TransientError(f"no answer from the model server within {timeout:g}s", code="timeout") from None
    except requests.RequestException as exc:
        raise TransientError(f"connection to the model server failed: {type(exc).__name__}", code="connection") from None
    latency_ms = int((time.monotonic() - started) * 1000)
    if status != 200:
        raise classify(status, retry_after, answer)
    if not whole:
        raise MalformedAnswer(f"the answer is larger than {MAX_ANSWER_BYTES} bytes")
    return parse(answer, request, latency_ms)


def read_capped(response: requests.Response, deadline: float) -> tuple[bytes, bool]:
    """The body, up to MAX_ANSWER_BYTES, and whether it was whole. A server that trickles its
    answer past ``deadline`` raises ``requests.Timeout`` (the read timeout is per read only)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            return b"".join(chunks)[:MAX_ANSWER_BYTES], False
        if time.monotonic() > deadline:
            raise requests.Timeout("the answer took longer than the timeout")
    return b"".join(chunks), True


def error_code(answer: bytes) -> tuple[str | None, str]:
    """The OpenAI error's ``code`` (else its ``type``) and a short message, from an error body."""
    try:
        parsed = json.loads(answer)
    except ValueError:
        return None, answer[:200].decode("utf-8", "replace")
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return None, answer[:200].decode("utf-8", "replace")
    code = error.get("code") if isinstance(error.get("code"), str) else None
    kind = error.get("type") if isinstance(error.get("type"), str) else None
    message = error.get("message")
    return (code or kind), message[:200] if isinstance(message, str) else ""


def classify(status: int, retry_after: str | None, answer: bytes) -> ProviderError:
    """The error a non-200 answer is (the table in the module's docstring)."""
    code, message = error_code(answer)
    text = f"HTTP {status}: {message}".rstrip(": ")
    if code in PERMANENT_CODES or status in PERMANENT_STATUSES:
        return PermanentError(text, code=code or str(status))
    if status == 429:
        wait = retry_after_seconds(retry_after)
        return Throttled(text, code=code or "rate_limit_exceeded", retry_after=DEFAULT_THROTTLE_SECONDS if wait is None else wait)
    if status >= 500 or status in TRANSIENT_STATUSES:
        return TransientError(text, code=code or str(status), retry_after=retry_after_seconds(retry_after))
    if 300 <= status < 400:
        return PermanentError(f"HTTP {status}: redirects are not followed", code=str(status))
    return PermanentError(text, code=code or str(status))


def parse(answer: bytes, request: dict[str, Any], latency_ms: int) -> Completion:
    """A 200's chat completion: its first choice and usage (estimated when absent).

    Raises:
      MalformedAnswer: not JSON, or no ``choices[0].message``.
    """
    try:
        parsed = json.loads(answer)
    except ValueError:
        raise MalformedAnswer("the answer is not JSON") from None
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    message = first.get("message") if first else None
    if not isinstance(message, dict):
        raise MalformedAnswer("the answer has no choices[0].message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise MalformedAnswer("choices[0].message.content is not a string")
    finish = first.get("finish_reason") if first else None
    tool_calls = bool(message.get("tool_calls") or message.get("function_call"))
    prompt, completion, total, estimated = _usage(parsed.get("usage"), request, content or "")
    return Completion(content, finish if isinstance(finish, str) else None, prompt, completion, total, estimated,
                      latency_ms, tool_calls)


def _usage(usage: Any, request: dict[str, Any], content: str) -> tuple[int, int, int, bool]:
    def count(key: str) -> int | None:
        value = usage.get(key) if isinstance(usage, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    prompt, completion = count("prompt_tokens"), count("completion_tokens")
    if prompt is not None and completion is not None:
        return prompt, completion, count("total_tokens") or prompt + completion, False
    sent = sum(len(str(m.get("content") or "")) for m in request.get("messages", []) if isinstance(m, dict))
    prompt, completion = math.ceil(sent / CHARS_PER_TOKEN), math.ceil(len(content) / CHARS_PER_TOKEN)
    return prompt, completion, prompt + completion, True
