"""The remote tier end to end: two hosts (separate cache roots, empty Inductor caches) and one Redis."""

from __future__ import annotations

import torch
from test_warm_start import run_worker


def test_a_second_host_compiles_nothing_and_builds_no_cpp(tmp_path, redis_url):
    first = run_worker(tmp_path, "host-a", tmp_path / "host-a", remote_cache=redis_url, count_cpp_builds=True)
    assert first["sources"] == ["compiled", "compiled", "reused", "reused", "compiled"]
    assert len(first["cpp_builds"]) > 0
    second = run_worker(tmp_path, "host-b", tmp_path / "host-b", remote_cache=redis_url, count_cpp_builds=True)
    assert second["sources"] == ["remote", "remote", "reused", "reused", "remote"]
    assert second["cache"]["misses"] == 0 and second["cache"]["hits"] == 3
    assert second["cpp_builds"] == []  # the entries carry their C++ kernels
    torch.testing.assert_close(second["output"], first["output"], atol=0, rtol=0)
    third = run_worker(tmp_path, "host-b-again", tmp_path / "host-b", remote_cache=redis_url)
    assert third["sources"] == ["cache", "cache", "reused", "reused", "cache"]  # the local front now
