"""Online distillation from a frozen teacher: the "cultivation" half of grafting.

Grafting mixes weights; it carries nothing of what a network has learned about how classes
relate. Following the authors' extended paper (grafting compensated by distillation) and
Deep Mutual Learning, network k may also learn from its ring predecessor's softened outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 x KL(teacher || student) on outputs softened by ``temperature``, per sample mean.

    The T^2 keeps the gradient's scale independent of T (Hinton et al., 2015). Zero, with a
    zero gradient, when the student's logits equal the teacher's.

    Args:
        student: logits [..., B, C] with a gradient.
        teacher: logits of the same shape; treated as constants.
        temperature: T > 0.
    Returns:
        A scalar per leading index: [...] (a scalar for [B, C]).
    """
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher.detach().float() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return kl.mean(-1) * t * t
