"""Defaults and validation of the built-in kinds a deployment uses, and Service addresses."""

from __future__ import annotations

import pytest

from raven.lab.apiserver import errors
from raven.lab.apiserver.api import Api
from raven.lab.apiserver.kinds import apply_defaults, problems
from raven.lab.apiserver.resources import RBAC_GROUP, builtin
from raven.lab.apiserver.store import Store

REF = {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "r"}


def fields(group, plural, obj, old=None):
    obj.setdefault("metadata", {"name": "x"})
    apply_defaults(group, plural, obj)
    return [f for f, _ in problems(group, plural, obj, old)]


@pytest.mark.parametrize(
    ("scenario", "group", "plural", "obj", "expected"),
    [
        ("configmap/key with a slash", "", "configmaps", {"data": {"a/b": "x"}}, ["data[a/b]"]),
        ("configmap/too big", "", "configmaps", {"data": {"a": "x" * (1024 * 1024 + 1)}}, ["data"]),
        ("secret/data not base64", "", "secrets", {"data": {"k": "%%%"}}, ["data[k]"]),
        ("service/no ports", "", "services", {"spec": {"selector": {"a": "b"}}}, ["spec.ports"]),
        ("service/headless needs none", "", "services", {"spec": {"clusterIP": "None"}}, []),
        (
            "service/port out of range",
            "",
            "services",
            {"spec": {"ports": [{"port": 70000}]}},
            ["spec.ports[0].port", "spec.ports[0].targetPort"],  # targetPort defaults to port
        ),
        (
            "service/two ports need names",
            "",
            "services",
            {"spec": {"ports": [{"port": 1}, {"port": 2, "name": "b"}]}},
            ["spec.ports[0].name"],
        ),
        (
            "service/unknown type",
            "",
            "services",
            {"spec": {"type": "Magic", "ports": [{"port": 1}]}},
            ["spec.type"],
        ),
        (
            "daemonset/no selector",
            "apps",
            "daemonsets",
            {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "i"}]}}}},
            ["spec.selector"],
        ),
        (
            "daemonset/duplicate container",
            "apps",
            "daemonsets",
            {
                "spec": {
                    "selector": {"matchLabels": {"a": "b"}},
                    "template": {
                        "metadata": {"labels": {"a": "b"}},
                        "spec": {
                            "containers": [{"name": "a", "image": "i"}, {"name": "a", "image": "i"}]
                        },
                    },
                }
            },
            ["spec.template.spec.containers[1].name"],
        ),
        (
            "daemonset/restartPolicy Never",
            "apps",
            "daemonsets",
            {
                "spec": {
                    "selector": {"matchLabels": {"a": "b"}},
                    "template": {
                        "metadata": {"labels": {"a": "b"}},
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "a", "image": "i"}],
                        },
                    },
                }
            },
            ["spec.template.spec.restartPolicy"],
        ),
        (
            "role/no verbs",
            RBAC_GROUP,
            "roles",
            {"rules": [{"apiGroups": [""], "resources": ["pods"]}]},
            ["rules[0].verbs"],
        ),
        (
            "role/non-resource URLs",
            RBAC_GROUP,
            "roles",
            {"rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]},
            ["rules[0].nonResourceURLs"],
        ),
        (
            "clusterrole/non-resource URLs",
            RBAC_GROUP,
            "clusterroles",
            {"rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]},
            [],
        ),
        (
            "clusterrole/resources without groups",
            RBAC_GROUP,
            "clusterroles",
            {"rules": [{"resources": ["pods"], "verbs": ["get"]}]},
            ["rules[0].apiGroups"],
        ),
        (
            "clusterrolebinding/account without namespace",
            RBAC_GROUP,
            "clusterrolebindings",
            {"roleRef": REF, "subjects": [{"kind": "ServiceAccount", "name": "sa"}]},
            ["subjects[0].namespace"],
        ),
        (
            "rolebinding/account without namespace",
            RBAC_GROUP,
            "rolebindings",
            {"roleRef": REF, "subjects": [{"kind": "ServiceAccount", "name": "sa"}]},
            [],
        ),
        (
            "clusterrolebinding/to a Role",
            RBAC_GROUP,
            "clusterrolebindings",
            {"roleRef": {**REF, "kind": "Role"}, "subjects": []},
            ["roleRef.kind"],
        ),
        (
            "binding/unknown subject kind",
            RBAC_GROUP,
            "rolebindings",
            {"roleRef": REF, "subjects": [{"kind": "Robot", "name": "r"}]},
            ["subjects[0].kind"],
        ),
        (
            "priorityclass/over a billion",
            "scheduling.k8s.io",
            "priorityclasses",
            {"value": 1_000_000_001},
            ["value"],
        ),
        (
            "priorityclass/reserved name",
            "scheduling.k8s.io",
            "priorityclasses",
            {"metadata": {"name": "system-mine"}, "value": 1},
            ["metadata.name"],
        ),
    ],
)
def test_validation(scenario, group, plural, obj, expected):
    assert fields(group, plural, obj) == expected, scenario


def test_changes_that_kube_apiserver_forbids():
    old_ds = {"metadata": {"name": "x"}, "spec": {"selector": {"matchLabels": {"a": "b"}}}}
    new_ds = {
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "c"}},
            "template": {
                "metadata": {"labels": {"a": "c"}},
                "spec": {"containers": [{"name": "a", "image": "i"}]},
            },
        },
    }
    assert fields("apps", "daemonsets", new_ds, old_ds) == ["spec.selector"]
    old_pc = {"metadata": {"name": "x"}, "value": 1}
    assert fields("scheduling.k8s.io", "priorityclasses", {"value": 2}, old_pc) == ["value"]


def test_defaults_as_kube_apiserver_fills_them():
    secret = {"stringData": {"k": "v"}}
    apply_defaults("", "secrets", secret)
    assert secret == {"type": "Opaque", "data": {"k": "dg=="}}
    ds = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "a", "image": "r:latest"},
                        {"name": "b", "image": "r:1"},
                    ]
                }
            }
        }
    }
    apply_defaults("apps", "daemonsets", ds)
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    pulls = [c["imagePullPolicy"] for c in ds["spec"]["template"]["spec"]["containers"]]
    assert pulls == ["Always", "IfNotPresent"]
    binding = {"subjects": [{"kind": "ServiceAccount", "name": "s"}, {"kind": "User", "name": "u"}]}
    apply_defaults(RBAC_GROUP, "rolebindings", binding)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "s"},
        {"kind": "User", "name": "u", "apiGroup": RBAC_GROUP},
    ]


def test_services_get_distinct_cluster_ips_and_a_taken_one_is_refused():
    api = Api(Store(None))
    services = builtin("", "services")

    def svc(name, **spec):
        return {"metadata": {"name": name}, "spec": {"ports": [{"port": 80}], **spec}}

    a = api.create(services, "default", svc("a"))
    b = api.create(services, "default", svc("b", type="NodePort"))
    assert (a["spec"]["clusterIP"], b["spec"]["clusterIP"]) == ("10.96.0.2", "10.96.0.3")
    assert b["spec"]["ports"][0]["nodePort"] == 30000
    with pytest.raises(errors.ApiError) as taken:
        api.create(services, "default", svc("c", clusterIP="10.96.0.2"))
    assert taken.value.code == 422 and "provided IP is already allocated" in taken.value.message
    # an update that leaves the address out keeps it
    kept = api.replace(services, "default", "a", svc("a"))
    assert kept["spec"]["clusterIP"] == "10.96.0.2"
