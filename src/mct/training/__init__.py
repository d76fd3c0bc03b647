"""The auxiliary training loops the embedded benchmarks need, each written once: the EDM
teacher, the classifier whose features score FID/KID/PR, and the tiny CLIP."""
