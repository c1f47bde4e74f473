"""Piecewise CUDA graphs: each piece captured per shape into one shared pool, replayed later.

See :mod:`regionc.cudagraph.runner` for the lifecycle and the input/output contract, and
:mod:`regionc.cudagraph.sizes` for bucketing and padding of the dynamic token/batch dim.
"""

from regionc.blocks.writes import mutated_placeholders
from regionc.cudagraph.capture import CudaGraphBackend
from regionc.cudagraph.runner import CudaGraphAddressError, GraphPool, PieceGraphRunner, should_use_cudagraphs
from regionc.cudagraph.sizes import ABOVE_MAX, DynamicSpec, bucket_for, runtime_size

__all__ = [
    "ABOVE_MAX", "CudaGraphAddressError", "CudaGraphBackend", "DynamicSpec", "GraphPool", "PieceGraphRunner",
    "bucket_for", "mutated_placeholders", "runtime_size", "should_use_cudagraphs",
]
