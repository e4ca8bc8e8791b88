"""Learning-rate schedule of the reference recipe: linear warm-up, then cosine decay."""

from __future__ import annotations

import math


def learning_rate(
    step: int,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    warmup_start_lr: float,
    final_lr_ratio: float,
) -> float:
    """Rate at ``step`` (0-based): linear from ``warmup_start_lr`` to ``base_lr`` over the
    warm-up, then cosine from ``base_lr`` down to ``final_lr_ratio * base_lr`` at the last step.
    """
    if step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    final = base_lr * final_lr_ratio
    return final + 0.5 * (base_lr - final) * (1 + math.cos(math.pi * progress))
