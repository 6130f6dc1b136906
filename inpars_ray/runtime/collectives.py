"""Sums and gathers across Ray Train workers through torch.distributed, for the train stage's own gradient
sums (see :mod:`inpars_ray.stages.train_loop`): gloo on CPU, nccl on GPU, and gloo through host memory for
XLA compute."""
from __future__ import annotations


class Collectives:
    """Sums across workers through torch.distributed (gloo / nccl / xla); a no-op for one worker."""

    def __init__(self, world_size: int, via_cpu: bool) -> None:
        self.world_size = world_size
        self.via_cpu = via_cpu  # XLA compute with gloo collectives moves tensors through host memory

    def sum_(self, tensor):
        import torch.distributed as dist

        if self.world_size == 1:
            return tensor
        if self.via_cpu and tensor.device.type != "cpu":
            host = tensor.detach().cpu()
            dist.all_reduce(host)
            tensor.copy_(host.to(tensor.device))
        else:
            dist.all_reduce(tensor)
        return tensor

    def gather_rows(self, tensor):
        """(every worker's rows of ``tensor``, one after the other by rank; where this worker's begin).

        Workers may hold different numbers of rows: each pads to the largest, and the padding is cut."""
        import torch
        import torch.distributed as dist

        if self.world_size == 1:
            return tensor, 0
        rank = dist.get_rank()
        counts = torch.zeros(self.world_size, dtype=torch.float64, device=tensor.device)
        counts[rank] = tensor.shape[0]
        sizes = [int(n) for n in self.sum_(counts).cpu().tolist()]
        work = tensor.detach().cpu() if self.via_cpu and tensor.device.type != "cpu" else tensor.detach()
        padded = torch.zeros((max(sizes), *work.shape[1:]), dtype=work.dtype, device=work.device)
        padded[: work.shape[0]] = work
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        rows = torch.cat([part[:n] for part, n in zip(parts, sizes)]).to(tensor.device)
        return rows, sum(sizes[:rank])

    def sum_grads(self, params: list) -> None:
        """Sum gradients of ``params`` over workers in one flat buffer (absent grads count as zeros)."""
        import torch

        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.sum_(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n
