"""Label and field selectors as the API server parses and applies them (``labelSelector``,
``fieldSelector``): the lab API server filters with them, and the cache-proxy filters a shared
watch for each of its clients. Pure.

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists),
``!k`` (does not exist), comma = AND. Field selectors: ``path=v``, ``path==v``, ``path!=v`` over
the field paths a kind allows. Malformed input raises :class:`SelectorError` naming the problem.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class SelectorError(ValueError):
    """A selector that cannot be parsed or uses an unsupported field."""


_TOKEN = re.compile(r"\s*(?:(?P<op>==|!=|=|!|\(|\)|,)|(?P<word>[A-Za-z0-9_./-]+))")
_LABEL_KEY = re.compile(
    r"^(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects that lack the key, as in Kubernetes.
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SelectorError(f"unable to parse requirement: invalid character at {text[pos:]!r}")
        out.append(m.group("op") or m.group("word"))
        pos = m.end()
    return out


def _check_key(key: str) -> str:
    if not _LABEL_KEY.match(key) or len(key.split("/")[-1]) > 63:
        raise SelectorError(f"invalid label key {key!r} in selector")
    return key


def _check_value(value: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise SelectorError(f"invalid label value {value!r} in selector")
    return value


def parse_label_selector(text: str | None) -> LabelSelector:
    if not text or not text.strip():
        return LabelSelector()
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def at(j: int) -> str | None:
        return toks[j] if j < len(toks) else None

    while i < len(toks):
        if toks[i] == "!":
            key = at(i + 1)
            if key is None or key in "=!(),":
                raise SelectorError(f"selector {text!r}: expected a key after '!'")
            reqs.append(Requirement(_check_key(key), "!exists"))
            i += 2
        else:
            key = toks[i]
            if key in "=!(),":
                raise SelectorError(f"selector {text!r}: expected a key, found {key!r}")
            _check_key(key)
            op = at(i + 1)
            if op is None or op == ",":
                reqs.append(Requirement(key, "exists"))
                i += 1
            elif op in ("=", "==", "!="):
                value = at(i + 2)
                if value is None or value == ",":
                    value, i = "", i + 2  # "k=" selects an empty value
                elif value in "=!()":
                    raise SelectorError(f"selector {text!r}: bad value after {key}{op}")
                else:
                    i += 3
                reqs.append(Requirement(key, "!=" if op == "!=" else "=", (_check_value(value),)))
            elif op in ("in", "notin"):
                if at(i + 2) != "(":
                    raise SelectorError(f"selector {text!r}: expected '(' after {op}")
                j, values = i + 3, []
                while True:
                    tok = at(j)
                    if tok is None:
                        raise SelectorError(f"selector {text!r}: missing ')'")
                    if tok == ")":
                        break
                    if tok == ",":
                        j += 1
                        continue
                    if tok in "=!(":
                        raise SelectorError(f"selector {text!r}: bad value {tok!r} in set")
                    values.append(_check_value(tok))
                    j += 1
                if not values:
                    raise SelectorError(f"selector {text!r}: {op} needs at least one value")
                reqs.append(Requirement(key, op, tuple(values)))
                i = j + 1
            else:
                raise SelectorError(f"selector {text!r}: unknown operator {op!r} after {key!r}")
        if i < len(toks):
            if toks[i] != ",":
                raise SelectorError(f"selector {text!r}: expected ',' before {toks[i]!r}")
            i += 1
            if i == len(toks):
                raise SelectorError(f"selector {text!r}: trailing ','")
    return LabelSelector(tuple(reqs))


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string value at a dotted path ('' when absent), as field selectors compare it."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return ""
        cur = cur[part]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if cur is None:
        return ""
    return str(cur) if not isinstance(cur, (dict, list)) else ""


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[tuple[str, bool, str], ...] = ()  # (path, equal?, value)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all((field_value(obj, p) == v) == eq for p, eq, v in self.terms)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, escaped = [], "", False
    for ch in text:
        if escaped:
            cur += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def parse_field_selector(text: str | None, allowed: tuple[str, ...]) -> FieldSelector:
    if not text or not text.strip():
        return FieldSelector()
    terms = []
    for part in _split_unescaped(text, ","):
        m = re.match(r"^\s*([^=!\s]+)\s*(==|!=|=)(.*)$", part)
        if not m:
            raise SelectorError(f"invalid field selector term {part!r}: expected field=value")
        path, op, value = m.group(1), m.group(2), m.group(3).strip()
        if path not in allowed:
            raise SelectorError(f'field label not supported: "{path}"')
        terms.append((path, op != "!=", value))
    return FieldSelector(tuple(terms))


Matcher = Callable[[Mapping[str, Any]], bool]


def object_matcher(labels: LabelSelector, fields: FieldSelector) -> Matcher:
    def match(obj: Mapping[str, Any]) -> bool:
        return labels.matches((obj.get("metadata") or {}).get("labels")) and fields.matches(obj)

    return match
