"""The in-batch contrastive loss the fine-tuning recipes share (lexsembridge, dupmae, sitemb)."""
from __future__ import annotations


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


def optimise(loss, optimizer, schedule, losses: list[float], bar) -> None:
    """One optimiser step on `loss`; the loss is logged and the progress bar shows the mean of the last 10."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    schedule.step()
    losses.append(loss.item())
    bar.update(1)
    bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
