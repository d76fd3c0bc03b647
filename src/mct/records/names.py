"""The documented names of metrics and settings: a record refuses any other (add it here first)."""

from __future__ import annotations

from typing import Union

Scalar = Union[bool, int, float, str]

# metric name -> (meaning, which way is better: "lower", "higher" or "" for neither)
METRICS: dict[str, tuple[str, str]] = {
    # image fidelity (mct.metrics.fidelity / inception / clip)
    "fid": ("Frechet distance to the reference features (imagenet: minimum over seeds)", "lower"),
    "fid_mean": ("FID averaged over the evaluation seeds", "lower"),
    "kid_mean": ("kernel inception distance, mean over subsets (raw, not x1000)", "lower"),
    "kid_std": ("KID standard deviation over subsets", ""),
    "kid_subset_size": ("KID subset size used", ""),
    "precision": ("improved precision (fraction of samples inside the real manifold)", "higher"),
    "recall": ("improved recall (fraction of real data inside the sample manifold)", "higher"),
    "f_score": ("harmonic mean of precision and recall", "higher"),
    "fid_n_gen": ("number of generated images in the FID", ""),
    "fid_n_ref": ("number of reference images in the FID", ""),
    "fid_resize": ("side the images were resized to for the FID", ""),
    # classes (mct.metrics.classes)
    "class_accuracy": ("fraction of samples classified as the class they were conditioned on", "higher"),
    "class_entropy": ("entropy (nats) of the predicted-class histogram", "higher"),
    "class_entropy_max": ("log(number of classes): the entropy of a uniform histogram", ""),
    "class_kl_uniform": ("KL(predicted-class histogram || uniform), nats", "lower"),
    "classes_covered": ("classes holding at least a quarter of a uniform share", "higher"),
    # text conditioning (mct.metrics.clip)
    "clip_score": ("100 x mean CLIP cosine(image, its caption)", "higher"),
    "clip_score_fraction": ("mean CLIP cosine(image, its caption)", "higher"),
    "clip_score_sem": ("standard error of clip_score", ""),
    "clip_n": ("number of (image, caption) pairs scored", ""),
    "clip_score_real": ("clip_score of real held-out images with their captions", "higher"),
    "clip_score_real_fraction": ("clip_score_real as a fraction (mean cosine)", "higher"),
    "clip_score_mismatched": ("clip_score of real images with wrong captions", "lower"),
    "num_heldout": ("held-out images scored", ""),
    "zero_shot_accuracy": ("CLIP zero-shot class accuracy on held-out images", "higher"),
    # 2-D mixture (mct.metrics.toy)
    "mode_mass_tv": ("total variation between per-mode mass and the true weights", "lower"),
    "modes_covered": ("modes holding at least covered_fraction of their true weight", "higher"),
    "num_modes": ("number of mixture modes", ""),
    "mean_true_logpdf": ("mean log-density of the samples under the true mixture", "higher"),
    "energy_distance": ("energy distance to teacher samples", "lower"),
    "nonfinite_samples": ("samples dropped for being non-finite", "lower"),
    "off_mode_mass": ("share of samples farther than 3 component std from every mode mean "
                      "(exact 2-D samples: exp(-4.5) = 0.011)", "lower"),
    "min_mode_recall": ("smallest per-mode recall min(1, m_k / q_k): m_k the share of samples within 3 std of "
                        "mode k, q_k the true share (exact samples: 1 in expectation)", "higher"),
    "logp_gap": ("mean true log p of exact samples minus the samples' (0 = exact; > 0 off the modes, "
                 "< 0 piled onto the densest modes)", ""),
    # M-step gradient (mct.distill.diagnostics)
    "mstep_grad_var": ("M-step gradient variance of the run's own setting", "lower"),
    "mstep_grad_var_nc": ("M-step gradient variance with noise cancellation", "lower"),
    "mstep_grad_var_no_nc": ("M-step gradient variance without noise cancellation", "lower"),
    "mstep_grad_mean_sq_nc": ("squared M-step gradient mean, with noise cancellation", ""),
    "mstep_grad_mean_sq_no_nc": ("squared M-step gradient mean, without noise cancellation", ""),
    "mstep_grad_noise_to_signal_nc": ("variance / squared mean, with noise cancellation", "lower"),
    "mstep_grad_noise_to_signal_no_nc": ("variance / squared mean, without noise cancellation", "lower"),
    "mstep_grad_batches": ("batches the gradient variance was estimated from", ""),
    "mstep_grad_seconds": ("seconds the gradient-variance diagnostic took", ""),
    # auxiliary networks (features / clip stages)
    "heldout_accuracy": ("classifier accuracy on the held-out split", "higher"),
    "train_accuracy": ("classifier accuracy on the training split", "higher"),
    "feature_dim": ("feature dimension of the FID network", ""),
    "feature_scale": ("feature calibration scale", ""),
    "train_size": ("training split size", ""),
    "heldout_size": ("held-out split size", ""),
    "params": ("number of parameters", ""),
    "final_loss": ("last training loss", "lower"),
    "steps": ("training steps", ""),
}

# setting name -> meaning (the knobs a variant sets; the report groups and labels runs by them)
SETTINGS: dict[str, str] = {
    "K": "Langevin steps per EM iteration (K = 1: reverse KL)",
    "reparam": "Langevin in the reparametrised (eps, z) space",
    "noise_cancel": "noise cancellation in the M-step",
    "init": "generator initialisation: 'teacher' or 'random'",
    "gamma_eps": "step size of the eps chain",
    "gamma_z": "step size of the z chain (0 = z frozen)",
    "sigma_g": "noise level of the one-step generator g(z) = D(sigma_g z, sigma_g)",
    "conditional": "class-conditional generator",
    "guidance": "classifier-free guidance weight of the teacher",
    "guidance_scale": "classifier-free guidance scale of the teacher",
    "seed": "training seed",
    "z_step": "schedule of the z chain's step: 'constant' or 'sigma2' (gamma_z sigma^2 / (sigma^2 + ref^2))",
    "precision": "numeric precision of the networks",
}
