"""Compile the tiny demo decoder with regionc in this process; write the report and output.

    python tests/cache/model_worker.py OUT_PREFIX CACHE_DIR OPTIONS_JSON [GO_FILE]

Writes OUT_PREFIX.json (the report) and OUT_PREFIX.pt (the output). With GO_FILE, waits
for that file first, so several workers can be released at the same moment.
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
        expected = model(tokens)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    torch.save(out, out_prefix + ".pt")
    with open(out_prefix + ".json", "w") as f:
        json.dump({**regionc.last_report().to_dict(),
                   "dynamo_graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"]}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
