"""Bucketing, padding, slicing and shape keys: pure logic on CPU tensors."""

from __future__ import annotations

import pytest
import torch

from regionc.config import DEFAULT_CAPTURE_SIZES
from regionc.cudagraph.sizes import (
    ABOVE_MAX,
    DynamicSpec,
    bucket_for,
    copy_padded,
    empty_padded_like,
    fits,
    keyed_shape,
    pad_args,
    runtime_size,
    slice_outputs,
)

SIZES = (1, 2, 4, 8, 16)


@pytest.mark.parametrize("n, expected", [(0, 1), (1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 16), (16, 16),
                                         (17, ABOVE_MAX), (10_000, ABOVE_MAX)])
def test_bucket_for_next_capture_size(n, expected):
    assert bucket_for(n, SIZES) == expected


def test_bucket_for_default_sizes():
    assert bucket_for(20, DEFAULT_CAPTURE_SIZES) == 24
    assert bucket_for(300, DEFAULT_CAPTURE_SIZES) == 384
    assert bucket_for(513, DEFAULT_CAPTURE_SIZES) == ABOVE_MAX
    with pytest.raises(ValueError):
        bucket_for(-1, SIZES)


def test_runtime_size_agrees_or_raises():
    spec = DynamicSpec.make(inputs=[(0, 0), (2, 1)], int_args=[3])
    x, w, y = torch.zeros(3, 4), torch.zeros(4, 4), torch.zeros(2, 3)
    assert runtime_size([x, w, y, 3], spec) == 3
    with pytest.raises(ValueError, match="disagree"):
        runtime_size([x, w, y, 5], spec)
    with pytest.raises(ValueError, match="size int"):
        runtime_size([x, w, y, 3.0], spec)
    assert runtime_size([x], DynamicSpec()) is None


def test_empty_padded_like_keeps_stride_order():
    t = torch.randn(6, 3).t()  # (3, 6), strides (1, 3): transposed
    buf = empty_padded_like(t, (1,), 8)
    assert buf.shape == (3, 8)
    assert buf.stride() == (1, 3)  # still column-major, dense
    plain = empty_padded_like(torch.randn(3, 5), (0,), 4)
    assert plain.shape == (4, 5) and plain.is_contiguous()
    scalar = empty_padded_like(torch.tensor(2.0), (), 0)
    assert scalar.shape == ()


def test_buffers_keep_broadcast_and_strided_layouts():
    """Compiled code asserts input strides: a staged buffer keeps an expanded mask expanded and a strided
    view strided, and a copy writes each broadcast location once."""
    mask = torch.randn(1, 1, 8).expand(4, 1, 8)  # stride (0, 8, 1), as HF hands a mask to every row
    buf = empty_padded_like(mask, (), 0)
    assert buf.shape == mask.shape and buf.stride() == mask.stride()
    copy_padded(buf, mask, (), 0)
    assert torch.equal(buf, mask)
    view = torch.randn(3, 16)[:, ::2]
    strided = empty_padded_like(view, (), 0)
    assert strided.stride() == view.stride()
    copy_padded(strided, view, (), 0)
    assert torch.equal(strided, view)
    padded = empty_padded_like(mask, (2,), 10)  # a padded dim beside a broadcast one
    assert padded.shape == (4, 1, 10) and padded.stride()[0] == 0
    copy_padded(padded, mask, (2,), 8, pad_value=-1.0)
    assert torch.equal(padded[..., :8], mask) and bool((padded[..., 8:] == -1).all())
    assert fits(torch.randn(1, 1, 8).expand(4, 1, 8), (0,)) and not fits(torch.randn(4, 1, 8), (0,))


def test_copy_padded_zero_and_custom_tail():
    src = torch.arange(6.0).reshape(3, 2)
    dst = torch.full((4, 2), 7.0)
    copy_padded(dst, src, (0,), 3)
    assert torch.equal(dst[:3], src) and torch.equal(dst[3], torch.zeros(2))
    dst.fill_(7.0)
    copy_padded(dst, src, (0,), 3, pad_value=-1)
    assert torch.equal(dst[3], torch.full((2,), -1.0))
    # two dynamic dims of one arg (an n x n mask)
    mask = torch.ones(2, 2)
    big = torch.full((4, 4), 5.0)
    copy_padded(big, mask, (0, 1), 2)
    assert big.sum() == 4 and torch.equal(big[:2, :2], mask)


def test_pad_args_pads_tensors_and_ints_without_touching_originals():
    spec = DynamicSpec.make(inputs=[(0, 0)], int_args=[2], pad_values={0: 0})
    x, w = torch.ones(3, 2), torch.ones(2, 2)
    padded = pad_args([x, w, 3], spec, 3, 4)
    assert padded[0].shape == (4, 2) and torch.equal(padded[0][3], torch.zeros(2))
    assert padded[1] is w and padded[2] == 4
    assert x.shape == (3, 2)
    assert pad_args([x, w, 3], spec, 3, 3)[0] is x  # nothing to pad: the same objects


def test_slice_outputs_only_declared_dims():
    spec = DynamicSpec.make(inputs=[(0, 0)], outputs=[(0, 0), (2, None)])
    out, weightish = torch.randn(4, 4), torch.randn(4, 4)
    result = slice_outputs([out, weightish, 4], spec, 3, 4)
    assert result[0].shape == (3, 4) and result[0].data_ptr() == out.data_ptr()  # a view, no copy
    assert result[1] is weightish  # same size as the bucket, but not declared: untouched
    assert result[2] == 3
    with pytest.raises(ValueError):
        slice_outputs([torch.randn(5, 4), weightish, 4], spec, 3, 4)
    with pytest.raises(ValueError):
        slice_outputs([out, weightish, 7], spec, 3, 4)


def shape_key(args, spec, size, static_indices, bucket=None):
    """The runner's key of a call whose static inputs are at ``static_indices``."""
    return keyed_shape(args, spec, size, [i for i in range(len(args)) if i not in static_indices], bucket)


def test_shape_key_pads_and_ignores_statics():
    spec = DynamicSpec.make(inputs=[(0, 0)], int_args=[2])
    w = torch.randn(4, 4)
    k3 = shape_key([torch.randn(3, 4), w, 3], spec, 4, {1}, bucket=4)
    k4 = shape_key([torch.randn(4, 4), torch.randn(4, 4), 4], spec, 4, {1}, bucket=4)
    assert k3 == k4  # same bucket: one graph
    k8 = shape_key([torch.randn(5, 4), w, 5], spec, 8, {1}, bucket=8)
    assert k8 != k4
    assert shape_key([torch.randn(4, 4, dtype=torch.float16), w, 4], spec, 4, {1}, bucket=4) != k4
    # without dynamic dims each concrete shape is its own key; scalars key by value
    none = DynamicSpec()
    assert shape_key([torch.randn(3, 4), 0.5], none, None, set()) != shape_key([torch.randn(4, 4), 0.5], none, None, set())
    assert shape_key([torch.randn(3, 4), 0.5], none, None, set()) != shape_key([torch.randn(3, 4), 0.25], none, None, set())
    with pytest.raises(TypeError):
        shape_key([torch.randn(3, 4), [1, 2]], none, None, set())
