"""model_worker.py with instrumentation for the killed-mid-compile test.

    python tests/distributed/stall_worker.py stall SIGNAL_FILE OUT_PREFIX CACHE_DIR
    python tests/distributed/stall_worker.py wait  SIGNAL_FILE OUT_PREFIX CACHE_DIR

``stall``: the first piece's Inductor compile touches SIGNAL_FILE (the piece's cache lock is held
then) and sleeps until the test SIGKILLs the process. ``wait``: a normal compile that touches
SIGNAL_FILE when it first asks for a cache lock, so the test knows it is about to wait.
"""

import sys
import time
from pathlib import Path

import regionc.cache.store as store
import regionc.compiler.graph as graph

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cache"))
import model_worker  # noqa: E402


def main(mode: str, signal_file: str, out_prefix: str, cache_dir: str) -> None:
    if mode == "stall":
        def stall(*args, **kwargs):
            Path(signal_file).touch()
            time.sleep(600)
            raise AssertionError("should have been killed")

        graph.compile_piece = stall
    else:
        lock = store.ArtifactStore.lock

        def announce_then_lock(self, key):
            Path(signal_file).touch()
            return lock(self, key)

        store.ArtifactStore.lock = announce_then_lock
    model_worker.main(out_prefix, cache_dir, "{}")


if __name__ == "__main__":
    main(*sys.argv[1:])
