"""Files holding secrets: 0600 whatever was there before, replaced atomically, durable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway import keys
from raven.lab.apiserver.kubeconfig import write_kubeconfig
from raven.lab.apiserver.pki import make_pki
from raven.secretfile import write_secret


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def fsyncs(monkeypatch):
    """Record, in order, renames and fsyncs (of files and of directories)."""
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file", ""))
        real_fsync(fd)

    def replace(src, dst) -> None:
        calls.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_private_key_over_a_leftover_world_readable_temp_file_is_0600(tmp_path):
    # What a crash (or anyone with access to the folder) leaves where the old code wrote.
    leftover = tmp_path / f".{keys.KEY_FILE}.{os.getpid()}.tmp"
    leftover.write_text("junk")
    leftover.chmod(0o644)
    pair = keys.load_or_create(tmp_path)
    assert mode(pair.path) == 0o600
    assert keys.load_or_create(tmp_path).public_key == pair.public_key


def test_private_key_rename_is_made_durable_by_a_directory_fsync(tmp_path, fsyncs):
    pair = keys.load_or_create(tmp_path)
    kinds = [kind for kind, _ in fsyncs]
    assert kinds == ["fsync-file", "replace", "fsync-dir"], fsyncs
    assert fsyncs[1][1] == str(pair.path)


def test_kubeconfig_rewritten_over_a_0644_file_becomes_0600(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text("old")
    path.chmod(0o644)
    write_kubeconfig(path, "https://127.0.0.1:6443", tmp_path / "ca.crt", "s3cret")
    assert mode(path) == 0o600
    assert "s3cret" in path.read_text()


def test_lab_token_and_keys_over_0644_files_become_0600(tmp_path):
    for name in ("token", "server.key"):
        (tmp_path / name).write_text("old")
        (tmp_path / name).chmod(0o644)
    pki = make_pki(tmp_path, ["127.0.0.1"])
    assert mode(pki.token_file) == 0o600 and mode(pki.server_key) == 0o600
    assert pki.token != "old"


def test_secret_is_0600_even_with_an_open_umask(tmp_path):
    old = os.umask(0)
    try:
        path = write_secret(tmp_path / "s", b"x")
    finally:
        os.umask(old)
    assert mode(path) == 0o600 and path.read_bytes() == b"x"


def test_a_failed_write_leaves_the_old_secret_and_no_temp_file(tmp_path):
    target = tmp_path / "dir-in-the-way"
    target.mkdir()
    (target / "keep").write_text("x")  # a non-empty directory cannot be replaced by a file
    with pytest.raises(OSError):
        write_secret(target, "secret")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir-in-the-way"]
