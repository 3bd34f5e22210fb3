"""The gloo weight wire (pipeline/weight_wire.py): buckets cut by one rule, and a bucket's tensors
unpacked as vLLM's own `unpack_tensor` gives them."""

import pytest
import torch
from vllm.distributed.weight_transfer.base import ParamMeta
from vllm.distributed.weight_transfer.packed_tensor import unpack_tensor

from pipeline.weight_wire import GlooUpdate, buckets, describe, nbytes, unpack

pytestmark = pytest.mark.unit


def _meta(*sizes: int) -> list[ParamMeta]:
    return [ParamMeta(f"p{i}", torch.float32, (n,)) for i, n in enumerate(sizes)]


def test_buckets_hold_at_most_their_size_and_a_larger_tensor_goes_alone():
    cut = buckets(_meta(10, 10, 30, 5, 5), bucket_bytes=80)  # float32: 40, 40, 120, 20, 20 bytes
    assert [[m.name for m in b] for b in cut] == [["p0", "p1"], ["p2"], ["p3", "p4"]]
    assert buckets([], 80) == []


def test_a_bucket_unpacks_as_vllms_unpack_tensor_does():
    named = [("a", torch.randn(3, 4)), ("b", torch.arange(5, dtype=torch.int64)),
             ("c", torch.randn(2, 2).to(torch.bfloat16)), ("d", torch.tensor(7.0))]
    packed = torch.cat([t.contiguous().view(-1).view(torch.uint8) for _, t in named])
    update = GlooUpdate(**describe(ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in named))
    ours = unpack(packed, update.metas())
    theirs = unpack_tensor(packed, [n for n, _ in named], [list(t.shape) for _, t in named],
                           [t.dtype for _, t in named], [nbytes(m) for m in update.metas()])
    for (n, t), (on, ot), (tn, tt) in zip(named, ours, theirs):
        assert n == on == tn and ot.dtype == tt.dtype == t.dtype and ot.shape == tt.shape == t.shape
        assert torch.equal(ot, t) and torch.equal(tt, t)


def test_an_update_whose_lists_disagree_is_refused():
    with pytest.raises(ValueError, match="2 names, 1 dtypes"):
        GlooUpdate(["a", "b"], ["float32"], [[1], [2]])
