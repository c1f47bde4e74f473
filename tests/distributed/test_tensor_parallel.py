"""Tensor-parallel models on torch.distributed (CPU, gloo): real rank processes sharing one cache dir.

Every rank traces the same code, so every rank's pieces have the same fingerprints and keys; the
store's per-key lock makes the first rank to reach a piece compile it and the others load it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TP_WORKER = HERE / "tp_worker.py"
MODEL_WORKER = REPO / "tests" / "cache" / "model_worker.py"
STALL_WORKER = HERE / "stall_worker.py"
TIMEOUT = 300  # seconds per process; a hung collective or lock fails the test instead of hanging it


def _env() -> dict:
    env = dict(os.environ)
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        env.pop(var, None)  # each cache root carries its own Inductor/Triton caches
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"  # ranks share 2 cores
    return env


def _popen(args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[str]:
    errors = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-3000:]
            errors.append(err)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    return errors


def run_ranks(tmp: Path, name: str, cache_dir: Path, world_size: int, config: dict | None = None) -> list[dict]:
    rdzv = tmp / f"{name}.rdzv"  # a fresh rendezvous file per launch
    procs = [_popen([TP_WORKER, tmp / f"{name}-{rank}", cache_dir, rdzv, rank, world_size,
                     json.dumps(config or {})]) for rank in range(world_size)]
    _finish(procs)
    results = []
    for rank in range(world_size):
        prefix = tmp / f"{name}-{rank}"
        result = json.loads(prefix.with_suffix(".json").read_text())
        result["output"] = torch.load(prefix.with_suffix(".pt"))
        result["sources"] = [p["source"] for p in result["pieces"]]
        results.append(result)
    return results


def _unique(results: list[dict]) -> int:
    return len({p["fingerprint"] for r in results for p in r["pieces"]})


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tp2")
    cache_dir = tmp / "cache"
    return tmp, cache_dir, run_ranks(tmp, "cold", cache_dir, 2)


def test_each_rank_matches_the_unsharded_model(cold):
    _, _, results = cold
    for r in results:
        assert r["graphs"] == 1 and not r["fallbacks"]  # the collectives traced, no graph break
        assert r["max_error"] <= 1e-5
    torch.testing.assert_close(results[0]["output"], results[1]["output"], atol=0, rtol=0)


def test_cold_ranks_compile_each_unique_piece_once_in_total(cold):
    _, _, results = cold
    prints = [[p["fingerprint"] for p in r["pieces"]] for r in results]
    assert prints[0] == prints[1]  # nothing rank-specific in a fingerprint
    assert results[0]["unique_block_fingerprints"] == 1  # the block with its all-reduces is one compiled block
    assert results[0]["sources"].count("reused") == 2  # three layers: one compile (or load), two reuses
    unique = _unique(results)
    assert unique == 3  # glue, block, glue
    compiled = sum(r["sources"].count("compiled") for r in results)
    cached = sum(r["sources"].count("cache") for r in results)
    assert compiled == unique and cached == 2 * unique - compiled


def test_warm_restart_of_all_ranks_compiles_nothing(cold):
    tmp, cache_dir, first = cold
    results = run_ranks(tmp, "warm", cache_dir, 2)
    for r, before in zip(results, first):
        assert r["sources"] == ["cache", "cache", "reused", "reused", "cache"]
        assert r["cache"]["misses"] == 0 and r["max_error"] <= 1e-5
        torch.testing.assert_close(r["output"], before["output"], atol=0, rtol=0)


def test_key_has_the_world_size_and_never_the_rank(tmp_path):
    import torch.distributed as dist

    from regionc.cache.key import environment_factors

    assert "world_size" not in environment_factors("cpu")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        factors = environment_factors("cpu")
    finally:
        dist.destroy_process_group()
    assert factors["world_size"] == "1"
    assert not any("rank" in name for name in factors)


@pytest.mark.slow  # about 50 s on 2 shared cores
def test_four_ranks_compile_once_and_match(tmp_path):
    config = {"n_heads": 4, "n_kv_heads": 4}
    results = run_ranks(tmp_path, "tp4", tmp_path / "cache", 4, config)
    assert all(r["max_error"] <= 1e-5 and not r["fallbacks"] for r in results)
    assert sum(r["sources"].count("compiled") for r in results) == _unique(results) == 3


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"never reached {path.name}"
        time.sleep(0.05)


def test_a_process_killed_mid_compile_does_not_block_the_others(tmp_path):
    """The killed process held the first piece's lock (flock): the kernel releases it, the waiter goes on.

    The store-level version (no compiler) is tests/cache/test_cache_processes.py::
    test_lock_of_a_killed_holder_is_released; this one kills a real regionc compile while
    another regionc compile waits on it.
    """
    cache_dir, stalling, waiting = tmp_path / "cache", tmp_path / "stalling", tmp_path / "waiting"
    stalled = _popen([STALL_WORKER, "stall", stalling, tmp_path / "dead", cache_dir])
    waiter = None
    try:
        _wait_for(stalling, stalled)  # holds the first piece's lock, inside the compile
        waiter = _popen([STALL_WORKER, "wait", waiting, tmp_path / "alive", cache_dir])
        _wait_for(waiting, waiter)
        time.sleep(1.0)  # the waiter is polling the held lock now
        assert waiter.poll() is None
    finally:
        os.kill(stalled.pid, signal.SIGKILL)
        stalled.communicate(timeout=10)
    (err,) = _finish([waiter])
    report = json.loads((tmp_path / "alive.json").read_text())
    assert [p["source"] for p in report["pieces"]] == ["compiled", "compiled", "reused", "reused", "compiled"]
    assert 0.5 < report["cache"]["waited_s"] < 60  # released at the kill, not at the 600 s lock timeout
    assert "without the lock" not in err
