"""`regionc cache ls | stats | clear`: output, JSON, exit codes (in-process and as real commands)."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from cache_util import make_key, worker_env

from regionc.cache.store import ArtifactStore
from regionc.cli import main


@pytest.fixture
def filled(root):
    store = ArtifactStore(root, max_bytes=1 << 30, lock_timeout_s=5)
    env = {"torch_version": "2.13.0", "device_type": "cuda", "gpu_name": "NVIDIA H100", "triton_version": "3.6.0"}
    a, b = make_key("a"), make_key("b")
    store.save(a, b"x" * 1000, {"fingerprint": "fp0", "input_meta": [{"dtype": "torch.float16"}], "env": env})
    store.save(b, b"y" * 2000, {"fingerprint": "fp0", "input_meta": [{"dtype": "torch.bfloat16"}],
                                 "env": {**env, "torch_version": "2.11.0"}})
    store.load(a)
    store.load(a)
    store.record_miss(b)
    return root, a, b


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "regionc.cli", *map(str, args)], env=worker_env(),
                          capture_output=True, text=True, timeout=60)


def test_ls_json_as_module(filled):
    root, a, b = filled
    proc = run_cli("cache", "ls", "--json", "--cache-dir", root)
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    assert {e["key"] for e in entries} == {a, b}
    by_key = {e["key"]: e for e in entries}
    assert by_key[a]["hits"] == 2 and by_key[a]["payload_size"] == 1000
    assert by_key[b]["factors"]["env"]["torch_version"] == "2.11.0"
    assert all(not e["error"] for e in entries)


def test_console_script(filled):
    exe = shutil.which("regionc")
    if exe is None:
        pytest.skip("the regionc console script is not installed (pip install -e .)")
    root, a, _ = filled
    proc = subprocess.run([exe, "cache", "stats", "--json", "--cache-dir", str(root)], env=worker_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["entries"] == 2 and stats["hits"] == 2 and stats["misses"] == 1
    assert run_cli("--help").returncode == 0
    assert subprocess.run([exe, "--help"], capture_output=True, timeout=60).returncode == 0


@pytest.mark.parametrize("argv", [["cache", "bogus"], ["bogus"], [], ["cache"], ["cache", "clear", "--older-than", "x"],
                                  ["cache", "ls", "--diff", "onlyone"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


@pytest.mark.parametrize("argv", [["--help"], ["cache", "--help"], ["cache", "ls", "--help"], ["cache", "clear", "-h"]])
def test_help_exits_0(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_bad_subcommand_exit_2_as_process():
    proc = run_cli("cache", "bogus")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_ls_text_and_diff(filled, capsys):
    root, a, b = filled
    assert main(["cache", "ls", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert a[:12] in out and b[:12] in out and "NVIDIA H100" in out and "2 entries" in out
    assert main(["cache", "ls", "--diff", a[:8], b[:8], "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "env.torch_version" in out and "input_meta[0].dtype" in out and "fingerprint" not in out
    assert main(["cache", "ls", "--diff", a, b, "--json", "--cache-dir", str(root)]) == 0
    diff = json.loads(capsys.readouterr().out)["differences"]
    assert diff == {"env.torch_version": {"a": "2.13.0", "b": "2.11.0"},
                    "input_meta[0].dtype": {"a": "torch.float16", "b": "torch.bfloat16"}}
    assert main(["cache", "ls", "-v", "--cache-dir", str(root)]) == 0
    assert "env.gpu_name = NVIDIA H100" in capsys.readouterr().out


def test_unknown_key_in_diff_fails(filled, capsys):
    root, a, _ = filled
    assert main(["cache", "ls", "--diff", a, "f" * 12, "--cache-dir", str(root)]) == 1
    assert "no cache entry" in capsys.readouterr().err


def test_stats_text(filled, capsys):
    root, _, _ = filled
    assert main(["cache", "stats", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "entries:   2" in out and "hits:      2" in out and "misses: 1" in out


def test_clear_older_than_and_all(filled, capsys):
    root, a, b = filled
    old = time.time() - 30 * 86400
    for suffix in (".entry", ".hits"):
        os.utime(root / "artifacts" / b[:2] / f"{b}{suffix}", (old, old))
    assert main(["cache", "clear", "--older-than", "7", "--cache-dir", str(root)]) == 0
    assert "removed 1 entry" in capsys.readouterr().out
    assert [e.key for e in ArtifactStore(root, 1 << 30, 1).entries()] == [a]
    proc = run_cli("cache", "clear", "--cache-dir", root)
    assert proc.returncode == 0 and "removed 1 entry" in proc.stdout
    assert ArtifactStore(root, 1 << 30, 1).entries() == []


def test_missing_root_is_empty_and_not_created(tmp_path, capsys):
    root = tmp_path / "nothing-here"
    assert main(["cache", "ls", "--json", "--cache-dir", str(root)]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["cache", "stats", "--json", "--cache-dir", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 0
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    assert not root.exists()


def test_default_root_from_env(filled, monkeypatch, capsys):
    root, a, _ = filled
    monkeypatch.setenv("REGIONC_CACHE_DIR", str(root))
    monkeypatch.setenv("REGIONC_COMPILE_WORKERS", "not-a-number")  # unrelated bad env must not break the CLI
    assert main(["cache", "ls", "--json"]) == 0
    assert a in {e["key"] for e in json.loads(capsys.readouterr().out)}


def test_untrusted_root_fails_with_exit_1(tmp_path, capsys):
    root = tmp_path / "shared"
    root.mkdir()
    os.chmod(root, 0o777)
    for argv in (["cache", "ls"], ["cache", "stats"], ["cache", "clear"]):
        assert main([*argv, "--cache-dir", str(root)]) == 1
        assert "group/world-writable" in capsys.readouterr().err


def test_directory_under_an_entry_name_does_not_fail_clear(filled, capsys):
    """Failure 6: `clear` exited 1 ("Is a directory") on a cache holding a directory under an entry name."""
    root, a, b = filled
    blocker = make_key("blocker")
    for suffix in (".entry", ".hits"):
        (root / "artifacts" / blocker[:2] / f"{blocker}{suffix}").mkdir(parents=True, exist_ok=True)
    (root / "misses").unlink()
    (root / "misses").mkdir()
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    captured = capsys.readouterr()
    assert "removed 2 entries" in captured.out and "left alone" in captured.err
    assert (root / "artifacts" / blocker[:2] / f"{blocker}.entry").is_dir()
    assert main(["cache", "ls", "--json", "--cache-dir", str(root)]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_ls_and_stats_create_nothing(tmp_path, capsys):
    """Failure 6: `ls` and `stats` on an empty root created artifacts/ and locks/."""
    root = tmp_path / "empty"
    root.mkdir(mode=0o700)
    stale = root / "artifacts" / "ab"
    for argv in (["cache", "ls"], ["cache", "stats", "--json"]):
        assert main([*argv, "--cache-dir", str(root)]) == 0
    assert list(root.iterdir()) == []
    stale.mkdir(parents=True)
    (stale / ".abcd.x.tmp").write_bytes(b"half")  # even a dead writer's temp file is clear's to remove
    os.utime(stale / ".abcd.x.tmp", (1, 1))
    assert main(["cache", "ls", "--cache-dir", str(root)]) == 0
    assert (stale / ".abcd.x.tmp").exists() and sorted(p.name for p in root.iterdir()) == ["artifacts"]
    capsys.readouterr()


def test_cache_commands_do_not_import_torch(filled):
    """Failure 6: every `regionc cache` call took seconds importing torch, which none of them needs."""
    root, a, _ = filled
    code = ("import sys, regionc.cli; rc = regionc.cli.main(['cache', 'ls', '--json', '--cache-dir', sys.argv[1]]); "
            "print('torch' in sys.modules, file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(root)], env=worker_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert a in {e["key"] for e in json.loads(proc.stdout)}
    assert proc.stderr.strip() == "False"
    import regionc
    assert callable(regionc.compile)  # the public API still has it, loaded on first use
