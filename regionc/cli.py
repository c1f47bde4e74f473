"""The ``regionc`` command: ``regionc cache ls | stats | clear | push | pull``.

Exit codes: 0 ok, 1 failure (cache unusable, unknown key, I/O error), 2 usage error.
Adding a command: write ``_add_<name>(subparsers)`` that registers a parser with
``set_defaults(func=...)`` (func takes the parsed args, returns an exit code) and call it in
:func:`build_parser`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("regionc")


class _Failure(Exception):
    """A command failed; the message is printed to stderr and the exit code is 1."""


# ---------------------------------------------------------------------------- helpers
def _settings(args: argparse.Namespace | None = None):
    """The cache options as the compiler sees them (``REGIONC_*`` env), ``--remote-cache`` first."""
    from regionc.config import Config, RegioncConfigError

    names = ("REGIONC_CACHE_DIR", "REGIONC_CACHE_MAX_BYTES", "REGIONC_LOCK_TIMEOUT_S", "REGIONC_REMOTE_CACHE")
    environ = {name: os.environ[name] for name in names if name in os.environ}
    options = {"remote_cache": args.remote_cache} if getattr(args, "remote_cache", None) else {}
    try:
        return Config.build(options, environ=environ)
    except RegioncConfigError as exc:
        raise _Failure(str(exc)) from None


def _cache_settings() -> tuple[str, int, float]:
    """Default root, size cap and lock timeout as the compiler sees them (``REGIONC_*`` env)."""
    config = _settings()
    return str(config.cache_root), config.cache_max_bytes, config.lock_timeout_s


def _remote(args: argparse.Namespace, required: bool = True):
    """The remote tier of ``--remote-cache`` or ``$REGIONC_REMOTE_CACHE`` (None when neither is set
    and it is not ``required``)."""
    config = _settings(args)
    if not config.remote_cache:
        if required:
            raise _Failure("regionc: no remote cache: pass --remote-cache URL or set REGIONC_REMOTE_CACHE")
        return None
    from regionc.cache.remote import RemoteTier

    try:
        return RemoteTier(config.remote_cache, config.cache_max_bytes)
    except ImportError as exc:
        raise _Failure(str(exc)) from None


def _check_remote(remote) -> None:
    if remote.problem:
        raise _Failure(f"regionc: remote cache {remote.name} failed: {remote.problem}")


def _open_store(args: argparse.Namespace, write: bool = False):
    """``(store, root)``; store is None when the root does not exist. Only ``write=True`` (``clear``)
    may change anything under the root: ``ls`` and ``stats`` create, remove and count nothing."""
    from regionc.cache.store import ArtifactStore

    default_root, max_bytes, timeout = _cache_settings()
    root = Path(args.cache_dir or default_root).expanduser()
    if not root.exists():
        return None, root
    store = ArtifactStore(root, max_bytes=max_bytes, lock_timeout_s=timeout, write=write)
    if not store.readable:
        raise _Failure(f"regionc: cannot use the cache: {store.problem}")
    return store, root


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"env": {"torch_version": "2.13"}}`` → ``{"env.torch_version": "2.13"}`` (lists as ``[i]``)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: value}


def diff_factors(a: dict, b: dict) -> dict[str, tuple[Any, Any]]:
    """Factors (flattened names) whose values differ between two entries; missing = None."""
    fa, fb = flatten(a), flatten(b)
    return {name: (fa.get(name), fb.get(name)) for name in sorted(set(fa) | set(fb)) if fa.get(name) != fb.get(name)}


def _summary(factors: dict) -> str:
    env = factors.get("env", {}) if isinstance(factors, dict) else {}
    metas = factors.get("input_meta", []) if isinstance(factors, dict) else []
    parts = []
    if factors.get("fingerprint"):
        parts.append(f"fp={str(factors['fingerprint'])[:12]}")
    if env:
        device = env.get("gpu_name") or env.get("device_type", "?")
        parts.append(f"{device} torch={env.get('torch_version', '?')} triton={env.get('triton_version', '?')}")
    if metas:
        parts.append(f"inputs={len(metas)}")
    return " ".join(parts)


def _find(entries: list, prefix: str):
    matches = [e for e in entries if e.key.startswith(prefix.lower())]
    if not matches:
        raise _Failure(f"regionc: no cache entry matches {prefix!r}")
    if len(matches) > 1:
        raise _Failure(f"regionc: {prefix!r} matches {len(matches)} entries; give more digits")
    return matches[0]


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


# ---------------------------------------------------------------------------- cache commands
def _cache_ls(args: argparse.Namespace) -> int:
    store, root = _open_store(args)
    entries = store.entries() if store is not None else []
    if args.diff:
        a, b = (_find(entries, k) for k in args.diff)
        differences = diff_factors(a.factors, b.factors)
        if args.json:
            _print_json({"a": a.key, "b": b.key,
                         "differences": {k: {"a": va, "b": vb} for k, (va, vb) in differences.items()}})
        elif not differences:
            print(f"{a.key[:12]} and {b.key[:12]}: identical factors")
        else:
            print(f"factors that differ between {a.key[:12]} (a) and {b.key[:12]} (b):")
            for name, (va, vb) in differences.items():
                print(f"  {name}:\n    a: {va}\n    b: {vb}")
        return EXIT_OK
    if args.json:
        _print_json([e.to_dict() for e in entries])
        return EXIT_OK
    if not entries:
        print(f"no cache entries in {root}")
        return EXIT_OK
    now = time.time()
    print(f"{'KEY':<12}  {'SIZE':>10}  {'AGE':>6}  {'USED':>6}  {'HITS':>5}  FACTORS")
    for e in entries:
        factors = e.error or _summary(e.factors)
        print(f"{e.key[:12]:<12}  {_human_bytes(e.size):>10}  {_human_age(now - e.created):>6}  "
              f"{_human_age(now - e.last_used):>6}  {e.hits:>5}  {factors}")
        if args.verbose and not e.error:
            for name, value in flatten(e.factors).items():
                print(f"{'':14}{name} = {value}")
    print(f"{len(entries)} entries, {_human_bytes(sum(e.size for e in entries))} in {root}")
    return EXIT_OK


def _cache_stats(args: argparse.Namespace) -> int:
    store, root = _open_store(args)
    if store is None:
        _, max_bytes, _ = _cache_settings()
        stats = {"root": str(root), "readable": False, "writable": False, "problem": "does not exist",
                 "entries": 0, "bad_entries": 0, "bytes": 0, "max_bytes": max_bytes, "hits": 0, "fetched": 0,
                 "fetch_s": 0.0, "misses": 0, "hit_rate": None, "oldest_created": None, "last_used": None}
    else:
        stats = store.stats()
    remote = _remote(args, required=False)
    if remote is not None:
        stats.update(remote.stats())
    if args.json:
        _print_json(stats)
        return EXIT_OK
    rate = "-" if stats["hit_rate"] is None else f"{100 * stats['hit_rate']:.1f}%"
    now = time.time()
    print(f"root:      {stats['root']}" + (f"  ({stats['problem']})" if stats["problem"] else ""))
    print(f"entries:   {stats['entries']}" + (f" ({stats['bad_entries']} unusable)" if stats["bad_entries"] else ""))
    print(f"size:      {_human_bytes(stats['bytes'])} of {_human_bytes(stats['max_bytes'])}")
    print(f"hits:      {stats['hits']} local, {stats['fetched']} from the remote ({stats['fetch_s']:.2f}s)   "
          f"misses: {stats['misses']} (compiled)   hit rate: {rate}")
    if stats["last_used"] is not None:
        print(f"last used: {_human_age(now - stats['last_used'])} ago")
    if remote is not None:
        print(f"remote:    {stats['remote']}: " + (f"unusable ({stats['remote_problem']})" if stats["remote_problem"] else
                                                 f"{stats['remote_entries']} entries, "
                                                 f"{_human_bytes(stats['remote_bytes'])}"))
    return EXIT_OK


def _cache_push(args: argparse.Namespace) -> int:
    """Publishes every good local entry the remote lacks (put-if-absent: a remote entry never changes)."""
    remote = _remote(args)
    store, root = _open_store(args)
    pushed = present = bad = 0
    for entry in store.entries() if store is not None else []:
        read = None if entry.error else store.read_entry(entry.key)
        if read is None:
            bad += 1
            print(f"skipped {entry.key[:12]}: {entry.error or 'unreadable or corrupt'}", file=sys.stderr)
        elif remote.publish(entry.key, bytes(read[0])):
            pushed += 1
        else:
            _check_remote(remote)
            present += 1
    _check_remote(remote)
    print(f"pushed {pushed} entr{'y' if pushed == 1 else 'ies'} from {root} to {remote.name} "
          f"({present} already there, {bad} skipped)")
    return EXIT_OK


def _cache_pull(args: argparse.Namespace) -> int:
    """Copies every remote entry the local cache lacks, each verified before it is written."""
    from regionc.cache.store import ArtifactStore, CorruptEntry

    remote = _remote(args)
    config = _settings(args)
    root = Path(args.cache_dir or config.cache_root).expanduser()
    store = ArtifactStore(root, max_bytes=config.cache_max_bytes, lock_timeout_s=config.lock_timeout_s)
    if not store.writable:
        raise _Failure(f"regionc: cannot write the cache: {store.problem or 'not writable'}")
    pulled = present = bad = 0
    for key in remote.keys():
        if store.entry_path(key).exists():
            present += 1
            continue
        data = remote.get(key)
        try:
            if data is None:
                raise CorruptEntry("gone, or over cache_max_bytes")
            store.save_entry(key, data)
            pulled += 1
        except (CorruptEntry, ValueError) as exc:
            bad += 1
            print(f"skipped {key[:12]}: {exc}", file=sys.stderr)
    _check_remote(remote)
    print(f"pulled {pulled} entr{'y' if pulled == 1 else 'ies'} from {remote.name} into {root} "
          f"({present} already there, {bad} skipped)")
    return EXIT_OK


def _cache_clear(args: argparse.Namespace) -> int:
    from regionc.cache.store import CacheError

    store, root = _open_store(args, write=True)
    if store is None:
        print(f"nothing to clear: {root} does not exist")
        return EXIT_OK
    try:
        removed = store.clear(args.older_than)
    except CacheError as exc:
        raise _Failure(exc.strerror or str(exc)) from None
    scope = f" not used for {args.older_than:g} days" if args.older_than is not None else ""
    print(f"removed {removed} entr{'y' if removed == 1 else 'ies'}{scope} from {root}")
    return EXIT_OK


def _non_negative_days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"days must be >= 0, got {text!r}")
    return value


def _add_cache(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", metavar="DIR",
                        help="cache root (default: $REGIONC_CACHE_DIR or ~/.cache/regionc)")
    cache = subparsers.add_parser("cache", help="inspect or clear the compiled-artifact cache",
                                  description="Inspect or clear regionc's compiled-artifact cache.")
    commands = cache.add_subparsers(dest="cache_command", metavar="{ls,stats,clear,push,pull}")
    commands.required = True

    ls = commands.add_parser("ls", parents=[common], help="list entries (most recently used first)",
                             description="List cache entries: key, size, age, last use, hits and key factors.")
    ls.add_argument("--json", action="store_true", help="machine-readable output (full factors)")
    ls.add_argument("-v", "--verbose", action="store_true", help="print every key factor of every entry")
    ls.add_argument("--diff", nargs=2, metavar=("KEY1", "KEY2"),
                    help="show which key factors differ between two entries (key prefixes accepted)")
    ls.set_defaults(func=_cache_ls)

    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--remote-cache", metavar="URL",
                        help="remote tier, redis://[user:password@]host:port/db (default: $REGIONC_REMOTE_CACHE)")
    stats = commands.add_parser("stats", parents=[common, remote], help="entries, size, where loads came from",
                                description="Summarize the cache: entries, bytes, loads from this cache and from "
                                            "the remote tier, misses (compiles); with a remote, its entries too.")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(func=_cache_stats)

    clear = commands.add_parser("clear", parents=[common], help="remove entries",
                                description="Remove cache entries (all, or those not used for DAYS days).")
    clear.add_argument("--older-than", type=_non_negative_days, metavar="DAYS",
                       help="only entries not used for DAYS days (fractions allowed)")
    clear.set_defaults(func=_cache_clear)

    push = commands.add_parser("push", parents=[common, remote], help="copy local entries to the remote tier",
                               description="Publish every good local entry the remote tier lacks (to seed a new "
                                           "region).")
    push.set_defaults(func=_cache_push)
    pull = commands.add_parser("pull", parents=[common, remote], help="copy remote entries into the local cache",
                               description="Copy every remote entry the local cache lacks, each verified first "
                                           "(to fill a deployment image).")
    pull.set_defaults(func=_cache_pull)


# ---------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regionc", description="regionc command-line tools.")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log level of regionc's messages on stderr (default: WARNING)")
    subparsers = parser.add_subparsers(dest="command", metavar="{cache}")
    subparsers.required = True
    _add_cache(subparsers)
    return parser


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error, 0 on --help
    handler = _StderrHandler(level=args.log_level or "WARNING")
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    old_level = log.level
    if args.log_level:
        log.setLevel(args.log_level)
    try:
        return args.func(args)
    except _Failure as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:  # pragma: no cover - `regionc cache ls | head`
        return EXIT_OK
    except OSError as exc:
        print(f"regionc: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:  # leave no global logging state behind (main() is also called in-process)
        log.removeHandler(handler)
        log.setLevel(old_level)


if __name__ == "__main__":
    sys.exit(main())
