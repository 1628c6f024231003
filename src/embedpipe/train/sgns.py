"""Skip-gram with negative sampling over window batches (`windows`), on CPU or GPU.

Every (context, centre) pair of a window trains the context's input row to predict the
centre word's output row against the centre word's K negatives:

    loss = sum over pairs of -log s(u_o . v_c) - sum_k [n_k != o] log s(-u_k . v_c).

On CPU the step is a compiled kernel (`kernels.sgns_window_sgd`): plain SGD centre word
by centre word on working copies of the rows the batch touches, as a word2vec.c thread
does. On GPUs the same batch is expanded into pairs and `sgns_step` processes them in
blocks of tensor operations, each block seeing the updates of the blocks before it. Both
return (rows before - rows after) / lr as the "gradient" (the exact gradient when lr = 0),
as coalesced sparse tensors over the touched rows, so DistributedDataParallel reduces
them as sparse gradients: communication grows with the batch, never with the vocabulary.
Both equal autograd on `reference_loss` at lr = 0 (tested).
"""

from __future__ import annotations

import collections
import functools
import itertools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from embedpipe.train.kernels import sgns_window_sgd
from embedpipe.train.windows import SpanBatch, WindowBatch, window_contexts

BLOCK = 1024  # pairs per block of the step: (1 + K) x BLOCK x dim floats stay in L2/L3


