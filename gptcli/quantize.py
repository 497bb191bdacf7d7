"""Weight formats and kernels for decoding on CPU: fp32 products split across the threads
(``--dtype fp32``, the default), prepacked bf16 (``--dtype bf16``) and weight-only int8
(``--dtype int8``, opt-in).

fp32: at batch 1 a product is a matrix-vector product, and MKL runs those on one thread whatever
``torch.set_num_threads`` says, so a decode step streamed its weights from one core. SplitLinear
cuts each (column-major) weight into one block of output columns per thread, views them as a
batch without copying, and lets ``torch.baddbmm`` run the blocks in parallel: every output is still
the same dot product by the same MKL kernel, so the bits are those of ``F.linear`` (checked by
tests/test_fast_decode.py), only computed on all threads.

bf16: each Linear's weight is reordered once into oneDNN's blocked layout, the one its bf16 matmul
converts a plain weight into at every call; the products are the same bits as ``F.linear``'s
(tests/test_fast_decode.py checks the logits), only faster at batch 1.

int8:
Every Linear weight becomes int8 with one scale per output row (symmetric, round to nearest);
activations, LayerNorms, embeddings and the KV cache keep their dtype (bf16 weights around fp32
attention, as ``--dtype bf16``). The matmul is torch's own weight-only int8 kernel,
``aten._weight_int8pack_mm``, which reads one byte per weight: decoding at batch 1 streams every
weight once per token, so a quarter of fp32's bytes. It changes the computed function: greedy text
departs from fp32's after a while (benchmarks/bench_sample_cpu.py reports by how much).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ACT_DTYPE = torch.bfloat16  # the kernel's activations and scales; fp32 activations take a slow path


SPLIT_MAX_ROWS = 256  # more rows than this (a long prefill, eval's batches): MKL's own threading
SPLIT_MIN_BLOCK = 1 << 17  # weights per thread below which one thread is faster (tiny models)


class SplitLinear(nn.Linear):
    """An fp32 nn.Linear, holding the very same Parameters (a tied head stays tied, the state dict
    is unchanged), whose column-major weight's products with a few rows run one block of output
    columns per thread (see above). Made by ``split_linears_fp32`` for inference on CPU."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    _parts: tuple[int, int] = (0, 0)  # (threads, blocks for that many threads), computed once

    def parts(self, rows: int) -> int:
        """Into how many blocks a product with ``rows`` rows is cut now: one per thread, fewer
        where a block would hold fewer than ``SPLIT_MIN_BLOCK`` weights or the columns do not
        divide evenly, and 0 where ``F.linear`` runs it as it is (one block, too many rows, or a
        weight that is not column-major)."""
        k, n = self.in_features, self.out_features
        if not 0 < rows <= SPLIT_MAX_ROWS or self.weight.stride() != (1, n):  # w.t(): a contiguous (k, n)
            return 0
        threads = torch.get_num_threads()
        if self._parts[0] != threads:
            parts = min(threads, n * k // SPLIT_MIN_BLOCK)
            while parts > 1 and n % parts:
                parts -= 1
            self._parts = (threads, parts if parts > 1 else 0)
        return self._parts[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, k, n = self.weight, self.in_features, self.out_features
        rows = x.numel() // k if k else 0
        parts = self.parts(rows)
        if not parts:
            return F.linear(x, w, self.bias)
        cols = n // parts
        blocks = w.t().as_strided((parts, k, cols), (cols, n, 1))  # (P, k, n/P): views, no copy
        x3 = x.reshape(1, rows, k).expand(parts, rows, k)  # (P, rows, k)
        if self.bias is None:
            y = torch.bmm(x3, blocks)
        else:
            y = torch.baddbmm(self.bias.view(parts, 1, cols), x3, blocks)  # (P, rows, n/P)
        return y.transpose(0, 1).reshape(*x.shape[:-1], n)


def split_linears_fp32(net: nn.Module) -> nn.Module:
    """Replace every fp32 nn.Linear of ``net`` (in place) by a SplitLinear on the same Parameters
    (their weights must already be column-major, as ``prepare_for_inference`` stores them)."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            plain = isinstance(child, nn.Linear) and type(child).forward is nn.Linear.forward
            if plain and child.weight.dtype == torch.float32:
                setattr(parent, name, SplitLinear(child))
    return net


class Int8Linear(nn.Module):
    """``y = x @ (q * scale[:, None]).T + bias`` with ``q`` int8 (out, in) and one scale per row."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        w = weight.detach().float()
        # the scale the kernel will use is the bf16 one, so quantise against it: no row is then
        # off by its scale's rounding (up to 0.4%), only each weight by half a step
        scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny).to(ACT_DTYPE)
        q = torch.round(w / scale.float().unsqueeze(1)).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.register_buffer("weight_int8", q.contiguous())  # (out, in)
        self.register_buffer("scales", scale)  # (out,)
        self.register_buffer("bias", None if bias is None else bias.detach().to(ACT_DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(ACT_DTYPE)  # (N, in)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scales)  # (N, out)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


def quantize_linears_int8(net: nn.Module) -> nn.Module:
    """Replace every nn.Linear of ``net`` (in place) by an Int8Linear of its weights; a head tied
    to the embedding gets its own int8 copy, the embedding keeps its float rows for the lookup."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child.weight, child.bias))
    return net


def int8_supported() -> bool:
    """Whether this torch has the CPU int8 weight-only matmul (torch 2.3 and later)."""
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def packing_supported() -> bool:
    """Whether this torch and CPU have oneDNN's bf16 linear with prepacked weights."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(nn.Module):
    """A bf16 nn.Linear whose weight is held prepacked by oneDNN (an opaque tensor, so it is kept
    out of the state dict: this module is for inference only, made by ``pack_linears_bf16``)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)  # 1: batch-1 hint
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

    @property
    def weight(self) -> torch.Tensor:
        """The weight as a plain (out, in) tensor, unpacked on demand (a copy)."""
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")


def pack_linears_bf16(net: nn.Module) -> nn.Module:
    """Replace every bf16 nn.Linear of ``net`` (in place) by a PackedLinear computing the same
    bits; a head tied to the embedding gets its own packed copy, the embedding keeps its rows."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.weight.dtype == torch.bfloat16:
                setattr(parent, name, PackedLinear(child))
    return net
