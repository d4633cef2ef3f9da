"""The API's verbs over the store, without HTTP: create, get, list, replace, patch, delete, watch.

This is where kinds meet storage: namespaces must exist for namespaced objects, CRDs register
and unregister their custom resources, deleting a namespace or CRD deletes what it contains,
resourceVersion preconditions give 409 Conflict, Events expire ``event_ttl`` after their last
write, and objects over the size and depth limits (:mod:`raven.lab.apiserver.limits`) are
refused before anything is stored.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from raven.lab.apiserver import bootstrap, errors
from raven.lab.apiserver.bootstrap import INITIAL_NAMESPACES
from raven.lab.apiserver.limits import check_object
from raven.lab.apiserver.patch import STRATEGIC, PatchError, PatchTooLarge, apply_patch
from raven.lab.apiserver.resources import (
    CRD_TYPE,
    EVENT_TYPE,
    NAMESPACE_TYPE,
    RBAC_GROUP,
    Registry,
    ResourceType,
    builtin,
)
from raven.lab.apiserver.services import allocate_service_addresses, keep_service_addresses
from raven.lab.apiserver.store import Store, TooOld
from raven.lab.apiserver.strategy import now_rfc3339, prepare_create, prepare_update
from raven.lab.apiserver.watch import MAX_QUEUED_BYTES, MAX_QUEUED_EVENTS, WatchStream
from raven.selectors import (
    SelectorError,
    object_matcher,
    parse_field_selector,
    parse_label_selector,
)

# kube-apiserver's --event-ttl default: an Event is deleted an hour after its last write.
DEFAULT_EVENT_TTL = 3600.0


def _sort_key(obj: dict[str, Any]) -> list[str]:
    meta = obj["metadata"]
    return [meta.get("namespace", ""), meta["name"]]


def _encode_continue(rv: int, after: list[str]) -> str:
    raw = json.dumps({"rv": rv, "after": after}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_continue(token: str) -> tuple[int, list[str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), [str(x) for x in data["after"]]
    except (ValueError, KeyError, TypeError):
        raise errors.bad_request(f"invalid continue token {token!r}") from None


def _precondition(rv: Any) -> int | None:
    if rv in (None, ""):
        return None
    try:
        return int(rv)
    except (TypeError, ValueError):
        raise errors.bad_request(f"invalid resourceVersion {rv!r}: must be an integer") from None


class Api:
    def __init__(
        self,
        store: Store,
        registry: Registry | None = None,
        *,
        event_ttl: float | None = DEFAULT_EVENT_TTL,
    ) -> None:
        """``event_ttl``: seconds an Event lives after its last write (None: for ever)."""
        self.store = store
        self.event_ttl = event_ttl
        self.registry = registry or Registry()
        for crd in store.list(CRD_TYPE.storage_key):
            self.registry.set_crd(crd)
        for ns in INITIAL_NAMESPACES:
            if store.get(NAMESPACE_TYPE.storage_key, "", ns) is None:
                self.create(NAMESPACE_TYPE, "", {"metadata": {"name": ns}})
        for rtype, objects in (
            (builtin(RBAC_GROUP, "clusterroles"), bootstrap.CLUSTER_ROLES),
            (builtin(RBAC_GROUP, "clusterrolebindings"), bootstrap.CLUSTER_ROLE_BINDINGS),
            (builtin("scheduling.k8s.io", "priorityclasses"), bootstrap.PRIORITY_CLASSES),
        ):
            for obj in objects:
                if store.get(rtype.storage_key, "", obj["metadata"]["name"]) is None:
                    self.create(rtype, "", obj)

    # -- helpers --------------------------------------------------------------------------

    def _out(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        # Custom resources are stored once for all versions; answer in the version asked for.
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        return obj

    def _ns(self, rtype: ResourceType, namespace: str | None) -> str:
        if rtype.namespaced:
            if not namespace:
                raise errors.bad_request(f"{rtype.plural} are namespaced: a namespace is required")
            return namespace
        return ""

    def _existing(self, rtype: ResourceType, ns: str, name: str) -> dict[str, Any]:
        obj = self.store.get(rtype.storage_key, ns, name)
        if obj is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        return obj

    def _matcher(self, rtype: ResourceType, label_selector: str | None, field_selector: str | None):
        try:
            labels = parse_label_selector(label_selector)
            fields = parse_field_selector(field_selector, rtype.field_selectors)
        except SelectorError as e:
            raise errors.bad_request(str(e)) from None
        return object_matcher(labels, fields)

    def _put(self, rtype: ResourceType, ns: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        ttl = self.event_ttl if rtype.storage_key == EVENT_TYPE.storage_key else None
        return self.store.put(rtype.storage_key, ns, name, obj, ttl=ttl)

    def _after_write(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        if rtype is CRD_TYPE:
            self.registry.set_crd(obj)

    # -- verbs ----------------------------------------------------------------------------

    def create(
        self,
        rtype: ResourceType,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        strict: bool = False,
    ) -> dict[str, Any]:
        """``strict``: unknown fields of custom resources are refused (else dropped)."""
        ns = self._ns(rtype, namespace)
        obj = prepare_create(rtype, body, ns, strict=strict)
        name = obj["metadata"]["name"]
        if rtype.namespaced and self.store.get(NAMESPACE_TYPE.storage_key, "", ns) is None:
            raise errors.not_found("namespaces", "", ns)
        if self.store.get(rtype.storage_key, ns, name) is not None:
            raise errors.already_exists(rtype.plural, rtype.group, name)
        if rtype.plural == "services" and not rtype.group:
            allocate_service_addresses(obj, self.store.list(rtype.storage_key))
        check_object(rtype.plural, rtype.group, name, obj)
        if dry_run:
            return self._out(rtype, obj)
        stored = self._put(rtype, ns, name, obj)
        self._after_write(rtype, stored)
        return self._out(rtype, stored)

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        return self._out(rtype, self._existing(rtype, self._ns(rtype, namespace), name))

    def list_objects(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Matching objects and the version the list is consistent at."""
        match = self._matcher(rtype, label_selector, field_selector)
        ns = namespace if rtype.namespaced and namespace else None
        items = [self._out(rtype, o) for o in self.store.list(rtype.storage_key, ns) if match(o)]
        return items, self.store.rv

    def list(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> dict[str, Any]:
        """A List object; with ``limit``, one page and a ``continue`` token for the next.

        Pages after the first show the current objects (not a snapshot) but report the first
        page's resourceVersion, so a watch started from it misses nothing.
        """
        items, rv = self.list_objects(
            rtype, namespace, label_selector=label_selector, field_selector=field_selector
        )
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if continue_token:
            rv, after = _decode_continue(continue_token)
            if rv < self.store.floor:
                raise errors.gone(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter."
                )
            meta["resourceVersion"] = str(rv)
            items = [o for o in items if _sort_key(o) > after]
        if limit is not None and limit > 0 and len(items) > limit:
            meta["continue"] = _encode_continue(rv, _sort_key(items[limit - 1]))
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {
            "kind": rtype.list_kind,
            "apiVersion": rtype.api_version,
            "metadata": meta,
            "items": items,
        }

    def _write(
        self,
        rtype: ResourceType,
        ns: str,
        old: dict[str, Any],
        body: dict[str, Any],
        subresource: str | None,
        dry_run: bool,
        strict: bool = False,
    ) -> dict[str, Any]:
        wanted = _precondition((body.get("metadata") or {}).get("resourceVersion"))
        if wanted is not None and wanted != int(old["metadata"]["resourceVersion"]):
            raise errors.conflict(rtype.plural, rtype.group, old["metadata"]["name"])
        new = prepare_update(rtype, old, body, subresource=subresource, strict=strict)
        if rtype.plural == "services" and not rtype.group:
            keep_service_addresses(new, old)
        name = old["metadata"]["name"]
        check_object(rtype.plural, rtype.group, name, new)
        if new == old or dry_run:
            # No change: like kube-apiserver, no write and no new resourceVersion.
            return self._out(rtype, new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            # The last finalizer of an object being deleted is gone: now it really goes.
            return self._remove(rtype, ns, name, new)
        stored = self._put(rtype, ns, name, new)
        self._after_write(rtype, stored)
        return self._out(rtype, stored)

    def replace(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        strict: bool = False,
    ) -> dict[str, Any]:
        ns = self._ns(rtype, namespace)
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        old = self._existing(rtype, ns, name)
        return self._write(rtype, ns, old, body, subresource, dry_run, strict)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        strict: bool = False,
    ) -> dict[str, Any]:
        ns = self._ns(rtype, namespace)
        media = content_type.split(";")[0].strip().lower()
        if media == STRATEGIC and rtype.custom:
            raise errors.unsupported_media_type(
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/json-patch+json, application/merge-patch+json, "
                f"application/apply-patch+yaml (strategic merge patch is not supported for "
                f"custom resource {rtype.plural}.{rtype.group})"
            )
        old = self._existing(rtype, ns, name)
        try:
            patched = apply_patch(
                content_type, self._out(rtype, json.loads(json.dumps(old))), patch
            )
        except PatchTooLarge as e:
            raise errors.request_too_large(str(e)) from None
        except PatchError as e:
            if "unsupported patch type" in str(e):
                raise errors.unsupported_media_type(str(e)) from None
            raise errors.ApiError(422, "Invalid", f"the patch could not be applied: {e}") from None
        if not isinstance(patched, dict):
            raise errors.bad_request("the patch did not produce a JSON object")
        # The patched object keeps the current resourceVersion unless the patch set one (any
        # format); a set one is a precondition, checked in _write like a PUT's.
        return self._write(rtype, ns, old, patched, subresource, dry_run, strict)

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        *,
        precondition_rv: str | None = None,
        precondition_uid: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        ns = self._ns(rtype, namespace)
        old = self._existing(rtype, ns, name)
        if precondition_rv and precondition_rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rtype.plural, rtype.group, name)
        if precondition_uid and precondition_uid != old["metadata"].get("uid"):
            raise errors.conflict(rtype.plural, rtype.group, name)
        if dry_run:
            return self._out(rtype, old)
        if old["metadata"].get("finalizers"):
            # Finalizers hold the object: mark it deleted and let their owners remove them.
            if old["metadata"].get("deletionTimestamp"):
                return self._out(rtype, old)
            marked = json.loads(json.dumps(old))
            marked["metadata"]["deletionTimestamp"] = now_rfc3339()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._out(rtype, self._put(rtype, ns, name, marked))
        return self._remove(rtype, ns, name, old)

    def _remove(
        self, rtype: ResourceType, ns: str, name: str, old: dict[str, Any]
    ) -> dict[str, Any]:
        if rtype is NAMESPACE_TYPE:
            for resource, member in self.store.namespaces_in_use(name):
                self.store.delete(resource, name, member)
        if rtype is CRD_TYPE:
            key = f"{old['spec']['group']}/{old['spec']['names']['plural']}"
            for obj in self.store.list(key):
                self.store.delete(
                    key, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
                )
            self.registry.remove_crd(name)
        gone = self.store.delete(rtype.storage_key, ns, name)
        assert gone is not None
        return self._out(rtype, gone)

    def delete_collection(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> dict[str, Any]:
        items, _ = self.list_objects(
            rtype, namespace, label_selector=label_selector, field_selector=field_selector
        )
        for obj in items:
            self.delete(rtype, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        return self.list(
            rtype, namespace, label_selector=label_selector, field_selector=field_selector
        ) | {"items": items}

    def watch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        bookmarks: bool = False,
        max_events: int = MAX_QUEUED_EVENTS,
        max_bytes: int = MAX_QUEUED_BYTES,
        on_overflow: Callable[[], None] | None = None,
    ) -> WatchStream:
        """A watch; raises ApiError 410 (Expired) when ``resource_version`` is too old.

        ``max_events``/``max_bytes`` bound what the stream holds for a slow client; past them it
        is closed and ``on_overflow`` called (see :mod:`raven.lab.apiserver.watch`).
        """
        match = self._matcher(rtype, label_selector, field_selector)
        since = _precondition(resource_version)
        # "0" means "any version": like kube-apiserver, start with the current state.
        if since == 0:
            since = None

        def bookmark(rv: int) -> dict[str, Any]:
            return {
                "kind": rtype.kind,
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": str(rv)},
            }

        ns = namespace if rtype.namespaced and namespace else None
        try:
            stream = WatchStream(
                self.store,
                rtype.storage_key,
                namespace=ns,
                match=match,
                since=since,
                bookmark=bookmark if bookmarks else None,
                max_events=max_events,
                max_bytes=max_bytes,
                on_overflow=on_overflow,
            )
        except TooOld as e:
            raise errors.gone(f"too old resource version: {e.requested} ({e.oldest})") from None
        return stream
