"""Just enough of Kubernetes' protobuf encoding to read the bodies kubectl's generators send.

``kubectl create namespace`` (and other imperative generators) post built-in objects as
``application/vnd.kubernetes.protobuf`` and cannot be told otherwise. This decodes the envelope
and the object's metadata (name, generateName, namespace, labels, annotations); a body with
anything else (a spec or status we would have to understand) is refused rather than guessed at.

The exceptions are the requests kubectl's ``auth can-i``, ``auth whoami`` and ``create token``
send, whose specs are small and fixed: SelfSubjectAccessReview, SelfSubjectRulesReview,
SelfSubjectReview and TokenRequest (their field numbers are those of Kubernetes'
``generated.proto``; a status sent with them is ignored, as the server computes it).
"""

from __future__ import annotations

from typing import Any

MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """A body this decoder cannot (or will not) turn into JSON."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs; length-delimited values are bytes, varints ints."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise ProtobufError("truncated field")
            out.append((number, data[pos : pos + size]))
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return out


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a string field")
    return value.decode()


def _map_entry(value: int | bytes) -> tuple[str, str]:
    entry = dict(_fields(value if isinstance(value, bytes) else b""))
    return _text(entry.get(1, b"")), _text(entry.get(2, b""))


def _empty(value: int | bytes) -> bool:
    """Go's encoder writes zero-valued fields too; a message of only zero values is empty."""
    if value in (0, b""):
        return True
    if not isinstance(value, bytes):
        return False
    try:
        return all(_empty(v) for _, v in _fields(value))
    except ProtobufError:
        return False


def _metadata(data: bytes) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for number, value in _fields(data):
        if number == 1:
            meta["name"] = _text(value)
        elif number == 2:
            meta["generateName"] = _text(value)
        elif number == 3:
            meta["namespace"] = _text(value)
        elif number == 11:
            k, v = _map_entry(value)
            meta.setdefault("labels", {})[k] = v
        elif number == 12:
            k, v = _map_entry(value)
            meta.setdefault("annotations", {})[k] = v
        elif number in (6, 8) or _empty(value):  # resourceVersion, creationTimestamp: ignored
            continue
        else:
            raise ProtobufError(f"metadata field {number} is not supported in protobuf bodies")
    return meta


Schema = dict[int, tuple[str, Any]]  # field number -> (JSON name, "string"|"strings"|"int"|Schema)

_RESOURCE_ATTRIBUTES: Schema = {
    1: ("namespace", "string"),
    2: ("verb", "string"),
    3: ("group", "string"),
    4: ("version", "string"),
    5: ("resource", "string"),
    6: ("subresource", "string"),
    7: ("name", "string"),
}
_NON_RESOURCE_ATTRIBUTES: Schema = {1: ("path", "string"), 2: ("verb", "string")}
_BOUND_OBJECT: Schema = {
    1: ("kind", "string"),
    2: ("apiVersion", "string"),
    3: ("name", "string"),
    4: ("uid", "string"),
}
# (apiVersion, kind) -> (field number of spec or None, its schema); other fields but metadata
# (the status) are ignored for these kinds.
_REVIEWS: dict[tuple[str, str], tuple[int | None, Schema]] = {
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): (
        2,
        {
            1: ("resourceAttributes", _RESOURCE_ATTRIBUTES),
            2: ("nonResourceAttributes", _NON_RESOURCE_ATTRIBUTES),
        },
    ),
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): (2, {1: ("namespace", "string")}),
    ("authentication.k8s.io/v1", "SelfSubjectReview"): (None, {}),
    ("authentication.k8s.io/v1", "TokenRequest"): (
        2,
        {
            1: ("audiences", "strings"),
            3: ("boundObjectRef", _BOUND_OBJECT),
            4: ("expirationSeconds", "int"),
        },
    ),
}


def _message(data: bytes, schema: Schema, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in schema:
            if _empty(value):
                continue
            raise ProtobufError(f"{where} field {number} is not supported in protobuf bodies")
        name, kind = schema[number]
        if kind == "string":
            out[name] = _text(value)
        elif kind == "strings":
            out.setdefault(name, []).append(_text(value))
        elif kind == "int":
            if not isinstance(value, int):
                raise ProtobufError(f"{where}.{name} must be an integer")
            out[name] = value - (1 << 64) if value >= 1 << 63 else value
        elif isinstance(value, bytes):
            if not _empty(value):
                out[name] = _message(value, kind, f"{where}.{name}")
        else:
            raise ProtobufError(f"{where}.{name} must be a message")
    return out


def decode(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded object holding only metadata (and empty spec/status)."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf envelope")
    envelope = dict(_fields(body[len(MAGIC) :]))
    type_bytes = envelope.get(1, b"")
    type_meta = dict(_fields(type_bytes if isinstance(type_bytes, bytes) else b""))
    raw = envelope.get(2, b"")
    if not isinstance(raw, bytes):
        raise ProtobufError("missing the object in the protobuf envelope")
    obj: dict[str, Any] = {}
    if 1 in type_meta:
        obj["apiVersion"] = _text(type_meta[1])
    if 2 in type_meta:
        obj["kind"] = _text(type_meta[2])
    review = _REVIEWS.get((obj.get("apiVersion", ""), obj.get("kind", "")))
    for number, value in _fields(raw):
        if number == 1 and isinstance(value, bytes):
            obj["metadata"] = _metadata(value)
        elif review is not None:
            spec_field, schema = review
            if number == spec_field and isinstance(value, bytes):
                obj["spec"] = _message(value, schema, "spec")
            # anything else is the status, which the server fills in itself
        elif _empty(value):
            continue  # an empty spec or status
        else:
            raise ProtobufError(
                "only metadata can be sent as protobuf here; send JSON (kubectl create -f) instead"
            )
    return obj
