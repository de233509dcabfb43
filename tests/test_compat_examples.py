"""Done when 1: every curl example of the five seed documents, with only the base URL and an API
key changed, gets the documented status and response shape from postroom, through real processes
(gunicorn ingest, the workers, the scheduler and the provider sandbox).

The examples are read from the documents themselves (``../shared/seeds``, ``tests.compat_examples``),
never from a copy: a missing directory fails the test. The identity words the examples carry
(``ws_123``, ``YOUR_USER_ID``, ``test-user``) are not rewritten: they are registered as the
workspace's ``compat_identities`` first, as a team moving over would. No document gives an HTTP
status, so the documented status is success: 200. A documented response is compared by shape: the
answer has every key path of the document with the same JSON type (values are not compared).

The README's compatibility examples (between ``<!-- compat:Sn -->`` markers) run the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from services.local.stack import Stack, private_env
from tests import compat_examples as ex

IDENTITIES = ["ws_123", "YOUR_USER_ID", "test-user"]
# How many curl examples each document holds: a changed document is noticed here first.
EXPECTED = {"000": 0, "001": 7, "002": 5, "003": 0, "004": 0}
SYSTEMS = ("S0", "S1", "S2", "S3")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    env = private_env(tmp_path_factory.mktemp("compat_examples"), 11000 + os.getpid() % 4000, POSTROOM_API_WORKERS="1",
                      POSTROOM_SENDER_CONCURRENCY="16")
    with Stack(env=env) as running:
        running.key = running.start()  # type: ignore[attr-defined]
        base = f"http://127.0.0.1:{running.cfg.postroom_api_port}"
        changed = requests.patch(f"{base}/v1/workspace/settings", json={"compat_identities": IDENTITIES},
                                 headers={"Authorization": f"Bearer {running.key}"}, timeout=10)  # type: ignore[attr-defined]
        assert changed.status_code == 200, changed.text
        yield running


def base_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.cfg.postroom_api_port}"


def run(stack: Stack, examples: list[ex.Example]) -> list[str]:
    """Send each example in order (later ones use the ids earlier answers gave); what went wrong."""
    bindings, problems = ex.Bindings(), []
    for n, example in enumerate(examples):
        # Examples without a credential get the key in one header or the other, alternately.
        method, url, headers, body = ex.request_for(example, base_url(stack), stack.key, bindings,  # type: ignore[attr-defined]
                                                    key_header="Authorization" if n % 2 == 0 else "x-api-key")
        response = requests.request(method, url, headers=headers, data=body, timeout=30)
        problems += [f"{example.where} {method} {url}: {p}" for p in judge(example, response)]
        if example.documented is not None and response.status_code == 200:
            bindings.learn(example.documented, response.json())
    return problems


def judge(example: ex.Example, response: requests.Response) -> list[str]:
    if response.status_code != 200:
        return [f"status {response.status_code}, documented 200: {response.text[:300]}"]
    try:
        answer: Any = response.json()
    except ValueError:
        return [f"not JSON: {response.text[:200]}"]
    if example.documented is not None:
        return ex.shape_mismatches(example.documented, answer)
    if isinstance(answer, dict) and "success" in answer and answer["success"] is not True:
        return [f"success is not true: {answer}"]
    return [] if isinstance(answer, dict) else [f"not a JSON object: {answer}"]


def test_the_documents_hold_the_examples_the_routes_were_built_for():
    documents = ex.seed_documents()
    assert {name[:3]: len(ex.parse(text, name)) for name, text in documents.items()} == EXPECTED
    status = next(e for e in ex.parse(documents[_named("001", documents)], "001") if e.documented is not None)
    assert (status.method, status.url, status.header("x-user-id")) == (
        "GET", "https://yourdomain.com/api/queue/status?campaignId=123", "YOUR_USER_ID")
    job = ex.parse(documents[_named("002", documents)], "002")[-1]
    assert job.url.endswith("?jobId=job_xyz&workspaceId=ws_123")  # the unquoted & stays in the URL


def _named(prefix: str, documents: dict[str, str]) -> str:
    return next(name for name in documents if name.startswith(prefix))


def test_every_curl_example_of_the_seed_documents_gets_the_documented_status_and_shape(stack):
    documents = ex.seed_documents()
    problems: list[str] = []
    for name, text in documents.items():
        problems += run(stack, ex.parse(text, name))
    assert not problems, "\n".join(problems)


def test_the_readme_compat_examples_run_against_postroom(stack):
    readme = Path(os.environ.get("POSTROOM_COMPAT_README") or ex.README).read_text()
    sections = ex.readme_sections(readme)
    examples = {system: ex.parse(sections.get(system, ""), f"README {system}") for system in SYSTEMS}
    assert all(examples[system] for system in SYSTEMS), {s: len(e) for s, e in examples.items()}
    problems: list[str] = []
    for system in SYSTEMS:
        problems += run(stack, examples[system])
    assert not problems, "\n".join(problems)
