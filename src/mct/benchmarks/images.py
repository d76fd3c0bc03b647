"""The stages every embedded image benchmark (digits, mnist, digits-text) shares, written once:
the teacher scored with its multi-step sampler at each NFE, the joint MCMC correction of the
main variant's one-step samples, sample grids a reader can see, the claims table, and the
diagnostics a benchmark may turn on (the FID-vs-iteration curve on its feature network, the
M-step gradient variance of a finished run).

A subclass adds its data, teacher and scoring hooks (see :class:`mct.benchmarks.base.Benchmark`)
and ``teacher_net(cfg, ctx)`` / ``guided(cfg, net)`` / ``teacher_nfes(cfg)`` / ``sampler(cfg)``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import Tensor

from ..errors import MCTError
from ..io import ensure_writable_dir, save_image_grid
from .base import Benchmark, Parts, RunContext

log = logging.getLogger(__name__)

GRID_UPSCALE = 4  # 8x8 digits are unreadable at their own size


class ImageBenchmark(Benchmark):
    num_classes: int = 10

    # ------------------------------------------------------------------ hooks of image benchmarks

    def teacher_nfes(self, cfg) -> tuple[int, ...]:
        raise NotImplementedError

    def sampler(self, cfg) -> dict:
        """Keyword arguments of :func:`mct.diffusion.samplers.sample_at_nfe` (sampler, sigma range, rho)."""
        raise NotImplementedError

    def teacher_for_eval(self, cfg, ctx: RunContext):
        """(teacher as sampled, its architecture record) for ``teacher_eval``: guided, as distilled."""
        net, arch = self.teacher_net(cfg, ctx)
        return self.guided(cfg, net), arch

    def eval_labels(self, cfg, n: int) -> Tensor:
        """Class labels of the evaluation samples: 0, 1, ..., K-1, 0, ... (one per grid column)."""
        return torch.arange(n) % self.num_classes

    def teacher_dir(self, ctx: RunContext) -> Path:
        return ctx.bench_dir(self.name) / "teacher"

    def teacher_net(self, cfg, ctx: RunContext):
        """(the trained teacher's EMA network, frozen; its architecture record from the registry)."""
        raise NotImplementedError

    def guided(self, cfg, net):
        """The teacher as distilled and sampled (classifier-free guidance applied)."""
        raise NotImplementedError

    def build(self, cfg, ctx: RunContext) -> Parts:
        """Generator and student score start as copies of the teacher's network (or, with ``init:
        random``, its architecture seeded by train.seed + 1); the teacher is distilled guided."""
        from ..distill.init import init_networks

        net, arch = self.teacher_net(cfg, ctx)
        record = {"teacher": arch, "sigma_g": cfg.sigma_g}
        generator, student = init_networks(net, record, cfg.init, seed=cfg.train.seed + 1)
        return Parts(self.guided(cfg, net), generator, student, record)

    def generator_from_record(self, cfg, ctx: RunContext, record: dict):
        from ..distill.init import generator_from_record

        return generator_from_record(record)

    # ------------------------------------------------------------------ written once

    def save_samples(self, cfg, ctx: RunContext, out, images, cond, title: str) -> None:
        self.grid(out.path("samples.png"), images, self.eval_labels(cfg, images.shape[0]), cfg)

    def grid(self, path: Path, images: Tensor, labels: Tensor, cfg) -> None:
        """One column per class, rows of examples, upscaled (nearest) so that a reader sees the digits."""
        per_class = max(1, min(getattr(cfg.eval, "grid", 100), images.shape[0]) // self.num_classes)
        cols = [images[labels == c][:per_class] for c in range(self.num_classes)]
        rows = min(c.shape[0] for c in cols)
        if rows == 0:
            return
        ordered = torch.stack([c[:rows] for c in cols], 1).flatten(0, 1)  # row-major: one column per class
        up = torch.nn.functional.interpolate(ordered.float(), scale_factor=GRID_UPSCALE, mode="nearest")
        save_image_grid(path, up, nrow=self.num_classes, padding=2)

    def teacher_eval(self, section: dict, ctx: RunContext):
        """Score the teacher with its sampler at each NFE -> teacher/metrics.json (one row per NFE,
        and the one-step guess g(z) = D_T(sigma_g z, sigma_g) where distillation starts)."""
        from ..config import config_hash, to_dict
        from ..diffusion.samplers import sample_at_nfe
        from ..io import stage_outputs
        from ..nets.onestep import OneStepGenerator
        from ..records import Scores, TeacherMetrics, TeacherRow, provenance

        cfg = self.setup(section)
        device = torch.device(ctx.device)
        teacher, _ = self.teacher_for_eval(cfg, ctx)
        n, bs, sampler = cfg.eval.num_samples, cfg.eval.batch_size, self.sampler(cfg)
        with stage_outputs(self.teacher_dir(ctx), "teacher_eval") as out:
            rows, images = [], None
            for nfe in self.teacher_nfes(cfg):
                rng = torch.Generator(device=device).manual_seed(cfg.eval.seed)
                z, cond = self.eval_latents(cfg, ctx, n, rng, device)
                t0 = time.perf_counter()
                images, measured = sample_at_nfe(teacher, z, nfe, cond, batch_size=bs, progress=ctx.progress,
                                                 out_device="cpu", **sampler)
                seconds = round(time.perf_counter() - t0, 3)
                m = Scores.from_flat(self.score(cfg, ctx, images, None if cond is None else cond.cpu(), rng))
                rows.append(TeacherRow(nfe=nfe, scores=m, nfe_measured=measured, sampler=sampler["sampler"],
                                       num_samples=n, sample_seconds=seconds))
                log.info("%s teacher NFE %d: %s", self.name, nfe, ", ".join(
                    f"{k} {m.get(k):.4g}" for k in self.summary_metrics[:3] if m.get(k) is not None))
            self.grid(out.path("samples.png"), images, self.eval_labels(cfg, n), cfg)
            rng = torch.Generator(device=device).manual_seed(cfg.eval.seed)
            z, cond = self.eval_latents(cfg, ctx, n, rng, device)
            with torch.no_grad():
                guess = OneStepGenerator(teacher, cfg.sigma_g)
                x = torch.cat([guess(z[i:i + bs], None if cond is None else cond[i:i + bs]) for i in range(0, n, bs)])
            init = Scores.from_flat(self.score(cfg, ctx, x.cpu(), None if cond is None else cond.cpu(), rng))
            floor = self.real_floor(cfg, ctx)
            rec = TeacherMetrics(bench=self.name, rows=rows, provenance=provenance(config_hash(to_dict(cfg))),
                                 sampler=sampler["sampler"], guidance=float(cfg.teacher.guidance),
                                 reference="held-out split", real_floor=floor, init_generator=init)
            self.write_record(out.path("metrics.json"), rec)
        return rec

    def real_floor(self, cfg, ctx: RunContext):
        """Scores of real train images against the held-out reference (what sampling noise alone
        costs), from the feature network's record; None before the features stage ran."""
        from ..records import AuxMetrics, read_record

        path = self.features_file(cfg, ctx).parent / "metrics.json"
        return read_record(path, AuxMetrics).real_floor if path.exists() else None

    def features_file(self, cfg, ctx: RunContext) -> Path:
        return ctx.bench_dir(self.name) / "features" / "checkpoint.pt"

    def correct(self, section: dict, ctx: RunContext, variant: str):
        """Joint Langevin correction of one-step samples with the generator frozen ->
        runs/<variant>/correct/{before.png, after.png, metrics.json} (complete only when all are written)."""
        from tqdm.auto import tqdm

        from ..checkpoint import load_state_strict
        from ..distill.correct import mcmc_correct
        from ..io import stage_outputs
        from ..records import CorrectionMetrics, Scores, provenance

        cfg = self.setup(section, variant)
        cc, device = cfg.correct, torch.device(ctx.device)
        generator, _ = self.load_generator(cfg, ctx, variant)
        parts = self.build(cfg, ctx)
        path, state = self.checkpoint_of(cfg, ctx, variant, ("student",))
        load_state_strict(parts.student, state["student"], "student score", path)
        parts.student.to(device).eval().requires_grad_(False)
        with stage_outputs(ctx.run_dir(self.name, variant) / "correct", "correct", self.run_hash(cfg)) as out:
            rng = torch.Generator(device=device).manual_seed(cc.seed)
            z, cond = self.eval_latents(cfg, ctx, cc.num_samples, rng, device)
            t0 = time.perf_counter()
            with tqdm(total=cc.steps, disable=not ctx.progress, desc=f"{self.name} correct", dynamic_ncols=True) as bar:
                res = mcmc_correct(generator, parts.teacher, parts.student, z, cond, cc, rng, on_chunk=bar.update)
            seconds = round(time.perf_counter() - t0, 3)
            cond_cpu = None if cond is None else cond.cpu()
            scores = {k: Scores.from_flat(self.score(cfg, ctx, res[k].cpu(), cond_cpu, rng))
                      for k in ("before", "after", "generator_at_z_K")}
            labels = self.eval_labels(cfg, cc.num_samples)
            self.grid(out.path("before.png"), res["before"].cpu(), labels, cfg)
            self.grid(out.path("after.png"), res["after"].cpu(), labels, cfg)
            rec = CorrectionMetrics(bench=self.name, variant=variant, steps=cc.steps, sigma=cc.sigma,
                                    gamma_eps=cc.gamma_eps, gamma_z=cc.gamma_z, num_samples=cc.num_samples,
                                    seconds=seconds, provenance=provenance(self.run_hash(cfg)), **scores,
                                    z_moved_rms=float((res["z_K"] - z).pow(2).mean().sqrt()),
                                    image_moved_rms=float((res["after"] - res["before"]).pow(2).mean().sqrt()))
            self.write_record(out.path("metrics.json"), rec)
        log.info("%s %s correction (%d steps, sigma %.3g): FID %.3f -> %.3f", self.name, variant, cc.steps,
                 cc.sigma, rec.before.get("fid"), rec.after.get("fid"))
        return rec

    def fid_curve(self, cfg, ctx: RunContext, features: Path, reference: Tensor, num_samples: int):
        """``evaluate(ema, iteration) -> {"fid": ...}`` for the FID-vs-iteration curve: ``num_samples``
        images of the EMA generator at the evaluation latents (``eval.seed``), FID on the feature network
        ``features`` against ``reference``."""
        from ..metrics.fidelity import fid_only

        device = torch.device(ctx.device)

        def evaluate(ema, it: int) -> dict:
            was_training = ema.training
            ema.eval()
            rng = torch.Generator(device=device).manual_seed(cfg.eval.seed)
            z, cond = self.eval_latents(cfg, ctx, num_samples, rng, device)
            bs = cfg.eval.batch_size
            with torch.no_grad():
                imgs = torch.cat([ema(z[i:i + bs], cond[i:i + bs]) for i in range(0, z.shape[0], bs)]).cpu()
            ema.train(was_training)
            return {"fid": fid_only(imgs, reference, features, ctx.device)}

        return evaluate

    def mstep_grad_variance(self, cfg, ctx: RunContext, variant: str, batches: int, seed: int,
                            run_dir: Path | None = None) -> dict:
        """The M-step gradient variance of the run's final (non-EMA) generator over ``batches`` fixed
        batches, with and without noise cancellation on the same E-step chains
        (docs/method.md#noise-cancellation), and the seconds it took. ``run_dir``: the training seed's
        folder (None: the first seed's)."""
        from ..checkpoint import load_state_strict
        from ..distill.diagnostics import mstep_gradient_variance

        parts = self.build(cfg, ctx)
        path, state = self.checkpoint_of(cfg, ctx, variant, ("generator", "student"), run_dir)
        load_state_strict(parts.generator, state["generator"], "generator", path)
        load_state_strict(parts.student, state["student"], "student score", path)
        parts.generator.eval()
        parts.student.eval().requires_grad_(False)
        t0 = time.perf_counter()
        out = mstep_gradient_variance(parts.generator, parts.teacher, parts.student, self.latent_sampler(cfg, ctx),
                                      cfg.em, cfg.train.sigma, cfg.train.batch_size, batches, seed,
                                      torch.device(ctx.device))
        return {**out, "mstep_grad_seconds": round(time.perf_counter() - t0, 3)}

    def save_teacher(self, ctx: RunContext, run, iterations: int, meta: dict) -> dict:
        """Write a trained teacher (:class:`mct.training.edm_teacher.TeacherRun`) -> teacher/{checkpoint.pt,
        train_log.csv}; ``meta`` is stored in the checkpoint."""
        from ..io import torch_save, write_csv
        from ..teachers.trained import teacher_checkpoint

        out_dir = ensure_writable_dir(self.teacher_dir(ctx))
        params = sum(p.numel() for p in run.net.parameters())
        meta = {"bench": self.name, "params": params, "train_seconds": run.seconds, **meta}
        torch_save(out_dir / "checkpoint.pt", teacher_checkpoint(run.net, run.ema, iterations, meta))
        write_csv(out_dir / "train_log.csv", run.rows)
        log.info("%s teacher: %d parameters, %d iterations in %.1f s (final loss %.4f)", self.name, params,
                 iterations, run.seconds, run.rows[-1]["loss"])
        return {"train_seconds": run.seconds, "params": params, "final_loss": run.rows[-1]["loss"]}

    def require(self, path: Path, command: str) -> Path:
        if not path.exists():
            raise MCTError(f"{path} does not exist: run `{command}` first")
        return path

    # a one-step student "approaches" the teacher when its FID is within this share of the teacher's at
    # the teacher's largest NFE: the paper's one-step FIDs sit within ~10 % of their multi-step teachers
    # (or below), and at 1,000 samples on the embedded features the seed-to-seed spread of FID is of that order
    TEACHER_MARGIN = 0.10

    def claims(self, section: dict, ctx: RunContext, recs: list) -> list:
        """The paper's claims on this benchmark, each decided by an interval over training seeds
        (:mod:`mct.benchmarks.claims`): more K covers more modes (the best K vs K = 1: FID, recall, class
        histogram), noise cancellation lowers the M-step gradient variance (mct's own seeds, same state and
        chains) and speeds convergence (FID at the first evaluation point and over the curve, mct vs
        no-nc), reparametrisation (mct vs no-reparam), teacher init (mct vs random-init), mct vs K = 1, and
        the one-step student within ``TEACHER_MARGIN`` of the teacher's FID at its largest NFE. A claim
        whose variants this config does not run is left out."""
        from ..io import is_complete
        from ..records import TeacherMetrics, read_record
        from .claims import SeedTable, decide, first_fid, keep, mean_curve_fid, more_k, versus, versus_value

        t = SeedTable(recs)
        best, out = more_k(t, "fid", ("fid", "recall", "class_kl_uniform"), label="FID")
        if best != "mct":
            out += keep(versus(t, "mct beats K = 1 (reverse KL) on FID", "mct", "k1", "fid"))
        if "mct" in t:
            out += keep(decide("noise cancellation lowers the M-step gradient variance", "mstep_grad_var_nc", "lower",
                               t.values("mct", "mstep_grad_var_nc"), t.values("mct", "mstep_grad_var_no_nc"),
                               ("with", "without noise cancellation"), what="the M-step gradient variance "
                               "of mct's final state (same state, same E-step chains per seed)"))
        if "no-nc" in t:
            a, b = t.derived("mct", first_fid), t.derived("no-nc", first_fid)
            it = next((r.fid_curve[0].iteration for r in t.runs["mct"] if r.fid_curve), None)
            out += keep(decide(f"noise cancellation speeds convergence: lower FID at iteration {it}", "fid", "lower",
                               a, b, ("mct", "no-nc"), what=f"the FID-curve's first point (iteration {it})"),
                        decide("noise cancellation speeds convergence: lower mean FID over training", "fid", "lower",
                               t.derived("mct", mean_curve_fid), t.derived("no-nc", mean_curve_fid),
                               ("mct", "no-nc"), what="the area under the FID curve per iteration"),
                        versus(t, "noise cancellation gives a better final student (FID)", "mct", "no-nc", "fid"))
        out += keep(versus(t, "reparametrised sampling beats (x, z) sampling (FID)", "mct", "no-reparam", "fid"),
                    versus(t, "init from the teacher beats random init (FID)", "mct", "random-init", "fid"))
        tdir = self.teacher_dir(ctx)
        if "mct" in t and is_complete(tdir, "teacher_eval"):
            top = max(read_record(tdir / "metrics.json", TeacherMetrics).rows, key=lambda r: r.nfe)
            ref = top.scores.get("fid")
            if ref is not None:
                out += keep(versus_value(
                    t, f"the one-step student approaches the teacher: FID within {self.TEACHER_MARGIN:.0%} of the "
                       f"teacher's at {top.nfe} NFE", "mct", "fid", f"teacher ({top.nfe} NFE)", ref, "lower",
                    self.TEACHER_MARGIN * ref))
        return out
