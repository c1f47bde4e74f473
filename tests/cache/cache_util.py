"""Helpers of the cache tests (unique module name: tests/ has its own conftest and helpers)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("cache_worker.py")
REPO = Path(__file__).resolve().parents[2]


def make_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def worker_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start_worker(*args, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """``cache_worker.py ARGS...`` with ``env`` added to the environment."""
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env={**worker_env(), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
