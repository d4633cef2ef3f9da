"""Patch formats: JSON merge, JSON patch, strategic merge."""

from __future__ import annotations

import pytest

from raven.lab.apiserver.patch import (
    PatchError,
    apply_patch,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)

DOC = {
    "metadata": {"labels": {"a": "1", "b": "2"}},
    "status": {
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "Memory", "status": "False"}]
    },
    "spec": {"list": [1, 2]},
}


def test_merge_patch_merges_maps_deletes_nulls_replaces_lists():
    out = merge_patch(DOC, {"metadata": {"labels": {"a": None, "c": "3"}}, "spec": {"list": [9]}})
    assert out["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert out["spec"]["list"] == [9]
    assert DOC["metadata"]["labels"] == {"a": "1", "b": "2"}  # input untouched


def test_strategic_merge_patch_as_kubectl_label_sends_it():
    out = strategic_merge_patch(DOC, {"metadata": {"labels": {"b": None, "x": "y"}}})
    assert out["metadata"]["labels"] == {"a": "1", "x": "y"}


def test_strategic_merge_patch_merges_conditions_by_type():
    out = strategic_merge_patch(
        DOC,
        {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "False"},
                    {"type": "Disk", "status": "True"},
                ]
            },
            "$setElementOrder/conditions": [
                {"type": "Ready"},
                {"type": "Memory"},
                {"type": "Disk"},
            ],
        },
    )
    assert out["status"]["conditions"] == [
        {"type": "Ready", "status": "False"},
        {"type": "Memory", "status": "False"},
        {"type": "Disk", "status": "True"},
    ]
    gone = strategic_merge_patch(
        DOC, {"status": {"conditions": [{"type": "Memory", "$patch": "delete"}]}}
    )
    assert [c["type"] for c in gone["status"]["conditions"]] == ["Ready"]
    replaced = strategic_merge_patch(DOC, {"metadata": {"labels": {"$patch": "replace", "z": "1"}}})
    assert replaced["metadata"]["labels"] == {"z": "1"}


def test_json_patch_operations():
    ops = [
        {"op": "add", "path": "/metadata/labels/c~1d", "value": "3"},
        {"op": "remove", "path": "/metadata/labels/a"},
        {"op": "replace", "path": "/spec/list/0", "value": 7},
        {"op": "add", "path": "/spec/list/-", "value": 8},
        {"op": "copy", "from": "/spec/list", "path": "/spec/copy"},
        {"op": "move", "from": "/metadata/labels/b", "path": "/spec/moved"},
        {"op": "test", "path": "/spec/moved", "value": "2"},
    ]
    out = json_patch(DOC, ops)
    assert out["metadata"]["labels"] == {"c/d": "3"}
    assert out["spec"] == {"list": [7, 2, 8], "copy": [7, 2, 8], "moved": "2"}


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "remove", "path": "/nope"}],
        [{"op": "replace", "path": "/spec/nope", "value": 1}],
        [{"op": "test", "path": "/spec/list/0", "value": 5}],
        [{"op": "frobnicate", "path": "/spec"}],
        [{"op": "add", "path": "spec", "value": 1}],
        {"op": "add"},
    ],
)
def test_bad_json_patches_are_refused(ops):
    with pytest.raises(PatchError):
        json_patch(DOC, ops)


def test_dispatch_by_content_type():
    assert apply_patch("application/merge-patch+json; charset=utf-8", {"a": 1}, {"b": 2}) == {
        "a": 1,
        "b": 2,
    }
    with pytest.raises(PatchError, match="unsupported patch type"):
        apply_patch("application/apply-patch+yaml", {}, {})
