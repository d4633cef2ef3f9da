"""Who is asking, as whom, and whether they may: the three checks before a request is served.

:class:`Access` authenticates the caller: a client certificate the TLS layer verified against the
lab CA (its CN and O values, as kube-apiserver's x509 authenticator; a node is
``system:node:<name>`` in ``system:nodes``), else the bearer token (the admin's, or a
service-account token this server issued for an account that still exists). It applies
impersonation headers (``kubectl --as``) when the caller may ``impersonate`` those users,
service accounts and groups, and authorizes: a node (``system:node:<name>``) first by the Node
authorizer's rules (:mod:`raven.lab.apiserver.nodeauthz`), then everyone by RBAC from the
stored Roles, ClusterRoles and bindings (kept in an :class:`RbacCache` that every write to them
invalidates), as kube-apiserver's ``--authorization-mode=Node,RBAC``. :meth:`Access.admit` is
the NodeRestriction admission plugin. The HTTP layer turns the errors into 401 and 403 answers.
"""

from __future__ import annotations

import secrets
from typing import Any

from raven.lab.apiserver import errors, nodeauthz
from raven.lab.apiserver.authn import (
    ADMIN,
    TokenIssuer,
    UserInfo,
    certificate_user,
    service_account_of,
    service_account_user,
)
from raven.lab.apiserver.rbac import Decision, Rbac, RbacCache, forbidden
from raven.lab.apiserver.requestinfo import RequestInfo
from raven.lab.apiserver.resources import RBAC_GROUP, SERVICE_ACCOUNT_TYPE, builtin
from raven.lab.apiserver.store import Store

RBAC_KINDS = ("roles", "clusterroles", "rolebindings", "clusterrolebindings")

# aiohttp's request.headers: case-insensitive, with getall() for repeated headers.
Headers = Any
EXTRA_PREFIX = "impersonate-extra-"


def _impersonate(
    resource: str, name: str, *, namespace: str = "", group: str = "", subresource: str = ""
) -> RequestInfo:
    return RequestInfo(
        verb="impersonate",
        path="",
        resource_request=True,
        api_group=group,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
    )


class Access:
    def __init__(self, store: Store, admin_token: str, tokens: TokenIssuer) -> None:
        self._store = store
        self._admin_token = admin_token.encode()
        self.tokens = tokens
        self.rbac = RbacCache(self._load_rbac)
        for kind in RBAC_KINDS:
            store.subscribe(builtin(RBAC_GROUP, kind).storage_key, self.rbac.invalidate)

    def _load_rbac(self) -> Rbac:
        def objects(kind: str) -> list[dict[str, Any]]:
            return self._store.list(builtin(RBAC_GROUP, kind).storage_key)

        return Rbac(
            roles=objects("roles"),
            cluster_roles=objects("clusterroles"),
            role_bindings=objects("rolebindings"),
            cluster_role_bindings=objects("clusterrolebindings"),
        )

    def authenticate(self, headers: Headers, peer_certificate: bytes | None = None) -> UserInfo:
        """Who is asking: the user of ``peer_certificate`` (DER, already verified against the
        lab CA during the TLS handshake) when the client presented one, as kube-apiserver's
        x509 authenticator comes before its token authenticators; else the admin or a service
        account, from the bearer token; 401 for anything else."""
        if peer_certificate:
            by_certificate = certificate_user(peer_certificate)
            if by_certificate is not None:
                return by_certificate
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise errors.unauthorized()
        if secrets.compare_digest(token.encode(), self._admin_token):
            return ADMIN
        claims = self.tokens.verify(token)
        if claims is not None:
            account = self._store.get(
                SERVICE_ACCOUNT_TYPE.storage_key, claims.namespace, claims.name
            )
            # A deleted (or deleted and re-made) ServiceAccount's tokens stop working.
            if account is not None and account["metadata"].get("uid") == claims.uid:
                return service_account_user(claims.namespace, claims.name, claims.uid)
        raise errors.unauthorized()

    def impersonate(self, headers: Headers, user: UserInfo) -> UserInfo | None:
        """The user to act as, per the ``Impersonate-*`` headers (None without them), as
        kube-apiserver does; 403 naming the first user, account or group ``user`` may not be."""
        as_user = headers.get("Impersonate-User", "")
        as_groups = headers.getall("Impersonate-Group", [])
        as_uid = headers.get("Impersonate-Uid", "")
        extras = {
            key[len(EXTRA_PREFIX) :].lower(): tuple(headers.getall(key))
            for key in {k for k in headers if k.lower().startswith(EXTRA_PREFIX)}
        }
        if not as_user:
            if as_groups or as_uid or extras:
                raise errors.bad_request(
                    "requested impersonation of groups, uid or extra without impersonating a user"
                )
            return None
        account = service_account_of(as_user)
        if account:
            checks = [_impersonate("serviceaccounts", account[1], namespace=account[0])]
        else:
            checks = [_impersonate("users", as_user)]
        checks += [_impersonate("groups", g) for g in as_groups]
        if as_uid:
            checks.append(_impersonate("uids", as_uid, group="authentication.k8s.io"))
        for key, values in extras.items():
            checks += [
                _impersonate("userextras", v, group="authentication.k8s.io", subresource=key)
                for v in values
            ]
        for check in checks:
            decision = self.authorize(user, check)
            if not decision.allowed:
                raise forbidden(user, check, decision.reason)
        groups = list(as_groups)
        if account and not groups:
            groups = ["system:serviceaccounts", f"system:serviceaccounts:{account[0]}"]
        if as_user != "system:anonymous" and "system:authenticated" not in groups:
            groups.append("system:authenticated")
        return UserInfo(as_user, tuple(groups), as_uid, extras)

    def authorize(self, user: UserInfo, info: RequestInfo) -> Decision:
        """Node authorizer, then RBAC; a refusal gives both their reasons, as kube-apiserver's
        union of authorizers does."""
        by_node = nodeauthz.authorize(user, info)
        if by_node is not None and by_node.allowed:
            return by_node
        decision = self.rbac.get().authorize(user, info)
        if decision.allowed or by_node is None or not by_node.reason:
            return decision
        reasons = [r for r in (by_node.reason, decision.reason) if r]
        return Decision(False, "\n".join(reasons))

    def admit(self, user: UserInfo, info: RequestInfo, name: str) -> None:
        """Admission after authorization: NodeRestriction (a node writes only its own Node and
        Lease); ``name`` is the object's, from the body on create. 403 when refused."""
        nodeauthz.admit(user, info, name)
