"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (CPU, gloo).

Usage: torchrun ... tests/dist_worker.py SPEC.json. SPEC names the toy configs to distil
through the CLI, the feature-network checkpoint and image sets for the sharded FID, and an
output folder; each rank writes ``rank<r>.json`` there with what it saw. The test compares
the checkpoints and these records with single-process runs."""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path

import torch


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    from mct import distributed as D
    from mct.benchmarks.toy2d import BENCHMARK as TOY
    from mct.cli import main as cli

    out: dict = {}
    t0 = time.perf_counter()
    # 1. the CLI under torchrun: data-parallel distillation (it joins the process group)
    for name, argv in spec["cli"].items():
        out[f"rc_{name}"] = cli(argv)
        out[f"seconds_{name}"] = round(time.perf_counter() - t0, 2)
    r, w = D.rank(), D.world_size()
    out.update(rank=r, world=w, backend=torch.distributed.get_backend(),
               log_level=logging.getLogger().getEffectiveLevel(),
               runs_evaluate=D.stage_runs_here(TOY, "evaluate"), runs_distill=D.stage_runs_here(TOY, "distill"))

    # 2. gathering rows of uneven (and empty) shards, in rank order
    mine = torch.arange(3 + 2 * r, dtype=torch.float64).unsqueeze(1) + 100 * r
    out["gathered"] = D.all_gather_tensor(mine).squeeze(1).tolist()
    empty = torch.zeros((0, 2)) if r == 1 else torch.ones((2, 2))
    out["gathered_empty_shape"] = list(D.all_gather_tensor(empty).shape)
    out["gather_rows"] = D.gather_rows(7, 2, lambda s, n: torch.arange(s, s + n).unsqueeze(1) * 10).squeeze(1).tolist()

    # 3. FID of N generated images computed across the ranks: each rank makes and embeds its
    # shard, the features (and images) are gathered, and FID is computed once
    fid = spec["fid"]
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.utils import create_feature_extractor

    from mct.metrics.fidelity import EXTRACTOR_NAME, fid_only, register_extractor

    register_extractor()
    net = create_feature_extractor(EXTRACTOR_NAME, ["penultimate"], cuda=False,
                                   feature_extractor_weights_path=fid["weights"], verbose=False)

    def images(seed, start, count, shift=0.0):
        z = D.randn_rows(seed, start, count, (1, 8, 8))
        return torch.tanh(0.7 * z + torch.linspace(-0.5, 0.5, 8) + shift)

    def features(x):
        with torch.no_grad():
            f = net(x)
        return f[0] if isinstance(f, (tuple, list)) else f

    mine_range = D.shard_range(fid["n"])
    out["shard"] = [mine_range.start, mine_range.stop]
    gen_feats = D.gather_rows(fid["n"], fid["batch"], lambda s, n: features(images(fid["seed"], s, n)))
    gen_images = D.gather_rows(fid["n"], fid["batch"], lambda s, n: images(fid["seed"], s, n))
    if r == 0:
        ref_images = images(fid["ref_seed"], 0, fid["n_ref"], fid["ref_shift"])
        a = fid_features_to_statistics(gen_feats.cpu())
        b = fid_features_to_statistics(features(ref_images).cpu())
        out["fid_from_gathered_features"] = float(fid_statistics_to_metric(a, b, False)[KEY_METRIC_FID])
        out["fid_only_of_gathered_images"] = fid_only(gen_images, ref_images, fid["weights"])
        out["n_gathered"] = int(gen_feats.shape[0])
    out["seconds_total"] = round(time.perf_counter() - t0, 2)
    Path(spec["out"], f"rank{r}.json").write_text(json.dumps(out))
    D.barrier()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1]))
    except Exception:
        traceback.print_exc()
        sys.exit(1)
