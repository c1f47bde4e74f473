"""regionc's persistent artifact cache: keys (:mod:`.key`) and the on-disk store (:mod:`.store`).

Typical use (the compiler does this for every unique piece; :func:`open_store` opens the store of
a config and points Inductor's and Triton's caches by the same trust decision)::

    store = open_store(config)
    env = environment_factors(device)
    key, factors = piece_key(fingerprint, input_meta, {**config.codegen_options(), "passes_version": passes.uuid()}, env)
    with store.lock(key) as waited_s:
        payload = store.load(key)
        if payload is None:
            store.record_miss(key)
            payload = compile_piece()
            store.save(key, payload, factors)

Importing this package does not import torch (the CLI stays fast).
"""

from regionc.cache.key import (
    canonical,
    canonical_json,
    environment_factors,
    inductor_config_hash,
    piece_key,
    sources_hash,
)
from regionc.cache.open import configure_compiler_caches, open_store
from regionc.cache.store import ArtifactStore, CacheError, CorruptEntry, EntryInfo

__all__ = [
    "ArtifactStore",
    "CacheError",
    "CorruptEntry",
    "EntryInfo",
    "canonical",
    "canonical_json",
    "configure_compiler_caches",
    "environment_factors",
    "inductor_config_hash",
    "open_store",
    "piece_key",
    "sources_hash",
]