# Longer than 60 lines: the block loop shares its buffers and running state in one frame.
def sgns_step(
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    in_rows: torch.Tensor,
    in_pos: torch.Tensor,
    out_rows: torch.Tensor,
    out_pos: torch.Tensor,
    lr: float = 0.0,
    block: int = BLOCK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and gradients of a batch of pairs over the rows it touches, computed by hand.

    A batch is given compactly: `in_rows` the distinct centre ids, `in_pos` (B,) each
    pair's centre as a position in them; `out_rows` the distinct output ids, `out_pos`
    (B, 1 + K) each pair's context then its K negatives as positions in `out_rows`
    (`compact_rows` builds both). With centre c, context o and negatives n_k,

        loss = sum over pairs of -log s(u_o . v_c) - sum_k [n_k != o] log s(-u_k . v_c).

    Returns (loss, grad_in (len(in_rows), d), grad_out (len(out_rows), d)): row j is the
    gradient for row `*_rows[j]` of the table.

    Pairs are processed in blocks of `block` that stay in cache. With lr > 0 every block
    sees the SGD updates of the blocks before it, as a word2vec thread sees its own: the
    step works on copies of the touched rows, updates them in place block by block, and
    returns (rows before - rows after) / lr, so that the optimiser's -lr * gradient lands
    where block-by-block SGD would (up to float rounding). With lr = 0 (or a single block)
    it is exactly the gradient of the loss at the current tables.
    """
    batch, width = out_pos.shape
    dim = w_in.shape[1]
    dtype, device = w_in.dtype, w_in.device
    rows_in, rows_out = w_in.index_select(0, in_rows), w_out.index_select(0, out_rows)
    sequential = lr > 0 and batch > block
    # Per column: -1 for the context (-log s(x) = softplus(-x)), +1 for the negatives
    # (-log s(-x) = softplus(x)); 0 for a negative that is the context word itself, which
    # word2vec.c and gensim skip.
    weight = torch.ones(batch, width, dtype=dtype, device=device)
    weight[:, 1:] = out_pos[:, 1:] != out_pos[:, :1]
    signed = weight.clone()
    signed[:, 0] = -1.0
    if sequential:  # the working copies take the updates; gradients are derived at the end
        grad_in, grad_out = rows_in, rows_out
        signed.mul_(-lr)  # scaled here: index_add_ is fastest without alpha
    else:
        grad_in, grad_out = torch.zeros_like(rows_in), torch.zeros_like(rows_out)
    sign = torch.ones(width, dtype=dtype, device=device)
    sign[0] = -1.0
    losses = []
    m = max(1, min(block, batch))

    def buffer(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device=device)

    u_buf, v_buf, z_buf = buffer(m * width, dim), buffer(m, dim), buffer(m, 1, width)
    gv_buf, gu_buf = buffer(m, 1, dim), buffer(m, width, dim)
    flat_out_pos = out_pos.reshape(-1)
    for a in range(0, batch, m):
        n = min(m, batch - a)
        t_pos, c_pos = flat_out_pos[a * width : (a + n) * width], in_pos[a : a + n]
        u = torch.index_select(rows_out, 0, t_pos, out=u_buf[: n * width]).view(n, width, dim)
        v = torch.index_select(rows_in, 0, c_pos, out=v_buf[:n])
        z = torch.bmm(v.unsqueeze(1), u.transpose(1, 2), out=z_buf[:n]).view(n, width)
        z.mul_(sign)
        losses.append(torch.dot(F.softplus(z).view(-1), weight[a : a + n].view(-1)))
        g = z.sigmoid_().mul_(signed[a : a + n])  # d loss / d score (times -lr: sequential)
        gv = torch.bmm(g.unsqueeze(1), u, out=gv_buf[:n]).view(n, dim)
        gu = torch.mul(g.unsqueeze(2), v.unsqueeze(1), out=gu_buf[:n]).view(n * width, dim)
        grad_in.index_add_(0, c_pos, gv)
        grad_out.index_add_(0, t_pos, gu)
    if sequential:
        grad_in = grad_in.sub_(w_in.index_select(0, in_rows)).div_(-lr)
        grad_out = grad_out.sub_(w_out.index_select(0, out_rows)).div_(-lr)
    return torch.stack(losses).sum(dtype=torch.float64), grad_in, grad_out


class _WindowLoss(torch.autograd.Function):
    """A batch's loss with hand-computed gradients, returned as coalesced sparse tensors."""

    @staticmethod
    def forward(ctx, w_in, w_out, model, lr, *batch):  # noqa: ANN001, ANN205
        batch = WindowBatch(*batch)
        loss, grad_in, grad_out = model.step(w_in, w_out, batch, lr)
        ctx.save_for_backward(batch.in_rows, batch.out_rows, grad_in, grad_out)
        ctx.shapes = (w_in.shape, w_out.shape)
        return loss.to(w_in.dtype)

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: ANN001, ANN205
        in_rows, out_rows, grad_in, grad_out = ctx.saved_tensors
        grads = [
            torch.sparse_coo_tensor(
                rows.unsqueeze(0), values.mul_(grad_loss), shape,
                is_coalesced=True, check_invariants=False,
            )
            for rows, values, shape in zip(
                (in_rows, out_rows), (grad_in, grad_out), ctx.shapes, strict=True
            )
        ]  # fmt: skip
        return grads[0], grads[1], None, None, *([None] * len(WindowBatch._fields))


def kernel_step(
    kernel: Callable[..., tuple[float, int]],
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    batch: WindowBatch,
    lr: float,
    threads: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad_in, grad_out) of a window batch by a compiled CPU kernel (`kernels`).

    lr > 0: SGD on working copies of the touched rows, returned as (before - after) / lr;
    with threads > 1 the centre words are split into that many runs trained at once on
    the shared copies, lock-free as word2vec.c's threads (Hogwild): faster, but the
    interleaving of updates, and so the last bits of the result, vary from run to run.
    lr = 0: the gradient at the current rows.
    """
    rows_in, rows_out = w_in.index_select(0, batch.in_rows), w_out.index_select(0, batch.out_rows)
    span = batch.span.numpy()
    per_centre = [t.numpy() for t in (batch.left, batch.right, batch.centre_span)]
    per_centre += [batch.centre_out.numpy(), batch.neg_out.numpy()]
    if lr > 0:
        before_in, before_out = rows_in.clone(), rows_out.clone()
        loss = run_sgd(kernel, rows_in.numpy(), rows_out.numpy(), span, per_centre, lr, threads)
        grad_in, grad_out = before_in.sub_(rows_in).div_(lr), before_out.sub_(rows_out).div_(lr)
    else:
        grad_in, grad_out = torch.zeros_like(rows_in), torch.zeros_like(rows_out)
        loss, _ = kernel(
            rows_in.numpy(), rows_out.numpy(), span, *per_centre, 0.0,
            grad_in.numpy(), grad_out.numpy(),
        )  # fmt: skip
    return torch.tensor(loss, dtype=torch.float64), grad_in, grad_out


def run_sgd(
    kernel: Callable[..., tuple[float, int]],
    w_in: np.ndarray,
    w_out: np.ndarray,
    span: np.ndarray,
    per_centre: list[np.ndarray],
    lr: float,
    threads: int,
) -> float:
    """SGD by `kernel` on `w_in` / `w_out` in place; the centre words split into `threads`
    runs trained at once, lock-free (Hogwild). Returns the (sampled) summed loss."""
    no_grad = np.empty((0, w_in.shape[1]), dtype=w_in.dtype)
    n = len(per_centre[0])
    cuts = np.linspace(0, n, min(threads, max(n, 1)) + 1).astype(int)
    runs = [[a[lo:hi] for a in per_centre] for lo, hi in itertools.pairwise(cuts)]
    if len(runs) == 1:
        return kernel(w_in, w_out, span, *runs[0], lr, no_grad, no_grad)[0]
    results = kernel_pool(threads).map(
        lambda run: kernel(w_in, w_out, span, *run, lr, no_grad, no_grad), runs
    )
    return sum(part for part, _ in results)


@functools.cache
def kernel_pool(threads: int) -> ThreadPoolExecutor:
    """The threads that run a CPU kernel's runs at once (the kernels release the GIL)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="kernel")


class SkipGram(nn.Module):
    """Input and output embedding tables, sparse so a step touches only the rows it uses.

    `threads`: CPU kernel threads per step (`kernel_step`); 1 keeps runs bit-reproducible.
    """

    kernel = staticmethod(sgns_window_sgd)

    def __init__(self, vocab_size: int, dim: int, seed: int, threads: int = 1) -> None:
        super().__init__()
        self.threads = threads
        generator = torch.Generator().manual_seed(seed)
        self.input = nn.Embedding(vocab_size, dim, sparse=True)
        self.output = nn.Embedding(vocab_size, dim, sparse=True)
        with torch.no_grad():
            # gensim's U(-1/dim, 1/dim) (word2vec.c draws half as wide): scored a little
            # higher on the word-similarity and analogy benchmarks.
            self.input.weight.uniform_(-1.0 / dim, 1.0 / dim, generator=generator)
            self.output.weight.zero_()

    def forward(self, batch: WindowBatch, lr: float = 0.0) -> torch.Tensor:
        """Summed loss of a window batch; gradients as sparse tensors over its rows.

        `lr`: the step's learning rate, so that the examples of the batch see the updates
        of the ones before them (0: the plain gradient).
        """
        return _WindowLoss.apply(self.input.weight, self.output.weight, self, lr, *batch)

    def step(
        self, w_in: torch.Tensor, w_out: torch.Tensor, batch: WindowBatch, lr: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The compiled kernel on CPU, blocked tensor operations elsewhere."""
        if w_in.device.type == "cpu":
            return kernel_step(self.kernel, w_in, w_out, batch, lr, self.threads)
        return self.tensor_step(w_in, w_out, batch, lr)

    def train_in_place(self, batch: SpanBatch, lr: float) -> float:
        """SGD by the CPU kernel straight on the tables, as a word2vec.c thread does: no
        copies of the touched rows and no gradients. Nothing is left to exchange, so this
        is the single-process path (`InPlaceTrainer` runs `threads` batches at once);
        returns the (sampled) summed loss."""
        w_in, w_out = self.input.weight.detach().numpy(), self.output.weight.detach().numpy()
        per_centre = [batch.left, batch.right, batch.centre_span, batch.centres, batch.negatives]
        return run_sgd(self.kernel, w_in, w_out, batch.span, per_centre, lr, 1)

    def tensor_step(
        self, w_in: torch.Tensor, w_out: torch.Tensor, batch: WindowBatch, lr: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        owner, context = window_contexts(batch)
        targets = torch.cat([batch.centre_out.unsqueeze(1), batch.neg_out], 1)[owner]
        return sgns_step(w_in, w_out, batch.in_rows, context, batch.out_rows, targets, lr)


class InPlaceTrainer:
    """`SkipGram.train_in_place` on `threads` batches at once, lock-free (Hogwild), as
    word2vec.c's threads each train their own part of the corpus on the shared tables.

    Whole batches go to the threads, not halves of one batch, so no thread waits for the
    other at a step's end. One thread runs inline, so a single-threaded run stays
    bit-reproducible. `submit` returns the loss of
    the batches finished meanwhile; `drain` waits for all (before a checkpoint).
    """

    def __init__(self, model: SkipGram, threads: int) -> None:
        self.model = model
        self.threads = threads
        self.pending: collections.deque[Future[float]] = collections.deque()

    def submit(self, batch: SpanBatch, lr: float) -> float:
        if self.threads == 1:
            return self.model.train_in_place(batch, lr)
        done = 0.0
        if len(self.pending) == self.threads:
            done += self.pending.popleft().result()
        self.pending.append(kernel_pool(self.threads).submit(self.model.train_in_place, batch, lr))
        return done

    def drain(self) -> float:
        done = 0.0
        while self.pending:
            done += self.pending.popleft().result()
        return done


def reference_loss(
    w_in: torch.Tensor, w_out: torch.Tensor, centre: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The plain SGNS loss with autograd (the definition `sgns_step` implements)."""
    v = w_in[centre]
    scores = (w_out[targets] * v.unsqueeze(1)).sum(-1)
    live = (targets[:, 1:] != targets[:, :1]).to(scores.dtype)
    return -(F.logsigmoid(scores[:, 0]).sum() + (F.logsigmoid(-scores[:, 1:]) * live).sum())
