"""One rank of a tensor-parallel run: compile the sharded demo decoder with regionc, check it, write the report.

    python tests/distributed/tp_worker.py OUT_PREFIX CACHE_DIR RDZV_FILE RANK WORLD_SIZE [CONFIG_JSON]

Joins a gloo process group through the file rendezvous RDZV_FILE, builds the unsharded tiny
decoder (same seed on every rank), shards it for this rank, compiles the shard with regionc on
the shared CACHE_DIR and runs it once. Writes OUT_PREFIX.json (the report, plus this rank's
max error against the unsharded model's eager output) and OUT_PREFIX.pt (the output).
"""

import json
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

import regionc
from regionc.models.llama import LlamaConfig, build_demo_model
from regionc.models.llama_tp import shard_llama


def main(out_prefix: str, cache_dir: str, rdzv: str, rank: str, world_size: str, config_json: str = "{}") -> None:
    rank, world_size = int(rank), int(world_size)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        overrides = json.loads(config_json)
        model = build_demo_model(LlamaConfig.tiny(overrides.pop("n_layers", 3), **overrides))
        tokens = torch.randint(0, model.cfg.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = model(tokens)  # the unsharded model, eager
        tp = shard_llama(model)
        compiled = torch.compile(tp, backend="regionc", options={"cache_dir": cache_dir, "strict": True},
                                 dynamic=False)
        with torch.no_grad():
            out = compiled(tokens)
        reports = regionc.reports()
        result = {**regionc.last_report().to_dict(), "graphs": len(reports),
                  "max_error": (out - expected).abs().max().item()}
        torch.save(out, out_prefix + ".pt")
        with open(out_prefix + ".json", "w") as f:
            json.dump(result, f)
        # every rank done before any tears gloo down: a rank that destroyed the group while its peer
        # still held the connection once saw that peer abort at exit ("terminate called without an
        # active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
