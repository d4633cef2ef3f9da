"""Parse and validate a Gateway's ``spec`` (one per pool), and match its candidate selector.

The error text is written for the operator: it lands verbatim in the Gateway's ``SpecValid``
condition and in an Event, so it names the field as a path (``spec.tunnelPort``), says what is
wrong and shows what was given. Pure: no I/O, no Kubernetes client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raven.addresses import AddressError, parse_endpoint

DEFAULT_TUNNEL_PORT = 51820
DEFAULT_KEEPALIVE_SECONDS = 5

# RFC 1123 host name label; a label set by Kubernetes rules (qualified name, value). Always
# used with fullmatch: ``$`` would let a trailing newline through.
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?")


class GatewaySpecError(ValueError):
    """A Gateway spec was refused.

    ``field`` is the first bad field's path (e.g. ``spec.tunnelPort``), ``errors`` holds every
    ``(path, message)``, and ``str()`` joins the messages for a condition or an Event.
    """

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = tuple(errors)
        self.field = errors[0][0]
        super().__init__("; ".join(message for _, message in errors))

    # Equal errors compare equal, so two views built from the same bad spec do too.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, GatewaySpecError) and self.errors == other.errors

    def __hash__(self) -> int:
        return hash(self.errors)


def _check_label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if not _LABEL_NAME.fullmatch(name) or (
        prefix
        and (len(prefix) > 253 or not all(_DNS_LABEL.fullmatch(p) for p in prefix.split(".")))
    ):
        raise ValueError(f"{key!r} is not a valid label key")
    return key


def _check_label_value(value: str) -> str:
    if not _LABEL_VALUE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid label value")
    return value


class _Strict(BaseModel):
    # Strict: the CRD says integer/boolean, so "51820" or "true" is a mistake worth naming.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class SelectorRequirement(_Strict):
    """One ``matchExpressions`` entry, with Kubernetes label-selector semantics."""

    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = Field(default=(), strict=False)  # YAML gives a list

    @field_validator("key")
    @classmethod
    def _key(cls, key: str) -> str:
        return _check_label_key(key)

    @field_validator("values")
    @classmethod
    def _values(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_label_value(v) for v in values)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> SelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value in values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values, got {list(self.values)}")
        return self


class LabelSelector(_Strict):
    """``candidateSelector``: narrows which of the pool's nodes may be its gateway."""

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: tuple[SelectorRequirement, ...] = Field(
        default=(),
        alias="matchExpressions",
        strict=False,  # YAML gives a list
    )

    @field_validator("match_labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            _check_label_key(key)
            _check_label_value(value)
        return labels


def _check_endpoint(endpoint: str) -> str:
    """``host:port``: host is IPv4, ``[IPv6]`` or a DNS name, port is ASCII digits without a
    leading zero from 1 to 65535. Returns the canonical form (what ``wg show`` prints)."""
    try:
        return parse_endpoint(endpoint, hostname_ok=True)
    except AddressError as error:
        raise ValueError(str(error)) from None


class GatewaySpec(_Strict):
    """A pool's options. Field names in Kubernetes are the aliases (camelCase)."""

    relay: bool = False
    endpoint: str | None = None
    tunnel_port: int = Field(default=DEFAULT_TUNNEL_PORT, ge=1, le=65535, alias="tunnelPort")
    keepalive_seconds: int = Field(
        default=DEFAULT_KEEPALIVE_SECONDS, ge=0, le=65535, alias="keepaliveSeconds"
    )
    candidate_selector: LabelSelector | None = Field(default=None, alias="candidateSelector")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, endpoint: str | None) -> str | None:
        return None if endpoint is None else _check_endpoint(endpoint)


def _path(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _known_fields(loc: tuple[int | str, ...]) -> str:
    """The field names allowed beside the unknown one at ``loc``, for the error message."""
    model: type[BaseModel] = GatewaySpec
    if loc[:1] == ("candidateSelector",):
        model = SelectorRequirement if len(loc) > 2 else LabelSelector
    return ", ".join(sorted(f.alias or n for n, f in model.model_fields.items()))


def _message(path: str, loc: tuple[int | str, ...], error: Mapping[str, Any]) -> str:
    given = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{path} is not a known field (known: {_known_fields(loc)})"
    if kind == "missing":
        return f"{path} is required"
    if kind in ("value_error", "assertion_error"):
        # Our own validators already say what was given.
        return f"{path}: {error['ctx']['error']}"
    # "tuple" is our storage; in YAML/JSON the operator wrote (or should write) a list.
    text = str(error["msg"]).replace("Input should", "must", 1).replace("valid tuple", "list")
    return f"{path} {text}, got {given!r}"


def parse_gateway_spec(obj: Mapping[str, Any] | None) -> GatewaySpec:
    """Validate a Gateway's ``spec`` dict (``None`` means all defaults).

    Raises :class:`GatewaySpecError` naming every bad field.
    """
    if obj is None:
        return GatewaySpec()
    if not isinstance(obj, Mapping):
        raise GatewaySpecError([("spec", f"spec must be an object, got {obj!r}")])
    try:
        return GatewaySpec.model_validate(dict(obj))
    except ValidationError as exc:
        errors = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            # Pydantic names a failed Literal/union branch by its tag; drop those extras.
            loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("literal[")))
            path = _path(loc)
            errors.append((path, _message(path, loc, error)))
        raise GatewaySpecError(errors) from None


def selector_matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """True when ``labels`` satisfy ``selector`` (Kubernetes semantics; ``None`` matches all)."""
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In" and not (present and labels[req.key] in req.values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True
