"""Metrics: exact toy metrics, FID/KID/PR through torch-fidelity, CLIP score through open_clip."""
