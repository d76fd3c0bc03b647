"""``mct bench``: sampling speed, EM overhead and peak memory of the configured networks.

Modules: config (the ``bench`` section), timing (the protocol), memory (peak memory), setups
(the networks of each benchmark), run (the measurements and the command).

For each benchmark asked for (default: every one in the config) this writes
``<results_dir>/bench/<bench>.json``. The networks are built from the benchmark's own
config section; the trained weights under ``results/`` are used where they exist (the
teacher's checkpoint, the generator EMA and student score of ``runs/<variant>/checkpoint.pt``),
random weights of the same architecture otherwise. Speed does not depend on the weights;
``weights`` says which were measured. Benchmarks this module cannot measure on the device at
hand get a file with ``skipped`` (the reason) and no measurements: the ImageNet networks are
measured only on a GPU, the text-conditioned benchmarks not at all.

Timing: ``torch.set_num_threads(num_threads)`` first (recorded), ``warmup`` untimed calls,
then ``repeats`` timed repetitions, each looping the operation until it has run for at least
``min_seconds`` (GPU work is synchronised before the clock is read); the operations of one
measurement are timed round-robin (one repetition of each in turn) so that a change of machine
load hits them alike, and the median over repetitions is reported.

Keys of ``<bench>.json`` (times in milliseconds per call on one batch unless named otherwise):

- ``bench``, ``variant`` (whose run checkpoint is looked for), ``device`` ('cpu' or 'cuda'),
  ``device_name``, ``cpu_count``, ``num_threads``, ``torch``, ``batch_size``, ``repeats``,
  ``warmup``, ``min_seconds``, ``timing`` (the protocol above, in words), ``wall_seconds``
  (the whole measurement of this benchmark).
- ``weights``: ``{teacher, generator, student}``, each ``"trained: <path>"``, ``"random"`` or
  (the toy's exact teacher) ``"analytic"``.
- ``networks``: ``teacher_params``, ``generator_params``, ``student_params``,
  ``data_shape``, ``same_network`` (the generator is the teacher's architecture, so one
  student step costs one teacher evaluation and the speed-up target applies),
  ``teacher_passes_per_nfe`` (2 under classifier-free guidance, else 1).
- ``sampling``: ``student`` ``{name, role, nfe: 1, images_per_s, ms_per_batch, batch_size}``;
  ``teacher``: one record per teacher NFE ``{name, role, sampler: 'heun', nfe, measured_nfe,
  steps, images_per_s, ms_per_batch, batch_size, speedup (student images/s over teacher's),
  nfe_ratio (nfe / 1), speedup_over_nfe_ratio, target_met}``; ``target``
  ('speed-up >= 0.9 x NFE ratio'), ``target_applies`` (= ``networks.same_network``),
  ``all_targets_met``.
- ``em_overhead``: ``K``, ``gamma_z``, ``reparam``, ``score_updates``, ``passes_ms`` (each
  network pass timed alone: ``teacher_forward``, ``student_forward``, ``generator_vjp``
  (forward with graph + backward to z; 0 when gamma_z = 0), ``m_step`` (generator forward,
  surrogate, backward, Adam step), ``score_step`` (one student-score DSM update, the trainer's own
  ``DistillStep.score_step``: a generator sample, forward, backward, Adam step)), ``passes_count`` (how many of each one iteration
  runs: K, K, K or 0, 1, score_updates), ``passes_sum_ms`` (the weighted sum of the medians),
  ``iteration_ms`` (median time per iteration of :func:`mct.distill.trainer.distill` itself,
  read off its own train log over ``iteration_windows`` windows of ``log_every`` iterations
  after one warm-up window; logging and all checks included), ``overhead_ratio`` (the median
  over windows of a window's time per iteration over the weighted sum of the passes timed
  just before and after it, in a round run from the loop's ``evaluate`` hook and taken out of
  the window's time: each window is compared with passes timed under the same machine load),
  ``overhead_ratio_range`` (its smallest and largest value over the windows), ``target``
  (1.10), ``target_met``.
- ``memory``: ``method`` (how it was measured, in words), ``batch_sizes`` (the two batches),
  ``per_sample_bytes`` and ``peak_bytes`` (at the larger batch) for ``student_sampling``,
  ``teacher_sampling`` (one Heun run at the largest NFE, ``teacher_nfe``) and ``em_iteration``
  (one iteration of the trainer's own step, :class:`mct.distill.step.DistillStep`);
  per sample is the slope of the peak between the two batch sizes, so that fixed costs
  (weights, optimiser state, allocator slack) cancel (clamped at 0: tiny networks are below
  the resolution of the method). On CPU: the process's peak resident set
  (VmHWM) after resetting it (``/proc/self/clear_refs``) and returning freed memory to the
  system (``malloc_trim``); on CUDA: ``torch.cuda.max_memory_allocated`` above the allocation
  before. ``null`` where the method is unavailable (``unavailable`` says why).
- ``skipped``: present only when nothing was measured, with the reason.
"""

from .config import (DEFAULT_NFE, GPU_ONLY, OVERHEAD_TARGET, SPEEDUP_TARGET, BenchConfig,  # noqa: F401
                     parse_bench_config)
from .run import measure, run_bench  # noqa: F401

__all__ = ["BenchConfig", "parse_bench_config", "run_bench", "measure", "SPEEDUP_TARGET", "OVERHEAD_TARGET",
           "DEFAULT_NFE", "GPU_ONLY"]
