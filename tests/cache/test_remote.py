"""The remote tier (Redis) behind the local cache: fetch, publish, leases, bad entries, failing remotes."""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cache_util import make_key, start_worker, worker_env

from regionc.cache import open as open_mod
from regionc.cache import remote as remote_mod
from regionc.cache.store import ArtifactStore, encode_entry
from regionc.cli import main as cli_main
from regionc.config import Config, RegioncConfigError

PAYLOAD = b"compiled piece " * 1000


def tier(url: str, max_bytes: int = 1 << 30) -> remote_mod.RemoteTier:
    return remote_mod.RemoteTier(url, max_bytes)


def remote_store(tmp_path: Path, name: str, url: str, **kwargs) -> ArtifactStore:
    return ArtifactStore(tmp_path / name, max_bytes=1 << 30, lock_timeout_s=kwargs.pop("lock_timeout_s", 10),
                         remote=tier(url, **kwargs))


def entry_file(key: str, payload: bytes = PAYLOAD, factors: dict | None = None) -> bytes:
    head = b"".join(encode_entry(key, payload, factors or {"fingerprint": key}))
    return head + hashlib.sha256(head).digest()


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------- fetch and publish
def test_an_entry_saved_on_one_host_loads_on_another(tmp_path, redis_url):
    a, b = remote_store(tmp_path, "a", redis_url), remote_store(tmp_path, "b", redis_url)
    key = make_key("piece")
    with a.lock(key):
        assert a.load(key) is None
        assert a.save(key, PAYLOAD, {"fingerprint": "piece"})
    with b.lock(key) as waited:
        assert b.load(key) == PAYLOAD
    assert waited >= 0 and b.origin(key) == "remote" and a.origin(key) == "cache"
    assert b.entry_path(key).is_file()  # written to the local front
    assert b.load(key) == PAYLOAD and b.stats()["fetched"] == 1 and b.stats()["hits"] == 1
    assert a.remote.stats()["remote_entries"] == 1


def test_publish_never_replaces_a_remote_entry(tmp_path, redis_url, redis_server):
    a, b = remote_store(tmp_path, "a", redis_url), remote_store(tmp_path, "b", redis_url)
    key = make_key("first writer wins")
    a.save(key, b"first", {})
    b.save(key, b"second", {})
    assert remote_store(tmp_path, "c", redis_url).load(key) == b"first"


def test_remove_drops_the_remote_copy_this_process_fetched(tmp_path, redis_url, redis_server):
    key = make_key("unloadable")
    remote_store(tmp_path, "a", redis_url).save(key, PAYLOAD, {})
    b = remote_store(tmp_path, "b", redis_url)
    assert b.load(key) == PAYLOAD
    b.remove(key)  # it verified, but its artifact would not load here
    assert not redis_server.client.exists(remote_mod.ENTRY_PREFIX + key)


# ---------------------------------------------------------------------------- bad remote entries
def _garbled(key):
    data = bytearray(entry_file(key))
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


BAD_ENTRIES = {
    "garbled": _garbled,
    "truncated": lambda key: entry_file(key)[:-100],
    "wrong-key": lambda key: entry_file(make_key("another piece")),
    "oversized": lambda key: entry_file(key, payload=b"x" * 200_000),
}


@pytest.mark.parametrize("kind", sorted(BAD_ENTRIES))
def test_a_bad_remote_entry_is_never_loaded_and_gets_replaced(tmp_path, redis_url, redis_server, caplog, kind):
    key = make_key("piece")
    name = remote_mod.ENTRY_PREFIX + key
    redis_server.client.set(name, BAD_ENTRIES[kind](key))
    store = remote_store(tmp_path, "a", redis_url, max_bytes=100_000)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        with store.lock(key):
            assert store.load(key) is None
            assert store.save(key, PAYLOAD, {"fingerprint": key}) is True
    assert len(warnings_of(caplog)) == 1, warnings_of(caplog)
    assert not store.entry_path(key).exists() or store.load(key) == PAYLOAD
    if kind == "oversized":  # too big for this host, maybe not for another: left alone
        assert redis_server.client.strlen(name) > 100_000
    else:  # dropped, and the compile's put-if-absent replaced it
        assert remote_store(tmp_path, "b", redis_url).load(key) == PAYLOAD


# ---------------------------------------------------------------------------- failing remotes
def test_an_unreachable_remote_means_local_only_with_one_warning(tmp_path, caplog):
    url = "redis://:secret-password@127.0.0.1:1/0?socket_connect_timeout=0.5"
    store = remote_store(tmp_path, "a", url)
    keys = [make_key(f"piece {i}") for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="regionc"):
        for key in keys:
            with store.lock(key):
                assert store.load(key) is None
                assert store.save(key, PAYLOAD, {}) is True
        assert all(store.load(key) == PAYLOAD for key in keys)
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "redis://127.0.0.1:1/0" in messages[0]
    assert "secret-password" not in caplog.text


def test_redis_stopped_mid_run(tmp_path, own_redis, caplog):
    store = remote_store(tmp_path, "a", own_redis.url)
    first, second = make_key("first"), make_key("second")
    with store.lock(first):
        assert store.load(first) is None and store.save(first, PAYLOAD, {})
    own_redis.stop()
    with caplog.at_level(logging.WARNING, logger="regionc"):
        with store.lock(second):
            assert store.load(second) is None
            assert store.save(second, PAYLOAD, {})
        assert store.load(first) == PAYLOAD and store.load(second) == PAYLOAD
    assert len(warnings_of(caplog)) == 1


