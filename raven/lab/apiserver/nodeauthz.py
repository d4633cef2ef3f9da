"""What a node may do: kube-apiserver's Node authorizer with the ``system:node`` rules, and the
NodeRestriction admission plugin, for users ``system:node:<name>`` in ``system:nodes``.

Pure. :func:`authorize` is asked before RBAC (RBAC bindings may still grant a node more) and
answers None for anyone who is not a node and for requests it has no rule about; the union in
:class:`raven.lab.apiserver.access.Access` then asks RBAC, and a refusal carries this module's
reason after kube-apiserver's usual words. What a node is allowed here (a kubelet's needs, as
kube-apiserver's node rules give them):

- ``nodes``: get, list, watch any; create, update, patch (and ``nodes/status`` get, update,
  patch) its own only, which :func:`admit` checks as NodeRestriction does (``node "a" is not
  allowed to modify node "b"``). ``nodes/status`` get is more than kube-apiserver gives (kubectl
  patch --subresource=status reads it first; a node reads every Node anyway);
- ``leases.coordination.k8s.io`` in ``kube-node-lease``: get, list, watch; create, update,
  patch, delete only the Lease named like the node (``can only access node lease with the same
  name as the requesting node``; on create :func:`admit` reads the name from the body). The
  Node authorizer of kube-apiserver does not allow list and watch of Leases; here they are
  allowed so that a node can follow its pool's heartbeats;
- ``events`` (core and ``events.k8s.io``): create, update, patch in any namespace;
- ``services``, ``endpoints``, ``endpointslices.discovery.k8s.io``, ``pods``: get, list, watch.
"""

from __future__ import annotations

from raven.lab.apiserver import errors
from raven.lab.apiserver.authn import NODE_GROUP, UserInfo, node_of
from raven.lab.apiserver.rbac import Decision
from raven.lab.apiserver.requestinfo import RequestInfo

NODE_LEASE_NAMESPACE = "kube-node-lease"
COORDINATION_GROUP = "coordination.k8s.io"
READ = frozenset({"get", "list", "watch"})
WRITE_OWN = frozenset({"create", "update", "patch"})
LEASE_WRITES = frozenset({"create", "update", "patch", "delete"})
EVENT_WRITES = frozenset({"create", "update", "patch"})
SAME_LEASE = "can only access node lease with the same name as the requesting node"
LEASE_NAMESPACE = f'can only access leases in the "{NODE_LEASE_NAMESPACE}" system namespace'
LEASE_VERBS = "can only get, list, watch, create, update, patch, or delete a node lease"

# (group, resource path) -> verbs granted to every node, whatever the object.
_NODE_RULES: dict[tuple[str, str], frozenset[str]] = {
    ("", "nodes"): READ | WRITE_OWN,
    # get: kubectl patch --subresource=status reads it first; a node reads every Node anyway.
    ("", "nodes/status"): frozenset({"get", "update", "patch"}),
    ("", "events"): EVENT_WRITES,
    ("events.k8s.io", "events"): EVENT_WRITES,
    ("", "services"): READ,
    ("", "endpoints"): READ,
    ("discovery.k8s.io", "endpointslices"): READ,
    ("", "pods"): READ,
}


def requesting_node(user: UserInfo) -> str | None:
    """The node ``user`` is, as kube-apiserver's node identifier sees it: a
    ``system:node:<name>`` user in the ``system:nodes`` group; else None."""
    if NODE_GROUP not in user.groups:
        return None
    return node_of(user.name)


def _is_lease(info: RequestInfo) -> bool:
    return info.api_group == COORDINATION_GROUP and info.resource == "leases"


def _lease(node: str, info: RequestInfo) -> Decision:
    if info.subresource or info.verb not in READ | LEASE_WRITES:
        return Decision(False, LEASE_VERBS)
    if info.namespace != NODE_LEASE_NAMESPACE:
        return Decision(False, LEASE_NAMESPACE)
    # On create the name is in the body, which admit() reads.
    if info.verb in LEASE_WRITES - {"create"} and info.name != node:
        return Decision(False, SAME_LEASE)
    return Decision(True)


def authorize(user: UserInfo, info: RequestInfo) -> Decision | None:
    """The Node authorizer's answer for ``user`` (None: not a node, or no opinion without a
    reason). A refusal with a reason means no opinion, so RBAC is still asked."""
    node = requesting_node(user)
    if node is None or not info.resource_request:
        return None
    if _is_lease(info):
        return _lease(node, info)
    verbs = _NODE_RULES.get((info.api_group, info.resource_path))
    if verbs is not None and info.verb in verbs:
        return Decision(True)
    return None


def _admission_forbidden(info: RequestInfo, name: str, reason: str) -> errors.ApiError:
    qualified = f"{info.resource}.{info.api_group}" if info.api_group else info.resource
    return errors.ApiError(
        403,
        "Forbidden",
        f'{qualified} "{name}" is forbidden: {reason}',
        name=name,
        group=info.api_group,
        kind=info.resource,
    )


def admit(user: UserInfo, info: RequestInfo, name: str) -> None:
    """NodeRestriction: a node writes only its own Node and its own Lease; ``name`` is the
    object's (on create, from the body). Raises 403 with kube-apiserver's words; anyone who
    is not a node, and every read, passes."""
    node = requesting_node(user)
    if node is None or not info.resource_request or info.verb in READ:
        return
    if info.api_group == "" and info.resource == "nodes" and name != node:
        raise _admission_forbidden(
            info, name, f'node "{node}" is not allowed to modify node "{name}"'
        )
    if _is_lease(info):
        if info.namespace != NODE_LEASE_NAMESPACE:
            raise _admission_forbidden(info, name, LEASE_NAMESPACE)
        if name != node:
            raise _admission_forbidden(info, name, SAME_LEASE)
