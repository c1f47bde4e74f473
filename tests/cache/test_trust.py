"""One trust decision per cache root, for regionc's entries and for Inductor's and Triton's code."""

import logging
import os
from pathlib import Path

import pytest
import torch
from cache_util import make_key

import regionc
from regionc.cache import configure_compiler_caches, open_store
from regionc.cache.store import ArtifactStore
from regionc.config import Config
from tests.models import NoRepeats

COMPILER_VARS = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


@pytest.fixture
def compiler_env(monkeypatch):
    """Inductor's and Triton's cache variables unset (the session sets them), restored afterwards."""
    for var in COMPILER_VARS:
        monkeypatch.delenv(var, raising=False)


def _open(root: Path) -> ArtifactStore:
    return open_store(Config.build({"cache_dir": str(root)}, environ={}))


def _assert_code_dirs_private_and_elsewhere(root: Path) -> None:
    for var in COMPILER_VARS:
        path = Path(os.environ[var])
        assert root not in path.parents and path != root, (var, path)
        assert path.is_dir() and path.stat().st_mode & 0o777 == 0o700 and path.stat().st_uid == os.getuid()


def test_compiler_caches_go_under_a_trusted_root_and_user_values_are_kept(tmp_path, compiler_env, monkeypatch):
    store = _open(tmp_path / "root")
    assert store.readable and store.writable
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "root" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "root" / "triton")
    assert (tmp_path / "root" / "inductor").stat().st_mode & 0o777 == 0o700
    # user-set values are kept
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/user/inductor")
    monkeypatch.setenv("TRITON_CACHE_DIR", "/user/triton")
    _open(tmp_path / "other")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/user/inductor"
    assert os.environ["TRITON_CACHE_DIR"] == "/user/triton"
    # Inductor's own default (written into the env on first use) does not count as user-set
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    _open(tmp_path / "third")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "third" / "inductor")


def test_root_of_another_user_gets_no_compiled_code(tmp_path, compiler_env, monkeypatch):
    """Failure 1: the store refused a foreign root, but TRITON_CACHE_DIR still pointed into it."""
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    euid = os.geteuid() + 4242
    with monkeypatch.context() as patch:  # everything on disk belongs to "another user"
        patch.setattr(os, "geteuid", lambda: euid)
        store = _open(root)
    assert not store.readable and "not the current user" in store.problem
    _assert_code_dirs_private_and_elsewhere(root)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("world_writable", ["root", "parent"])
def test_root_reached_through_a_world_writable_directory_is_refused_for_all_code(tmp_path, compiler_env, caplog,
                                                                                 world_writable):
    """Failure 2: Inductor's .so/.cpp files were written into (and loaded from) such a root."""
    parent = tmp_path / "shared"
    root = parent / "cache"
    root.mkdir(parents=True, mode=0o700)
    os.chmod(root if world_writable == "root" else parent, 0o777)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        store = _open(root)
    assert not store.readable and not store.writable
    assert "group/world-writable" in store.problem
    _assert_code_dirs_private_and_elsewhere(root)
    assert list(root.iterdir()) == []
    assert any("refusing the cache" in r.getMessage() for r in caplog.records)


def test_sticky_world_writable_parent_is_trusted(tmp_path, compiler_env):
    """/tmp-like directories (sticky: no one renames what is not theirs) are fine on the way."""
    parent = tmp_path / "tmp"
    parent.mkdir()
    os.chmod(parent, 0o1777)
    store = _open(parent / "cache")
    assert store.readable and store.writable
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(parent / "cache" / "inductor")


def test_linked_compiler_cache_dir_is_not_followed(tmp_path, compiler_env):
    root, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    root.mkdir(mode=0o700)
    elsewhere.mkdir()
    (root / "triton").symlink_to(elsewhere)
    _open(root)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(root / "inductor")
    triton = Path(os.environ["TRITON_CACHE_DIR"])
    assert root not in triton.parents and elsewhere not in (triton, *triton.parents)


def _read_only(monkeypatch, root: Path) -> None:
    """Every create/write under ``root`` fails like a read-only mount (chmod does not stop root)."""
    real_open, real_mkdir = os.open, os.mkdir
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def fake_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(root)) and flags & write_flags:
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if str(path).startswith(str(root)):
            raise OSError(30, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def test_read_only_cache_serves_loads(tmp_path, monkeypatch):
    """Failure 4: a cache made read-only after a warm run loaded nothing and compiled every piece again."""
    root = tmp_path / "cache"
    options = {"cache_dir": str(root), "strict": True}
    model, x = NoRepeats(), torch.randn(4, 32)
    with torch.no_grad():
        expected = model(x)
        torch.compile(model, backend="regionc", options=options)(x)
        assert regionc.last_report().cache["misses"] == 1
        torch._dynamo.reset()
        with monkeypatch.context() as patch:
            _read_only(patch, root)
            out = torch.compile(model, backend="regionc", options=options)(x)
    report = regionc.last_report()
    assert [p.source for p in report.pieces] == ["cache"]
    assert report.cache["hits"] == 1 and report.cache["misses"] == 0
    torch.testing.assert_close(out, expected)
    assert ArtifactStore(root).stats()["misses"] == 1  # nothing was counted in the read-only root


def test_read_only_root_gets_private_compiler_caches(tmp_path, compiler_env, monkeypatch):
    """Inductor and Triton write while they load, so a read-only root cannot hold their caches."""
    root = tmp_path / "cache"
    ArtifactStore(root).save(make_key("shipped"), b"prebuilt", {})
    with monkeypatch.context() as patch:
        _read_only(patch, root)
        store = _open(root)
    assert store.readable and not store.writable and store.load(make_key("shipped")) == b"prebuilt"
    _assert_code_dirs_private_and_elsewhere(root)


def test_configure_compiler_caches_follows_the_store(tmp_path, compiler_env):
    configure_compiler_caches(ArtifactStore(tmp_path / "cache"))
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "triton")