def test_a_slow_redis_means_local_only_with_one_warning(tmp_path, redis_url, redis_server, caplog):
    store = remote_store(tmp_path, "a", redis_url + "?socket_timeout=0.2")
    key = make_key("piece")
    redis_server.client.client_pause(5000)  # every other client's command now waits 5 s
    try:
        with caplog.at_level(logging.WARNING, logger="regionc"):
            with store.lock(key):
                assert store.load(key) is None
                assert store.save(key, PAYLOAD, {})
            assert store.load(key) == PAYLOAD
    finally:
        redis_server.client.client_unpause()
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "TimeoutError" in messages[0]


def test_a_missing_redis_client_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "redis", None)
    with pytest.raises(ImportError, match="pip install redis"):
        tier("redis://127.0.0.1:1/0")


# ---------------------------------------------------------------------------- leases across processes
def _worker_env(url: str, lease_s: float | None = None) -> dict:
    env = {"CACHE_WORKER_REMOTE": url}
    if lease_s is not None:
        env["CACHE_WORKER_LEASE_S"] = str(lease_s)
    return env


def test_processes_started_together_compile_each_piece_once_in_total(tmp_path, redis_url):
    go, counter = tmp_path / "go", tmp_path / "compiled"
    keys = [make_key(f"piece {i}") for i in range(3)]
    workers = [start_worker("compile", tmp_path / f"host{i}", go, counter, *keys, env=_worker_env(redis_url))
               for i in range(5)]
    go.touch()
    results = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    compiled = counter.read_text().split("\n")[:-1]
    assert sorted(line.split()[0] for line in compiled) == sorted(keys)  # each key once, in total
    for key in keys:
        assert len({r[key]["sha256"] for r in results}) == 1
        assert sorted(r[key]["source"] for r in results) == ["compiled"] + ["remote"] * 4


def test_a_killed_lease_holder_loses_the_lease_and_another_compiles(tmp_path, redis_url, redis_server):
    key = make_key("piece")
    ready, go, counter = tmp_path / "ready", tmp_path / "go", tmp_path / "compiled"
    holder = start_worker("hold-lock", tmp_path / "host0", ready, key, env=_worker_env(redis_url, 1))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, holder.stderr.read() if holder.poll() else ""
            time.sleep(0.02)
        assert redis_server.client.exists(remote_mod.LEASE_PREFIX + key)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    go.touch()
    worker = start_worker("compile", tmp_path / "host1", go, counter, key, env=_worker_env(redis_url))
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    assert json.loads(out)[key]["source"] == "compiled"
    assert remote_store(tmp_path, "host2", redis_url).load(key) is not None


# ---------------------------------------------------------------------------- options and the command
def test_remote_cache_option_is_checked_and_never_echoes_a_password():
    assert Config.build({"remote_cache": "redis://h:6379/0"}, environ={}).remote_cache == "redis://h:6379/0"
    assert Config.build(environ={"REGIONC_REMOTE_CACHE": "unix:///run/redis.sock"}).remote_cache
    for bad in ("http://h:6379", "redis://", "redis://h:port/0", 5):
        with pytest.raises(RegioncConfigError, match="remote_cache"):
            Config.build({"remote_cache": bad}, environ={})
    with pytest.raises(RegioncConfigError) as info:
        Config.build({"remote_cache": "http://user:hunter2@h/0"}, environ={})
    assert "hunter2" not in str(info.value)


def test_open_store_shares_one_tier_per_url(tmp_path, redis_url):
    config = Config.build({"cache_dir": str(tmp_path / "c"), "remote_cache": redis_url}, environ={})
    assert open_mod.open_store(config).remote is open_mod.open_store(config).remote


def test_cli_push_pull_and_stats(tmp_path, redis_url, capsys):
    source = ArtifactStore(tmp_path / "source")
    keys = [make_key(f"piece {i}") for i in range(3)]
    for key in keys:
        source.save(key, PAYLOAD + key.encode(), {"fingerprint": key})
    assert cli_main(["cache", "push", "--cache-dir", str(tmp_path / "source"), "--remote-cache", redis_url]) == 0
    assert "pushed 3 entries" in capsys.readouterr().out
    assert cli_main(["cache", "push", "--cache-dir", str(tmp_path / "source"), "--remote-cache", redis_url]) == 0
    assert "pushed 0 entries" in capsys.readouterr().out
    assert cli_main(["cache", "pull", "--cache-dir", str(tmp_path / "image"), "--remote-cache", redis_url]) == 0
    assert "pulled 3 entries" in capsys.readouterr().out
    image = ArtifactStore(tmp_path / "image")
    assert all(image.load(key) == PAYLOAD + key.encode() for key in keys)
    assert cli_main(["cache", "stats", "--json", "--cache-dir", str(tmp_path / "image"),
                     "--remote-cache", redis_url]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["remote_entries"] == 3 and stats["hits"] == 3 and stats["fetched"] == 0
    assert cli_main(["cache", "pull", "--cache-dir", str(tmp_path / "x"), "--remote-cache", "redis://127.0.0.1:1/0"]) == 1


def test_cli_remote_commands_need_a_remote(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("REGIONC_REMOTE_CACHE", raising=False)
    assert cli_main(["cache", "push", "--cache-dir", str(tmp_path)]) == 1
    assert "REGIONC_REMOTE_CACHE" in capsys.readouterr().err


def test_cli_stats_without_a_remote_imports_no_redis(tmp_path):
    code = ("import sys; from regionc.cli import main; main(['cache', 'stats', '--cache-dir', sys.argv[1]]); "
            "assert 'redis' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([__import__("sys").executable, "-c", code, str(tmp_path)], check=True, env=worker_env())
