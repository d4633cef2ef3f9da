"""The churn's plan: the same seed gives the same operations; the Service count stays near its
target; slices keep their names and never repeat an address."""

from __future__ import annotations

from collections import Counter

import pytest

from raven.lab.churn import CREATE, DELETE, SCALE, ChurnPlan, slice_body


def _run(seed: int, steps: int = 500, services: int = 20) -> list:
    plan = ChurnPlan(services=services, seed=seed)
    return plan.initial() + [plan.step() for _ in range(steps)]


def test_same_seed_same_churn_other_seed_other_churn():
    assert _run(5) == _run(5)
    assert _run(5) != _run(6)


def test_mostly_scaling_with_services_created_and_deleted_near_the_target():
    plan = ChurnPlan(services=20, seed=11)
    plan.initial()
    counts, kinds = [], Counter()
    for _ in range(1000):
        kinds[plan.step().kind] += 1
        counts.append(len(plan.live()))
    assert 16 <= min(counts) and max(counts) <= 24
    assert kinds[SCALE] > 0.7 * 1000 and kinds[CREATE] > 20 and kinds[DELETE] > 20


def test_a_slice_scales_by_one_endpoint_and_keeps_its_name():
    plan = ChurnPlan(services=3, seed=2, max_endpoints=4)
    before = {op.service: op for op in plan.initial()}
    for _ in range(200):
        op = plan.step()
        if op.kind == SCALE:
            old = before[op.service]
            assert op.slice == old.slice
            assert abs(len(op.addresses) - len(old.addresses)) == 1
            assert 0 <= len(op.addresses) <= 4
        if op.kind == DELETE:
            before.pop(op.service)
        else:
            before[op.service] = op
    every = [a for op in _run(9, 300) if op.kind == CREATE for a in op.addresses]
    assert len(every) == len(set(every))


@pytest.mark.parametrize("headless", [False, True])
def test_slices_are_what_the_endpointslice_controller_writes(headless):
    plan = ChurnPlan(services=1, seed=1, headless=1.0 if headless else 0.0)
    op = plan.initial()[0]
    body = slice_body(op, "uid-1", nodes=["n1", "n2"])
    labels = body["metadata"]["labels"]
    assert labels["kubernetes.io/service-name"] == op.service
    assert ("service.kubernetes.io/headless" in labels) is headless
    assert body["metadata"]["name"].startswith(f"{op.service}-")
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert [e["addresses"] for e in body["endpoints"]] == [[a] for a in op.addresses]
    assert {e["nodeName"] for e in body["endpoints"]} <= {"n1", "n2"}
