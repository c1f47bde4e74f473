"""Where does the guard check of ``regionc.compile``'s saved trace of an HF decoder go, per decode step?

On the GPU host the check took 63–72 µs back to back and 150–220 µs inside a step of HF Llama 32 × 2048
(``benchmarks/results/decode_profile/h100-2026-12-05-hf-llama-b8-pos3900-default.log``). Dynamo can skip
a module's guards when none of its dicts changed (its "tag-safe roots"); this measures what it skips here.

For an HF ``LlamaModel`` of each depth (narrow: the guards do not depend on width) decoding on a
``StaticCache`` through ``regionc.compile`` on the CPU, it reports the saved trace's guards by kind, the
tag-safe roots, the guards that keep the model's root from being one, and the check's time back to back
and as the first check after a model call (both under ``no_grad``, as a step is).

    python benchmarks/experiments/guard_check_cost.py --layers 8 32 --out DIR
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import write_results  # noqa: E402


def managers(node):
    """Every guard manager under ``node``: attribute children and a dict manager's key and value managers."""
    from torch._C._dynamo.guards import DictGuardManager

    children = [c for c in node.get_child_managers() if c is not None]
    if isinstance(node, DictGuardManager):
        children += [m for pair in node.get_key_value_managers().values() for m in pair if m is not None]
    for child in children:
        yield child
        yield from managers(child)


def measure(layers: int, calls: int = 30) -> dict:
    import torch

    from benchmarks.common import compiled_hf_decoder
    from regionc.tracing import saved

    model, step = compiled_hf_decoder(layers)  # saved traces live in the cache
    with torch.no_grad():
        for _ in range(4):
            model(**step)

    entries = []
    check = saved._Entry.check

    def noting(entry, *args):
        entries.append(entry)
        return check(entry, *args)

    saved._Entry.check = noting
    try:
        with torch.no_grad():
            model(**step)
    finally:
        saved._Entry.check = check
    entry = entries[-1]
    kinds = collections.Counter(m.group(1) for line in str(entry.guards).splitlines()
                                if (m := re.search(r"\+- ([A-Z_]{4,})", line)))
    every = list(managers(entry.guards.root))
    roots = [m.get_source() for m in every if m.is_tag_safe_root()]
    blocking = [m.get_source() for m in every if m.get_source().startswith("L['self']") and not m.is_tag_safe()
                and all(c.is_tag_safe() for c in managers(m))]

    back_to_back, after_call = [], []
    with torch.no_grad():
        f_locals = entry.f_locals(model, (), step)
        for _ in range(calls):
            start = time.perf_counter()
            entry.guards.check(f_locals)
            back_to_back.append(time.perf_counter() - start)
        for _ in range(calls):
            model(**step)
            f_locals = entry.f_locals(model, (), step)
            start = time.perf_counter()
            assert entry.guards.check(f_locals)
            after_call.append(time.perf_counter() - start)
    return {"layers": layers, "guards": sum(kinds.values()), "guards_by_kind": dict(kinds.most_common()),
            "tag_safe_roots": len(roots), "tag_safe_root_examples": roots[:4],
            "not_tag_safe_under_the_model": blocking,
            "check_us_back_to_back": statistics.median(back_to_back) * 1e6,
            "check_us_first_after_a_call": statistics.median(after_call) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    for layers in args.layers:
        rows.append(measure(layers))
        print({k: v for k, v in rows[-1].items() if k != "guards_by_kind"}, flush=True)
    print(write_results(args.out, "guard_check_cost", {"rows": rows}))


if __name__ == "__main__":
    main()
