"""Linear head + cross-entropy without materialising the (N × vocab) logits at once.

For GPT-2 124M at batch 32 and context 1024 the logits are 32,768 × 50,304 values: 6.6 GB in
fp32, plus as much again for their gradient. ``chunked_linear_cross_entropy`` computes the same
loss and the same gradients one block of rows at a time: each block's logits are made, turned into
the loss and into the block's gradients right away (softmax minus one-hot, times the head), and
dropped, so at most one block of logits lives at a time. The backward pass then only scales the
gradients already computed by the incoming gradient (1 for ``loss.backward()``), so no matmul is
done twice: the FLOPs are the plain path's.

It matches ``F.cross_entropy(x @ weight.T, targets)`` (mean over the targets that are not
``ignore_index``, -100 by default as in PyTorch and the book's instruction finetuning) within
float rounding; tests/test_gpu_paths.py checks loss and every parameter's gradient in fp32.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_ROWS = 4096  # 4096 × 50,304 fp32 logits: 0.8 GB per block on a GPU


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int, ignore_index: int):
        # x (N, C), weight (V, C), targets (N,)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        valid = targets != ignore_index
        # the mean's denominator as a tensor: no host sync (0 valid targets gives nan, as F.cross_entropy)
        n_valid = valid.sum()
        loss_sum = torch.zeros((), device=x.device, dtype=torch.float32)
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
        for start in range(0, x.shape[0], chunk_rows):
            xc = x[start : start + chunk_rows]  # (n, C)
            tc = targets[start : start + chunk_rows]
            vc = valid[start : start + chunk_rows]
            logits = (xc @ weight.t()).float()  # (n, V), in the matmul's dtype under autocast, then fp32
            safe_t = tc.masked_fill(~vc, 0).unsqueeze(1)  # (n, 1)
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (n, 1)
            picked = logits.gather(1, safe_t)  # (n, 1)
            loss_sum = loss_sum + ((lse - picked).squeeze(1) * vc).sum()
            if need_x or need_w:
                # d(loss_sum)/d(logits) = softmax - one_hot, zero on ignored rows; divided by the
                # count of valid targets below (the mean)
                g = logits.sub_(lse).exp_()
                g.scatter_add_(1, safe_t, torch.full_like(picked, -1.0))
                g.mul_(vc.unsqueeze(1).to(g.dtype))
                g = g.to(x.dtype)  # a no-op in fp32; the head's input dtype otherwise
                # out-of-place matmuls, so autocast picks their precision as it does for the plain path
                if need_x:
                    grad_x[start : start + chunk_rows] = g @ weight.to(g.dtype)
                if need_w:
                    grad_w += g.t() @ xc.to(g.dtype)
        loss = loss_sum / n_valid
        if need_x or need_w:
            scale = 1.0 / n_valid.float()
            ctx.save_for_backward(
                grad_x * scale.to(grad_x.dtype) if need_x else None,
                (grad_w * scale).to(weight.dtype) if need_w else None,
            )
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_x, grad_w = ctx.saved_tensors
        gx = grad_x * grad_out.to(grad_x.dtype) if grad_x is not None else None
        gw = grad_w * grad_out.to(grad_w.dtype) if grad_w is not None else None
        return gx, gw, None, None, None


def chunked_linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight.T`` against ``targets``, ``chunk_rows`` rows at a time.

    ``x`` (..., C) are the final hidden states, ``weight`` (V, C) the output head over the real
    vocabulary only (slice off any padding rows first: the plain path gives them -inf logits, so
    zero probability and zero gradient, which leaving them out reproduces), ``targets`` (...).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return _ChunkedLinearCrossEntropy.apply(
        x.reshape(-1, x.shape[-1]), weight, targets.reshape(-1), chunk_rows, ignore_index
    )
