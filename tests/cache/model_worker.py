"""Compile the tiny demo decoder with regionc in this process; write the report and output.

    python tests/cache/model_worker.py OUT_PREFIX CACHE_DIR OPTIONS_JSON [GO_FILE]

Writes OUT_PREFIX.json (the report, with ``ops_registered``: whether regionc's ops were imported by
the compiled call) and OUT_PREFIX.pt (the output). With GO_FILE, waits
for that file first, so several workers can be released at the same moment. Option
``count_cpp_builds``: the report's ``cpp_builds`` lists the C++ libraries (``.so``) Inductor built
for the model (its CPU ISA probe and its shared precompiled header excluded; builds run in this
process then).
"""

import json
import os
import sys
import time

import torch

import regionc
from regionc.models.llama import LlamaConfig, build_demo_model


def main(out_prefix: str, cache_dir: str, options_json: str, go_file: str | None = None) -> None:
    options = {"cache_dir": cache_dir, "strict": True, **json.loads(options_json)}
    dtype = getattr(torch, options.pop("dtype", "float32"))
    seq = options.pop("seq", 8)
    entry = options.pop("entry", "torch.compile")  # or "regionc.compile"
    builds = _count_cpp_builds() if options.pop("count_cpp_builds", False) else []
    model = build_demo_model(LlamaConfig.tiny(3), dtype=dtype)
    tokens = torch.randint(0, 128, (2, seq), generator=torch.Generator().manual_seed(0))
    if entry == "regionc.compile":
        compiled = regionc.compile(model, options=options, dynamic=False)
    else:
        compiled = torch.compile(model, backend="regionc", options=options, dynamic=False)
    if go_file:
        while not os.path.exists(go_file):
            time.sleep(0.01)
    with torch.no_grad():
        out = compiled(tokens)
        ops_registered = "regionc.ops" in sys.modules  # before anything else could import them
        expected = model(tokens)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    torch.save(out, out_prefix + ".pt")
    with open(out_prefix + ".json", "w") as f:
        json.dump({**regionc.last_report().to_dict(), "cpp_builds": builds, "ops_registered": ops_registered,
                   "dynamo_graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"]}, f)


def _count_cpp_builds() -> list:
    from torch._inductor import config
    from torch._inductor.cpp_builder import CppBuilder
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    pick_vec_isa()  # the ISA probe builds test programs once per host and cache: not a piece's
    config.compile_threads = 1  # builds in this process, where they are counted
    builds = []
    build = CppBuilder.build

    def counted(self, *args, **kwargs):
        if self.get_target_file_path().endswith(".so"):
            builds.append(self.get_target_file_path())
        return build(self, *args, **kwargs)

    CppBuilder.build = counted
    return builds


if __name__ == "__main__":
    main(*sys.argv[1:])
