"""What the training recipes share: the in-batch contrastive loss (lexsembridge, dupmae, sitemb), one
optimiser step with its progress bar, and the linear warm-up schedule (dupmae, seal, dse)."""
from __future__ import annotations

import math


def in_batch_infonce(scores, temperature: float, qids: list, targets: list, positives: dict):
    """InfoNCE over in-batch candidates: row i's positive is column i (pair i = (qids[i], targets[i])).

    Another pair's target that is also a positive of row i's query is masked out of the denominator: it is
    not a negative.
    """
    import torch

    mask = torch.tensor([[j != i and targets[j] in positives[qids[i]] for j in range(len(targets))]
                         for i in range(len(qids))])
    logits = (scores / temperature).masked_fill(mask, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(qids)))


def optimise(loss, optimizer, schedule, losses: list[float], bar, clip: float | None = None) -> None:
    """One optimiser step on `loss` (gradients clipped to norm `clip` when given); the loss is logged and
    the progress bar shows the mean of the last 10."""
    optimizer.zero_grad()
    loss.backward()
    if clip is not None:
        import torch

        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip)
    optimizer.step()
    schedule.step()
    losses.append(loss.item())
    bar.update(1)
    bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")


def linear_warmup(optimizer, total: int, warmup_ratio: float):
    """HF Trainer's linear schedule: warm up over ceil(ratio * total) steps, then decay to 0."""
    import torch

    warmup = math.ceil(warmup_ratio * total)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
