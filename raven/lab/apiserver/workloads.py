"""Defaults and validation of ConfigMap, Secret, Service, DaemonSet and PriorityClass, as
kube-apiserver applies them (see :mod:`raven.lab.apiserver.kinds`)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from raven.lab.apiserver.validation import dns_label, dns_subdomain, qualified_key

Problems = list[tuple[str, str]]
Obj = dict[str, Any]

_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
# kube-apiserver's limits on what a ConfigMap or a Secret holds.
MAX_DATA_BYTES = 1024 * 1024
# The highest value a PriorityClass not made by the system may have.
HIGHEST_USER_PRIORITY = 1_000_000_000
SYSTEM_PRIORITY_CLASSES = {
    "system-node-critical": 2_000_001_000,
    "system-cluster-critical": 2_000_000_000,
}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# -- defaults -----------------------------------------------------------------------------------


def default_secret(obj: Obj) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        data = obj.setdefault("data", {})
        if isinstance(data, dict):
            for key, value in string_data.items():
                if isinstance(value, str):
                    data[key] = base64.b64encode(value.encode()).decode()


def default_service(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    for port in _list(spec.get("ports")):
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])
    obj.setdefault("status", {"loadBalancer": {}})


def default_container(container: Obj) -> None:
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    image = str(container.get("image", ""))
    tag = image.rsplit("/", 1)[-1]
    latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
    container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    for port in _list(container.get("ports")):
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def default_daemonset(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    strategy = spec.setdefault("updateStrategy", {})
    if isinstance(strategy, dict):
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            if isinstance(rolling, dict):
                rolling.setdefault("maxUnavailable", 1)
                rolling.setdefault("maxSurge", 0)
    spec.setdefault("revisionHistoryLimit", 10)
    pod = _dict(_dict(spec.get("template")).get("spec"))
    if pod:
        pod.setdefault("restartPolicy", "Always")
        pod.setdefault("terminationGracePeriodSeconds", 30)
        pod.setdefault("dnsPolicy", "ClusterFirst")
        pod.setdefault("securityContext", {})
        pod.setdefault("schedulerName", "default-scheduler")
        for container in _list(pod.get("containers")) + _list(pod.get("initContainers")):
            if isinstance(container, dict):
                default_container(container)
    obj.setdefault(
        "status",
        {
            "currentNumberScheduled": 0,
            "numberMisscheduled": 0,
            "desiredNumberScheduled": 0,
            "numberReady": 0,
        },
    )


def default_priority_class(obj: Obj) -> None:
    obj.setdefault("preemptionPolicy", "PreemptLowerPriority")


# -- validation ---------------------------------------------------------------------------------


def _data_problems(obj: Obj, *, binary_field: str, base64_values: bool) -> Problems:
    problems: Problems = []
    total = 0
    keys: set[str] = set()
    for field in ("data", binary_field):
        values = obj.get(field)
        if values is None:
            continue
        if not isinstance(values, dict):
            problems.append((field, "Invalid value: must be a map of strings"))
            continue
        for key, value in values.items():
            if len(key) > 253 or not _CONFIG_KEY.match(key):
                problems.append(
                    (
                        f"{field}[{key}]",
                        f"Invalid value: {key!r}: a valid config key must consist of "
                        "alphanumeric characters, '-', '_' or '.'",
                    )
                )
            if key in keys:
                problems.append((f"{field}[{key}]", "Invalid value: duplicate of key in data"))
            keys.add(key)
            if not isinstance(value, str):
                problems.append((f"{field}[{key}]", "Invalid value: must be a string"))
                continue
            if base64_values or field == binary_field:
                try:
                    total += len(base64.b64decode(value, validate=True))
                except (binascii.Error, ValueError):
                    problems.append((f"{field}[{key}]", "Invalid value: not valid base64"))
            else:
                total += len(value.encode())
    if total > MAX_DATA_BYTES:
        problems.append(("data", f"Too long: must have at most {MAX_DATA_BYTES} bytes"))
    return problems


def configmap_problems(obj: Obj, old: Obj | None) -> Problems:
    return _data_problems(obj, binary_field="binaryData", base64_values=False)


def secret_problems(obj: Obj, old: Obj | None) -> Problems:
    problems = _data_problems(obj, binary_field="__none__", base64_values=True)
    if not isinstance(obj.get("type"), str) or not obj["type"]:
        problems.append(("type", "Required value"))
    elif old is not None and old.get("type") != obj["type"]:
        problems.append(("type", "Invalid value: field is immutable"))
    return problems


def _port_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def service_problems(obj: Obj, old: Obj | None) -> Problems:
    problems: Problems = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [("spec", "Required value")]
    kind = spec.get("type")
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        problems.append(
            (
                "spec.type",
                f'Unsupported value: {kind!r}: supported values: "ClusterIP", "ExternalName", '
                '"LoadBalancer", "NodePort"',
            )
        )
    ports = spec.get("ports")
    headless = spec.get("clusterIP") == "None"
    if kind != "ExternalName" and not headless and not ports:
        problems.append(("spec.ports", "Required value"))
    names: set[str] = set()
    for i, port in enumerate(_list(ports)):
        where = f"spec.ports[{i}]"
        if not isinstance(port, dict):
            problems.append((where, "Invalid value: must be an object"))
            continue
        if not _port_number(port.get("port")):
            problems.append(
                (
                    f"{where}.port",
                    f"Invalid value: {port.get('port')!r}: must be between 1 and 65535, inclusive",
                )
            )
        if port.get("protocol") not in ("TCP", "UDP", "SCTP"):
            problems.append(
                (
                    f"{where}.protocol",
                    f"Unsupported value: {port.get('protocol')!r}: supported "
                    'values: "SCTP", "TCP", "UDP"',
                )
            )
        name = port.get("name", "")
        if len(_list(ports)) > 1 and not name:
            problems.append((f"{where}.name", "Required value"))
        elif name and (not isinstance(name, str) or not _IANA_SVC_NAME.match(name)):
            problems.append((f"{where}.name", f"Invalid value: {name!r}"))
        elif name in names:
            problems.append((f"{where}.name", f"Duplicate value: {name!r}"))
        names.add(name)
        target = port.get("targetPort")
        if isinstance(target, str):
            if not _IANA_SVC_NAME.match(target):
                problems.append((f"{where}.targetPort", f"Invalid value: {target!r}"))
        elif target is not None and not _port_number(target):
            problems.append(
                (
                    f"{where}.targetPort",
                    f"Invalid value: {target!r}: must be between 1 and 65535, inclusive",
                )
            )
    selector = spec.get("selector")
    if selector is not None:
        problems += _label_map(selector, "spec.selector")
    if old is not None:
        before = _dict(old.get("spec")).get("clusterIP")
        if before and spec.get("clusterIP") not in (None, "", before):
            problems.append(("spec.clusterIP", "Invalid value: field is immutable"))
    return problems


def _label_map(value: Any, where: str) -> Problems:
    if not isinstance(value, dict):
        return [(where, "Invalid value: must be a map of strings")]
    problems: Problems = []
    for key, item in value.items():
        if (msg := qualified_key(key)) is not None:
            problems.append((where, msg))
        if not isinstance(item, str):
            problems.append((f"{where}.{key}", "Invalid value: must be a string"))
    return problems


def _selector_matches(selector: dict[str, Any], labels: dict[str, Any]) -> bool:
    for key, value in _dict(selector.get("matchLabels")).items():
        if labels.get(key) != value:
            return False
    for expr in _list(selector.get("matchExpressions")):
        if not isinstance(expr, dict):
            return False
        key, op, values = str(expr.get("key")), expr.get("operator"), _list(expr.get("values"))
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _containers(pod: Obj, where: str) -> Problems:
    problems: Problems = []
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        return [(f"{where}.containers", "Required value")]
    seen: set[str] = set()
    for field in ("initContainers", "containers"):
        for i, c in enumerate(_list(pod.get(field))):
            at = f"{where}.{field}[{i}]"
            if not isinstance(c, dict):
                problems.append((at, "Invalid value: must be an object"))
                continue
            name = c.get("name")
            if not isinstance(name, str) or not name:
                problems.append((f"{at}.name", "Required value"))
            elif (msg := dns_label(name)) is not None:
                problems.append((f"{at}.name", msg))
            elif name in seen:
                problems.append((f"{at}.name", f'Duplicate value: "{name}"'))
            else:
                seen.add(name)
            if not isinstance(c.get("image"), str) or not c["image"].strip():
                problems.append((f"{at}.image", "Required value"))
            for j, port in enumerate(_list(c.get("ports"))):
                if not isinstance(port, dict) or not _port_number(port.get("containerPort")):
                    problems.append(
                        (
                            f"{at}.ports[{j}].containerPort",
                            "Invalid value: must be between 1 and 65535, inclusive",
                        )
                    )
    account = pod.get("serviceAccountName")
    if account and (not isinstance(account, str) or dns_subdomain(account)):
        problems.append((f"{where}.serviceAccountName", f"Invalid value: {account!r}"))
    return problems


def daemonset_problems(obj: Obj, old: Obj | None) -> Problems:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [("spec", "Required value")]
    problems: Problems = []
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not (
        selector.get("matchLabels") or selector.get("matchExpressions")
    ):
        problems.append(("spec.selector", "Required value"))
        selector = None
    template = _dict(spec.get("template"))
    labels = _dict(_dict(template.get("metadata")).get("labels"))
    if selector is not None and not _selector_matches(selector, labels):
        problems.append(
            (
                "spec.template.metadata.labels",
                "Invalid value: `selector` does not match template `labels`",
            )
        )
    pod = template.get("spec")
    if not isinstance(pod, dict):
        problems.append(("spec.template.spec", "Required value"))
    else:
        problems += _containers(pod, "spec.template.spec")
        if pod.get("restartPolicy", "Always") != "Always":
            problems.append(
                (
                    "spec.template.spec.restartPolicy",
                    f'Unsupported value: {pod.get("restartPolicy")!r}: supported values: "Always"',
                )
            )
    strategy = _dict(spec.get("updateStrategy")).get("type")
    if strategy not in ("RollingUpdate", "OnDelete"):
        problems.append(
            (
                "spec.updateStrategy.type",
                f'Unsupported value: {strategy!r}: supported values: "OnDelete", "RollingUpdate"',
            )
        )
    if old is not None and _dict(old.get("spec")).get("selector") != spec.get("selector"):
        problems.append(("spec.selector", "Invalid value: field is immutable"))
    return problems


def priority_class_problems(obj: Obj, old: Obj | None) -> Problems:
    problems: Problems = []
    value = obj.get("value")
    name = obj["metadata"].get("name", "")
    system = str(name).startswith("system-")
    if system and name not in SYSTEM_PRIORITY_CLASSES:
        problems.append(
            ("metadata.name", "Forbidden: priority class names with 'system-' prefix are reserved")
        )
    if not isinstance(value, int) or isinstance(value, bool) or not -(2**31) <= value < 2**31:
        problems.append(("value", "Required value: an integer in the int32 range"))
    elif value > HIGHEST_USER_PRIORITY and not system:
        problems.append(
            (
                "value",
                f"Forbidden: maximum allowed value of a user defined priority is "
                f"{HIGHEST_USER_PRIORITY}",
            )
        )
    if obj.get("preemptionPolicy") not in ("PreemptLowerPriority", "Never"):
        problems.append(
            (
                "preemptionPolicy",
                f"Unsupported value: {obj.get('preemptionPolicy')!r}: supported "
                'values: "Never", "PreemptLowerPriority"',
            )
        )
    if old is not None and old.get("value") != value:
        problems.append(("value", "Forbidden: may not be changed in an update."))
    return problems
