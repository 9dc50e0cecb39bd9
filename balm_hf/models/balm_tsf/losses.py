"""Loss functions of BALM-TSF: masked MSE and InfoNCE with a learnable temperature."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mse_loss(
    prediction: torch.Tensor, target: torch.Tensor, observed_mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""
    Mean squared error over every batch item, horizon step and channel.

    Computed in the units of the tensors given (for BALM-TSF: the dataset-standardised scale of `past_values`, after
    RevIN has been inverted). With `observed_mask` (`1` = observed) the mean runs over observed entries only; a batch
    with no observed entry gives `0`.

    Args:
        prediction (`torch.Tensor` of shape `[batch, horizon, channels]`): the forecast.
        target (`torch.Tensor` of the same shape): the true values; entries where `observed_mask == 0` may be anything,
            NaN included.
        observed_mask (`torch.Tensor` of the same shape, *optional*): `1` where `target` is observed.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    if observed_mask is None:
        return F.mse_loss(prediction, target)
    mask = observed_mask.to(prediction.dtype)
    squared = torch.where(mask > 0, (prediction - torch.nan_to_num(target)) ** 2, torch.zeros_like(prediction))
    return squared.sum() / mask.sum().clamp_min(1.0)


def info_nce_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    log_temperature: torch.Tensor,
    mask_own_positive: bool = False,
) -> torch.Tensor:
    r"""
    InfoNCE between pooled time-series embeddings (queries) and pooled text embeddings (positives).

    Both inputs are mean-pooled over their token axis and L2-normalised. The negatives are the positives rolled by one
    along the batch (`roll(shift=1, dim=0)`), so the negative matrix holds every positive of the batch, a sample's own
    positive included (the paper's construction). The logits `[q.p, q.N^T] / tau`, with `tau = exp(log_temperature)`,
    go through a cross-entropy with target index 0; the result is the mean over the batch.

    Args:
        query (`torch.Tensor` of shape `[batch, query_tokens, dim]`): time-series embeddings.
        positive (`torch.Tensor` of shape `[batch, text_tokens, dim]`): rescaled text embeddings.
        log_temperature (`torch.Tensor`, scalar): `log(tau)`.
        mask_own_positive (`bool`, *optional*, defaults to `False`): remove the duplicate of each sample's own positive
            from its negatives (the entry at column `(i + 1) mod batch`).
    """
    temperature = log_temperature.exp()
    q = F.normalize(query.mean(dim=1), dim=-1)  # [batch x dim]
    p = F.normalize(positive.mean(dim=1), dim=-1)  # [batch x dim]
    negatives = torch.roll(p, shifts=1, dims=0)  # row j is positive (j - 1) mod batch
    positive_logits = (q * p).sum(dim=-1, keepdim=True) / temperature  # [batch x 1]
    negative_logits = q @ negatives.t() / temperature  # [batch x batch]
    if mask_own_positive:
        batch = q.shape[0]
        own = (torch.arange(batch, device=q.device) + 1) % batch
        negative_logits = negative_logits.masked_fill(
            F.one_hot(own, batch).to(torch.bool), torch.finfo(negative_logits.dtype).min
        )
    logits = torch.cat([positive_logits, negative_logits], dim=-1)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


__all__ = ["info_nce_loss", "masked_mse_loss"]
