"""The curl examples of the seed documents (../shared/seeds) and of the README, read from the text
itself, and what running one against postroom may change: only the base URL and the credential.

A document is Markdown-ish: fenced blocks (three backticks and an optional language, closed by a
bare fence) under ``#`` headings. A curl command starts at the word ``curl`` anywhere on a line of
a ``bash`` fence (a cron line puts ``*/2 * * * *`` before it) and runs on while a line ends in
``\\`` or a quote is still open (``-d '{`` ... ``}'``). It is split as a POSIX shell splits words,
without running anything: an unquoted ``&`` in a URL stays part of it, as the author meant.
Its documented response is the next ``json`` fence of the same section, when the line before that
fence says "Response". JSON in the documents may carry ``// Optional`` comments; they are dropped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
SEEDS = Path(os.environ.get("POSTROOM_SEEDS_DIR") or ROOT.parent / "shared" / "seeds")
README = ROOT / "README.md"

FENCE = re.compile(r"^\s*```\s*([\w+-]*)\s*$")
HEADING = re.compile(r"^#{1,6}\s")
CURL_START = re.compile(r"(?:^|\s)(curl)\s")
COMMENT = re.compile(r"\s//[^\"\n]*$", re.MULTILINE)  # `, // Optional` after a value; not the // of a URL
README_MARK = re.compile(r"<!--\s*compat:(S\d)\s*-->")
README_END = re.compile(r"<!--\s*/compat:(S\d)\s*-->")
# Flags that take no argument, and those whose argument is not part of the request.
BARE_FLAGS = {"-s", "--silent", "-S", "--show-error", "-i", "--include", "-f", "--fail", "-L", "--location", "-v", "-g",
              "--globoff"}
IGNORED_WITH_ARG = {"-o", "--output", "-w", "--write-out", "-m", "--max-time"}
# Values a documented response may hold as null in postroom's answer (not known yet, or not given).
NULLABLE = {"completedTime", "messageStatus", "scheduledTime", "name"}
# Documented id values: what postroom answered in their place is used in later requests.
BOUND_KEYS = ("jobId", "messageId")


@dataclass(frozen=True)
class Example:
    """One curl command as written, and the response documented after it (None: none is)."""

    file: str
    line: int  # 1-based, where the command starts
    section: str
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: str | None
    documented: Any = None
    where: str = field(default="", compare=False)  # "file:line", for messages

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def strip_comments(text: str) -> str:
    return COMMENT.sub("", text)


def parse(text: str, name: str = "") -> list[Example]:
    """Every curl example of a document, in order, each with its documented response if any."""
    lines = text.splitlines()
    fences = list(_fences(lines))
    found: list[Example] = []
    for n, (lang, start, end, section) in enumerate(fences):
        if lang != "bash":
            continue
        documented = _response_after(lines, fences, n)
        for line_no, command in _commands(lines[start + 1:end], start + 1):
            example = _example(command, name, line_no + 1, section)
            found.append(replace(example, documented=documented, where=f"{name}:{line_no + 1}"))
    return found


def _fences(lines: list[str]) -> Iterator[tuple[str, int, int, str]]:
    """(language, opening line index, closing line index, heading above) of every fence."""
    section, opened, lang = "", -1, ""
    for i, line in enumerate(lines):
        match = FENCE.match(line)
        if opened < 0:
            if match:
                opened, lang = i, match.group(1).lower()
            elif HEADING.match(line):
                section = line.strip()
        elif match and not match.group(1):
            yield lang, opened, i, section
            opened = -1


def _response_after(lines: list[str], fences: list[tuple[str, int, int, str]], n: int) -> Any:
    """The json fence documenting the answer to the curl fence ``fences[n]``: the next json fence of
    the same section, introduced by a line saying "Response"; None when there is none."""
    section = fences[n][3]
    for lang, start, end, heading in fences[n + 1:]:
        if heading != section:
            return None
        if lang != "json":
            continue
        before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        if "response" not in before.lower():
            return None
        return json.loads(strip_comments("\n".join(lines[start + 1:end])))
    return None


def _commands(block: list[str], first: int) -> Iterator[tuple[int, str]]:
    """(line index, command text from ``curl``) of each curl command in a bash block."""
    i = 0
    while i < len(block):
        match = CURL_START.search(block[i])
        if not match:
            i += 1
            continue
        start, text = i, block[i][match.start(1):]
        while True:
            if text.endswith("\\"):
                text = text[:-1]
            elif _complete(text):
                break
            i += 1
            if i >= len(block):
                raise ValueError(f"line {first + start + 1}: the curl command does not end")
            text += "\n" + block[i]
        yield first + start, text
        i += 1


def _complete(text: str) -> bool:
    try:
        shlex.split(text)
    except ValueError:  # a quote still open
        return False
    return True


def _example(command: str, name: str, line: int, section: str) -> Example:
    words = shlex.split(command)[1:]
    method, url, headers, body = None, None, [], None
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("-X", "--request"):
            method, i = words[i + 1].upper(), i + 2
        elif word in ("-H", "--header"):
            key, _, value = words[i + 1].partition(":")
            headers.append((key.strip(), value.strip()))
            i += 2
        elif word in ("-d", "--data", "--data-raw", "--data-binary"):
            body, i = words[i + 1], i + 2
        elif word in BARE_FLAGS:
            i += 1
        elif word in IGNORED_WITH_ARG:
            i += 2
        elif word.startswith("-"):
            raise ValueError(f"{name}:{line}: curl option {word} is not understood")
        else:
            if url is not None:
                raise ValueError(f"{name}:{line}: two URLs ({url}, {word})")
            url, i = word, i + 1
    if url is None:
        raise ValueError(f"{name}:{line}: curl without a URL")
    return Example(name, line, section, method or ("POST" if body is not None else "GET"), url, tuple(headers), body)


def seed_documents() -> dict[str, str]:
    """Every seed document by file name (``NNN_*.txt``), read from the directory itself.

    Raises:
      FileNotFoundError: the seeds are not beside the checkout (``../shared/seeds``).
    """
    files = sorted(SEEDS.glob("[0-9][0-9][0-9]_*.txt"))
    if not files:
        raise FileNotFoundError(f"no seed documents in {SEEDS} (set POSTROOM_SEEDS_DIR)")
    return {f.name: f.read_text() for f in files}


def readme_sections(text: str) -> dict[str, str]:
    """The README's compatibility examples by system: the text between ``<!-- compat:S3 -->`` and
    ``<!-- /compat:S3 -->`` (or the next marker)."""
    out: dict[str, str] = {}
    marks = list(README_MARK.finditer(text))
    for n, mark in enumerate(marks):
        stop = len(text) if n + 1 == len(marks) else marks[n + 1].start()
        end = README_END.search(text, mark.end(), stop)
        out[mark.group(1)] = out.get(mark.group(1), "") + text[mark.end():end.start() if end else stop]
    return out


# --- What running an example may change ---------------------------------------------------------

@dataclass
class Bindings:
    """Documented ids and what postroom answered in their place (``job_xyz`` -> ``job_17``)."""

    values: dict[str, str] = field(default_factory=dict)

    def learn(self, documented: Any, actual: Any) -> None:
        """Bind every documented id value (``BOUND_KEYS``) to the value at the same place in ``actual``."""
        if isinstance(documented, dict) and isinstance(actual, dict):
            for key, value in documented.items():
                if key in BOUND_KEYS and isinstance(value, str) and isinstance(actual.get(key), str):
                    self.values[value] = actual[key]
                else:
                    self.learn(value, actual.get(key))

    def apply(self, text: str) -> str:
        for documented, actual in self.values.items():
            text = re.sub(rf"(?<![\w]){re.escape(documented)}(?![\w])", actual, text)
        return text


def request_for(example: Example, base_url: str, api_key: str, bindings: Bindings, *, key_header: str = "Authorization"
                ) -> tuple[str, str, dict[str, str], bytes | None]:
    """(method, url, headers, body) to send: the example with its base URL and credential replaced
    (a Bearer value or an ``x-api-key`` value; added as ``key_header`` when it has neither), and the
    ids bound by earlier answers. Nothing else changes."""
    url = bindings.apply(example.url)
    if url.startswith("$API"):  # the README's `API=http://127.0.0.1:8000`
        url = base_url + url[len("$API"):]
    else:
        parts, base = urlsplit(url), urlsplit(base_url)
        url = parts._replace(scheme=base.scheme, netloc=base.netloc).geturl()
    headers: dict[str, str] = {}
    credential = False
    for name, value in example.headers:
        if name.lower() == "authorization" and value.lower().startswith("bearer "):
            value, credential = f"Bearer {api_key}", True
        elif name.lower() == "x-api-key":
            value, credential = api_key, True
        headers[name] = bindings.apply(value)
    if not credential:
        headers[key_header] = f"Bearer {api_key}" if key_header == "Authorization" else api_key
    body = bindings.apply(example.body).encode() if example.body is not None else None
    return example.method, url, headers, body


# --- Comparing shapes ---------------------------------------------------------------------------

def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def shape_mismatches(documented: Any, actual: Any, path: str = "$", nullable: frozenset[str] | set[str] = NULLABLE
                     ) -> list[str]:
    """Where ``actual`` lacks a key path of ``documented`` or holds another JSON type there (numbers
    are one type; a key in ``nullable`` may be null). Values are not compared."""
    if isinstance(documented, Mapping):
        if not isinstance(actual, Mapping):
            return [f"{path}: expected an object, got {kind(actual)}"]
        problems = []
        for key, value in documented.items():
            where = f"{path}.{key}"
            if key not in actual:
                problems.append(f"{where}: missing")
            elif actual[key] is None and key in nullable:
                continue
            else:
                problems += shape_mismatches(value, actual[key], where, nullable)
        return problems
    if kind(documented) != kind(actual):
        return [f"{path}: expected {kind(documented)}, got {kind(actual)}"]
    if isinstance(documented, list) and documented and actual:
        return shape_mismatches(documented[0], actual[0], f"{path}[0]", nullable)
    return []
