"""The skinny-linear and SwiGLU Triton kernels through their launchers under the interpreter
(``interpreted.py``): the summed partials against float64 linears, the SwiGLU product against the model's own
code (torch's linears and SiLU in the same dtype); fp16/fp32 only (tl.dot)."""

import torch
from interpreted import ATOL, failures, finish, gen

from regionc.ops.skinny_linear import skinny_linear_triton, skinny_swiglu_triton


def rand(*shape, dtype):
    return (torch.randn(*shape, generator=gen) / shape[-1] ** 0.25).to(dtype)


def expect(name, parts, x, weights, splits, atol):
    refs = [torch.nn.functional.linear(x.double(), w.double()) for w in weights]
    shapes_ok = all(p.shape == (splits, *r.shape) and p.dtype == torch.float32 and p.is_contiguous()
                    for p, r in zip(parts, refs))
    errs = [(p.double().sum(0) - r).abs().max().item() if shapes_ok else float("inf") for p, r in zip(parts, refs)]
    ok = len(parts) == len(refs) and shapes_ok and all(e <= atol for e in errs)
    print(f"{'ok ' if ok else 'BAD'} {name}: max abs err {max(errs):.2e}")
    if not ok:
        failures.append(name)


for dtype in (torch.float16, torch.float32):
    # q/k/v: three weights in one launch, column counts that do not fill a block, K a multiple of BLOCK_K
    x = rand(8, 64, dtype=dtype)
    ws = [rand(48, 64, dtype=dtype), rand(16, 64, dtype=dtype), rand(20, 64, dtype=dtype)]
    expect(f"three weights {dtype}", skinny_linear_triton(x, ws, config=(16, 16, 32, 4, 2)), x, ws, 1, ATOL[dtype])
    # two splits of K, then three over two K steps (the last split is empty: zeros)
    expect(f"two splits {dtype}", skinny_linear_triton(x, ws, 2, config=(16, 16, 32, 4, 2)), x, ws, 2, ATOL[dtype])
    expect(f"an empty split {dtype}", skinny_linear_triton(x, ws, 3, config=(16, 16, 32, 4, 2)), x, ws, 3,
           ATOL[dtype])
    # a ragged K (masked tail), split, one row
    x = rand(1, 40, dtype=dtype)
    ws = [rand(20, 40, dtype=dtype), rand(7, 40, dtype=dtype)]
    expect(f"ragged K, two splits, one row {dtype}", skinny_linear_triton(x, ws, 2, config=(16, 16, 16, 4, 2)),
           x, ws, 2, ATOL[dtype])
    # six weights: two launches (four pointer slots each)
    x = rand(5, 32, dtype=dtype)
    ws = [rand(n, 32, dtype=dtype) for n in (16, 3, 33, 8, 17, 1)]
    expect(f"six weights in two launches {dtype}", skinny_linear_triton(x, ws, config=(16, 16, 32, 4, 2)),
           x, ws, 1, ATOL[dtype])
    # more rows than a row block; weights that are row slices of a wider matrix (row stride > K); an x
    # whose K is strided (copied by the launcher)
    big = rand(24, 96, dtype=dtype)
    x = rand(40, 2 * 64, dtype=dtype)[:, ::2]
    ws = [big[:, :64], big[:10, 32:]]
    expect(f"row blocks, strided weights and x, two splits {dtype}",
           skinny_linear_triton(x, ws, 2, config=(16, 32, 32, 4, 2)), x, ws, 2, ATOL[dtype])

# the default launch parameters (a 256-wide K block)
x = rand(3, 300, dtype=torch.float16)
ws = [rand(70, 300, dtype=torch.float16), rand(9, 300, dtype=torch.float16)]
expect("default config", skinny_linear_triton(x, ws), x, ws, 1, ATOL[torch.float16])


def expect_swiglu(name, out, x, w_gate, w_up, atol):
    ref = torch.nn.functional.silu(x.double() @ w_gate.double().T) * (x.double() @ w_up.double().T)
    ok = out.shape == ref.shape and out.dtype == x.dtype and out.is_contiguous()
    err = (out.double() - ref).abs().max().item() if ok else float("inf")
    ok = ok and err <= atol
    print(f"{'ok ' if ok else 'BAD'} {name}: max abs err {err:.2e}")
    if not ok:
        failures.append(name)


for dtype in (torch.float16, torch.float32):
    # columns that do not fill a block, K a multiple of BLOCK_K; then a ragged K, more rows than a row
    # block, row-sliced weights and a K-strided x
    x, g, u = rand(8, 64, dtype=dtype), rand(40, 64, dtype=dtype), rand(40, 64, dtype=dtype)
    expect_swiglu(f"swiglu {dtype}", skinny_swiglu_triton(x, g, u, config=(16, 16, 32, 4, 2)), x, g, u, ATOL[dtype])
    big = rand(24, 96, dtype=dtype)
    x = rand(20, 2 * 40, dtype=dtype)[:, ::2]
    g, u = big[:, :40], big[:, 50:90]
    expect_swiglu(f"swiglu ragged K, row blocks, strided {dtype}",
                  skinny_swiglu_triton(x, g, u, config=(16, 16, 16, 4, 2)), x, g, u, ATOL[dtype])

finish()
