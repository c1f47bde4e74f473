"""The cache end to end: real processes compiling a real model on a shared cache dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from regionc.cache.store import ArtifactStore
from regionc.tracing.compile import nested_regions_reuse_traces
from regionc.tracing.saved import traces_can_be_saved

WORKER = Path(__file__).with_name("model_worker.py")
REPO = Path(__file__).resolve().parents[2]


def run_worker(tmp: Path, name: str, cache_dir: Path, **options) -> dict:
    prefix = tmp / name
    subprocess.run([sys.executable, str(WORKER), str(prefix), str(cache_dir), json.dumps(options)],
                   check=True, cwd=REPO, env=_env(), capture_output=True, timeout=600)
    return _result(prefix)


def _env() -> dict:
    env = dict(os.environ)
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        env.pop(var, None)  # each cache root carries its own Inductor/Triton caches
    env["PYTHONPATH"] = str(REPO)
    return env


def _result(prefix: Path) -> dict:
    report = json.loads(prefix.with_suffix(".json").read_text())
    report["output"] = torch.load(prefix.with_suffix(".pt"))
    report["sources"] = [p["source"] for p in report["pieces"]]
    return report


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warm-start")
    cache_dir = tmp / "cache"
    return tmp, cache_dir, run_worker(tmp, "cold", cache_dir)


def test_second_process_loads_everything_and_compiles_nothing(cold):
    tmp, cache_dir, first = cold
    assert first["sources"] == ["compiled", "compiled", "reused", "reused", "compiled"]
    second = run_worker(tmp, "warm", cache_dir)
    assert second["sources"] == ["cache", "cache", "reused", "reused", "cache"]
    assert second["cache"]["hits"] == 3 and second["cache"]["misses"] == 0
    assert second["cache"]["bytes_loaded"] > 0
    torch.testing.assert_close(second["output"], first["output"], atol=0, rtol=0)
    assert (cache_dir / "inductor").is_dir() and (cache_dir / "triton").is_dir()


@pytest.mark.parametrize("change, misses", [
    ({"seq": 12}, 3),                                    # a shape
    ({"dtype": "float64"}, 3),                           # a dtype
    ({"inductor_config": {"max_autotune": True}}, 3),    # an option that changes generated code
    ({"lock_timeout_s": 5.0, "cudagraph_check_addresses": True}, 0),  # options that do not
])
def test_what_invalidates_an_entry(cold, change, misses):
    tmp, cache_dir, _ = cold
    report = run_worker(tmp, f"change-{len(change)}-{misses}", cache_dir, **change)
    assert report["cache"]["misses"] == misses
    assert report["cache"]["hits"] == 3 - misses


def test_corrupted_entry_is_recompiled_and_replaced(cold, caplog):
    tmp, cache_dir, first = cold
    store = ArtifactStore(cache_dir)
    victim = store.entries()[0]
    Path(victim.path).write_bytes(Path(victim.path).read_bytes()[: victim.size // 2])  # truncated
    report = run_worker(tmp, "after-corruption", cache_dir)
    assert report["cache"]["misses"] == 1 and report["cache"]["hits"] == 2
    torch.testing.assert_close(report["output"], first["output"], atol=0, rtol=0)
    assert all(not entry.error for entry in ArtifactStore(cache_dir).entries())


def test_four_processes_starting_together_compile_each_piece_once(tmp_path):
    cache_dir, go = tmp_path / "cache", tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / f"w{i}"), str(cache_dir), "{}", str(go)],
                         cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(4)
    ]
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err.decode()[-2000:]
    results = [_result(tmp_path / f"w{i}") for i in range(4)]
    compiled = sum(r["sources"].count("compiled") for r in results)
    assert compiled == 3  # glue, block, glue: once each across all four processes
    assert sum(r["cache"]["hits"] for r in results) == 4 * 3 - 3
    for r in results[1:]:
        torch.testing.assert_close(r["output"], results[0]["output"], atol=0, rtol=0)
    entries = ArtifactStore(cache_dir).entries()
    assert len(entries) == 3 and all(not entry.error for entry in entries)


def test_block_traced_once_loads_the_entries_of_a_full_trace(cold):
    """regionc.compile's nested regions, expanded, give the graph a full trace gives: same cache entries."""
    if not nested_regions_reuse_traces():
        pytest.skip(f"torch {torch.__version__} re-traces nested compile regions")
    tmp, cache_dir, first = cold
    report = run_worker(tmp, "nested-region", cache_dir, entry="regionc.compile", block_tracing="nested_region")
    assert report["inlined_regions"] == 3
    assert report["sources"] == ["cache", "cache", "reused", "reused", "cache"]
    torch.testing.assert_close(report["output"], first["output"], atol=0, rtol=0)


def test_a_regionc_compile_restart_loads_its_saved_trace_and_runs_no_dynamo(cold):
    if not traces_can_be_saved():
        pytest.skip(f"torch {torch.__version__} cannot save Dynamo traces")
    tmp, cache_dir, first = cold
    # cudagraphs=False (a no-op on the CPU) keys a trace of its own: no other test saved this one
    options = {"entry": "regionc.compile", "cudagraphs": False}
    traced = run_worker(tmp, "saved-trace-1", cache_dir, **options)
    assert traced["trace_source"].startswith("traced, saved as ") and traced["dynamo_graphs"] >= 1
    loaded = run_worker(tmp, "saved-trace-2", cache_dir, **options)
    assert loaded["trace_source"].startswith("saved trace ") and loaded["dynamo_graphs"] == 0
    assert set(loaded["sources"]) <= {"cache", "reused"} and loaded["cache"]["misses"] == 0
    torch.testing.assert_close(loaded["output"], traced["output"], atol=0, rtol=0)
    # no piece swaps a kernel in on the CPU: the warm start never imports the passes or registers the ops
    assert traced["ops_registered"] and not loaded["ops_registered"]


def test_a_saved_trace_whose_pieces_call_regionc_ops_registers_them_on_load(cold):
    """The other side of loading without the ops: a piece that calls one gets them registered first."""
    if not traces_can_be_saved():
        pytest.skip(f"torch {torch.__version__} cannot save Dynamo traces")
    tmp, cache_dir, _ = cold
    options = {"entry": "regionc.compile", "cudagraphs": False, "kernel_choice": "always"}
    traced = run_worker(tmp, "saved-trace-ops-1", cache_dir, **options)
    assert traced["trace_source"].startswith("traced, saved as ") and traced["pass_matches"]
    loaded = run_worker(tmp, "saved-trace-ops-2", cache_dir, **options)
    assert loaded["trace_source"].startswith("saved trace ") and loaded["cache"]["misses"] == 0
    assert loaded["ops_registered"]
    torch.testing.assert_close(loaded["output"], traced["output"], atol=0, rtol=0)


def test_a_warm_start_reports_the_swaps_of_the_code_it_loads(cold):
    """What regionc's passes swapped travels with the compiled piece: a process that loads it reports
    the same swaps, per piece, as the one that compiled it."""
    tmp, cache_dir, _ = cold
    compiled = run_worker(tmp, "swaps-1", cache_dir, kernel_choice="always")
    loaded = run_worker(tmp, "swaps-2", cache_dir, kernel_choice="always")
    assert compiled["pass_matches"] and loaded["cache"]["misses"] == 0
    assert loaded["pass_matches"] == compiled["pass_matches"]
    assert [p["pass_matches"] for p in loaded["pieces"]] == [p["pass_matches"] for p in compiled["pieces"]]
