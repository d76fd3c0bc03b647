"""The auxiliary training loops, one home each: the EDM teacher (:mod:`.edm_teacher`), the
feature-network classifier (:mod:`.classifier`) and the tiny CLIP (:mod:`.clip`), with the
weight EMA they share with distillation (:mod:`.ema`).

Layering: this package sits beside ``metrics``, below ``distill`` and ``benchmarks``; it
imports only ``nets``, ``diffusion``, ``errors`` (and ``metrics.clip`` for preprocessing).
Nothing is imported here so that ``mct.training.ema`` stays cheap to import."""
