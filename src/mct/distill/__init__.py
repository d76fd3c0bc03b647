"""The method: E-step, noise cancellation, M-step (em.py) and the training loop (trainer.py)."""
