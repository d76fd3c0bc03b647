"""Mode coverage of a labelled image set, read by a classifier: the class histogram of
the generated samples, its entropy and KL divergence to the uniform distribution
(unconditional runs), and the accuracy of the conditioning (class-conditional runs:
how often the classifier agrees with the label the sample was generated for).

Entropies are in nats; ``log(num_classes)`` is the maximum (every class equally often)."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor


@torch.no_grad()
def predict_classes(classifier: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 500) -> Tensor:
    """argmax of ``classifier(images)`` logits, batched, as int64 (N,)."""
    out = [classifier(images[i:i + batch_size]).argmax(dim=1).cpu() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def class_histogram(pred: Tensor, num_classes: int) -> Tensor:
    """Fraction of samples per class (sums to 1)."""
    if pred.numel() == 0:
        raise ValueError("class_histogram of an empty set")
    return torch.bincount(pred.long().flatten(), minlength=num_classes)[:num_classes].double() / pred.numel()


def entropy(p: Tensor) -> float:
    """Shannon entropy in nats, with 0 log 0 = 0."""
    p = p.double()
    nz = p[p > 0]
    return float(-(nz * nz.log()).sum())


def kl_to_uniform(p: Tensor) -> float:
    """KL(p || uniform) = log K - H(p)."""
    return max(0.0, math.log(p.numel()) - entropy(p))


def class_metrics(pred: Tensor, num_classes: int, cond: Optional[Tensor] = None,
                  covered_fraction: float = 0.25) -> dict:
    """Histogram, entropy, KL to uniform, the number of classes holding at least
    ``covered_fraction`` of a uniform share, and (when ``cond`` is given) the accuracy of the
    conditioning. JSON-ready floats and lists."""
    hist = class_histogram(pred, num_classes)
    out = {
        "class_hist": [round(float(v), 6) for v in hist],
        "class_entropy": entropy(hist),
        "class_entropy_max": math.log(num_classes),
        "class_kl_uniform": kl_to_uniform(hist),
        "classes_covered": int((hist >= covered_fraction / num_classes).sum()),
    }
    if cond is not None:
        cond = cond.long().flatten().cpu()
        if cond.shape != pred.shape:
            raise ValueError(f"cond {tuple(cond.shape)} and predictions {tuple(pred.shape)} differ in shape")
        out["class_accuracy"] = float((pred.cpu() == cond).double().mean())
    return out
