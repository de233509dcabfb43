"""What the OpenAI imitation answers: a deterministic reply from the passages it was given.

The model request postroom builds (``services.processing.prompt``) carries fenced data blocks,
``<<<KNOWLEDGE n>>>[{"n", "title", "body", "source_url"}, …]<<<END KNOWLEDGE n>>>`` and
``<<<MESSAGE n>>>"…"<<<END MESSAGE n>>>``. The "model" picks the passage sharing the most
lowercase words (stopwords left out; at least ``MIN_SHARED``) with the message and answers
``{"reply": <its body>}``, else ``{"handoff": true, "reason": "not in the knowledge base"}`` — so
a test knows the answer before it asks. Tokens are ``ceil(characters / 4)`` on each side, and a
completion longer than ``max_tokens`` is cut with ``finish_reason: "length"``, as a model's is.
``obey_injection`` plays a model that follows whatever it is told: it replies with its whole
prompt, which proves that nothing secret is in it. ``malformed`` kinds are the ways a real
model's output goes wrong.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from typing import Any

MIN_SHARED = 2
HANDOFF = {"handoff": True, "reason": "not in the knowledge base"}
WORD = re.compile(r"\w+")
STOPWORDS = frozenset(
    "a an and are as at be been but by can could did do does for from had has have how i if in into is it its "
    "me my no not of on or our so that the their them then there these they this to was we were what when "
    "where which who why will with would you your yours please hi hello thanks thank".split()
)


def block(text: str, name: str) -> str | None:
    """The content of the last ``<<<NAME nonce>>> … <<<END NAME nonce>>>`` fence in ``text``."""
    found = re.findall(rf"<<<{name} (\S+?)>>>(.*?)<<<END {name} \1>>>", text, re.S)
    return found[-1][1] if found else None


def words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.casefold()) if w not in STOPWORDS}


def content_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def choose(user_text: str) -> dict[str, Any]:
    """``{"reply": body}`` of the best-matching passage, or the handoff answer."""
    knowledge, message = block(user_text, "KNOWLEDGE"), block(user_text, "MESSAGE")
    try:
        passages = json.loads(knowledge) if knowledge is not None else []
        question = json.loads(message) if message is not None else user_text
    except ValueError:
        return HANDOFF
    asked = words(question if isinstance(question, str) else json.dumps(question))
    best, best_shared = None, MIN_SHARED - 1
    for passage in passages if isinstance(passages, list) else []:
        if not isinstance(passage, dict) or not isinstance(passage.get("body"), str):
            continue
        shared = len(asked & words(f"{passage.get('title', '')} {passage['body']}"))
        if shared > best_shared:
            best, best_shared = passage["body"], shared
    return {"reply": best} if best is not None else HANDOFF


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def completion(body: dict[str, Any], *, malformed: str | None, obey_injection: bool,
               omit_usage: bool) -> dict[str, Any]:
    """The chat.completion object for a validated request body."""
    messages = body["messages"]
    prompt = "\n".join(content_text(m.get("content")) for m in messages)
    user = next((content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    answer: dict[str, Any] = {"reply": prompt} if obey_injection else choose(user)
    message: dict[str, Any]
    text = json.dumps(answer, ensure_ascii=False)
    finish, message = "stop", {"role": "assistant"}
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    if isinstance(limit, int) and tokens(text) > limit:
        text, finish = text[: limit * 4], "length"
    content, finish = _spoil(text, finish, malformed, message)
    message["content"] = content
    result: dict[str, Any] = {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "system_fingerprint": "fp_sandbox",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    if not omit_usage:
        prompt_tokens, completion_tokens = tokens(prompt), tokens(content or "")
        result["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}
    return result


def _spoil(content: str, finish: str, malformed: str | None,
           message: dict[str, Any]) -> tuple[str | None, str]:
    """The content and finish reason as the injected malformed kind makes them."""
    if malformed == "not_json":
        return "Sure! Here is what I found: " + content[:60], finish
    if malformed == "length":
        return content[: max(1, len(content) // 2)], "length"
    if malformed == "null_content":
        return None, finish
    if malformed == "tool_calls":
        message["tool_calls"] = [{"id": "call_" + uuid.uuid4().hex[:12], "type": "function",
                                  "function": {"name": "lookup", "arguments": "{}"}}]
        return None, "tool_calls"
    if malformed == "both":
        return json.dumps({"reply": "Both at once.", "handoff": True, "reason": "confused"}), finish
    return content, finish
