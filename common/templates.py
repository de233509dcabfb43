"""Message templates: the variables a template needs, and rendering it with a message's variables.

A template is written by a workspace's users, so it is untrusted code. It runs in Jinja2's
immutable sandbox (no attribute starting with ``_``, no mutating calls, ``range`` bounded) with
``StrictUndefined``, so a variable left out is an error rather than an empty string; an attribute
starting with ``_`` is refused already when the template is stored. Only the HTML part is
autoescaped: a text body or subject shows ``<`` as written. Ingest checks templates when they are
stored and messages' variables when they are accepted; processing renders in batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

PARTS = ("subject", "text", "html")  # a template's renderable columns
MAX_OUTPUT = 500_000  # characters per rendered part: a loop cannot grow a body without bound

_TEXT = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
_HTML = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=True)


class TemplateProblem(ValueError):
    """A template that cannot be stored or rendered; ``part`` is the part at fault (subject, text,
    html, whatsapp or variables)."""

    def __init__(self, part: str, message: str):
        super().__init__(message)
        self.part = part


def _environment(part: str) -> ImmutableSandboxedEnvironment:
    return _HTML if part == "html" else _TEXT


def variables_of(sources: Mapping[str, str | None]) -> set[str]:
    """The variables the parts in ``sources`` (part name -> Jinja source) use without defining them.

    Raises:
      TemplateProblem: a part does not parse, or reaches for an attribute starting with ``_``.
    """
    names: set[str] = set()
    for part, source in sources.items():
        if source is None:
            continue
        try:
            tree = _environment(part).parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateProblem(part, f"{part}: template syntax error on line {exc.lineno}: {exc.message}") from None
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            attr = node.attr if isinstance(node, nodes.Getattr) else getattr(getattr(node, "arg", None), "value", None)
            if isinstance(attr, str) and attr.startswith("_"):
                raise TemplateProblem(part, f"{part}: the attribute {attr} is not allowed in a template")
        names |= meta.find_undeclared_variables(tree)
    return names


def missing(needed: Iterable[str], variables: Mapping[str, Any]) -> list[str]:
    """The variables of ``needed`` that ``variables`` does not give, sorted."""
    return sorted(set(needed) - set(variables))


def _render_part(part: str, source: str, variables: Mapping[str, Any]) -> str:
    try:
        chunks, size = [], 0
        for chunk in _environment(part).from_string(source).generate(variables):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise TemplateProblem(part, f"{part}: the rendered text is longer than {MAX_OUTPUT} characters")
            chunks.append(chunk)
    except TemplateProblem:
        raise
    except jinja2.UndefinedError as exc:
        raise TemplateProblem("variables", f"{part}: {exc.message}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateProblem(part, f"{part}: refused by the template sandbox: {exc}") from None
    except Exception as exc:  # the template is users' code: any failure of it is theirs to fix, not a crash
        raise TemplateProblem(part, f"{part}: rendering failed: {exc.__class__.__name__}: {exc}") from None
    out = "".join(chunks)
    if "\x00" in out or any("\ud800" <= ch <= "\udfff" for ch in out):
        raise TemplateProblem(part, f"{part}: the rendered text holds a NUL or a lone surrogate")
    return out


def render(template: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, Any]:
    """Render a template row with a message's variables.

    Parameters:
      template: a ``template`` row (or its fields): ``subject``, ``text``, ``html`` and ``whatsapp``.
      variables: the message's variables, names to strings or numbers.

    Returns:
      ``body`` (the rendered text, "" when the template has none), and ``subject`` and ``html``
      when the template has them; for a WhatsApp template, ``template`` as ``whatsapp_cloud``
      sends it: its name, language and the body parameters' values in order.

    Raises:
      TemplateProblem: a variable is missing, or the sandbox refused or the template failed.
    """
    out: dict[str, Any] = {"body": ""}
    for part in PARTS:
        source = template.get(part)
        if source is not None:
            out["body" if part == "text" else part] = _render_part(part, source, variables)
    whatsapp = template.get("whatsapp")
    if whatsapp:
        absent = missing(whatsapp.get("body_parameters", []), variables)
        if absent:
            raise TemplateProblem("variables", f"whatsapp: the variable {absent[0]} is not given")
        out["template"] = {"name": whatsapp["name"], "language": whatsapp.get("language", "en_US"),
                           "body_parameters": [str(variables[p]) for p in whatsapp.get("body_parameters", [])]}
    return out
