"""Fixtures of the cache tests: a fresh store root per test."""

from pathlib import Path

import pytest

from regionc.cache.store import ArtifactStore


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def store(root: Path) -> ArtifactStore:
    s = ArtifactStore(root, max_bytes=1 << 30, lock_timeout_s=5)
    assert s.readable and s.writable
    return s
