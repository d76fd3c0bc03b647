# Shared set-up of the rules: which config the `mct` commands read, its validation,
# --use-conda without conda, and the stage table (mct.pipeline.jobs.Pipeline) the rules use.

import hashlib
import os
import posixpath
import re
import shlex
import shutil
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import update_config, validate

_REPO = Path(workflow.basedir)
_SCHEMA = _REPO / "workflow" / "schemas" / "config.schema.yaml"
CONDA_ENV = str(_REPO / "workflow" / "envs" / "mct.yaml")

try:
    import mct.pipeline
except ImportError:  # snakemake from another environment: use this checkout's sources
    sys.path.insert(0, str(_REPO / "src"))
    try:
        import mct.pipeline
    except ImportError as exc:
        raise WorkflowError(f"cannot import mct ({exc}); install it first: pip install -c constraints.txt -e .")
from mct.config import load_yaml
from mct.errors import MCTError
from mct.pipeline.jobs import Pipeline
from mct.pipeline.stages import STAGES, log_path, stage_path


def _rel(path):
    path = os.path.abspath(path)
    rel = os.path.relpath(path, os.getcwd())
    return path if rel.startswith("..") else Path(rel).as_posix()


def _effective_config():
    """(path the mct commands read, its content). Config files are complete: a
    --configfile replaces config/default.yaml rather than extending it; --config
    KEY=VALUE overrides go into a generated file under .snakemake/mct/."""
    cli_files = [str(f) for f in workflow.config_settings.configfiles]
    cli_values = dict(workflow.config_settings.config or {})
    files = cli_files or [str(_REPO / "config" / "default.yaml")]
    if len(files) == 1 and not cli_values:
        return _rel(files[0]), load_yaml(files[0])
    merged = {}
    for f in files:
        update_config(merged, load_yaml(f))
    update_config(merged, cli_values)
    text = yaml.safe_dump(merged, sort_keys=False)
    path = Path(".snakemake", "mct", f"config-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path.as_posix(), merged


MCT_CONFIG, _raw = _effective_config()
logger.info(f"MCT: the jobs read {MCT_CONFIG} (a --configfile replaces config/default.yaml, it does not extend it)")
config.clear()
config.update(_raw)

# --use-conda where neither conda nor mamba exists: run in this environment, with one warning.
_deploy = workflow.deployment_settings
USE_CONDA = DeploymentMethod.CONDA in _deploy.deployment_method
if USE_CONDA and not (shutil.which("conda") or shutil.which("mamba")):
    _deploy.deployment_method = frozenset(set(_deploy.deployment_method) - {DeploymentMethod.CONDA})
    USE_CONDA = False
    logger.warning(
        "MCT: --use-conda was given but neither conda nor mamba is on PATH; every rule runs in the "
        f"current environment ({sys.prefix}) instead. To use the pinned envs of workflow/envs/, "
        "install Miniforge (https://conda-forge.org/download/) and rerun; to silence this, drop --use-conda."
    )
if not USE_CONDA and shutil.which("mct") is None:
    _bin = Path(sys.executable).parent
    if (_bin / "mct").exists():
        os.environ["PATH"] = f"{_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    else:
        raise WorkflowError("the `mct` command is not on PATH: install the package (pip install -c constraints.txt -e .) "
                            "or run with --use-conda")

try:
    PIPELINE = Pipeline(MCT_CONFIG, raw=_raw, base=os.getcwd())
except MCTError as exc:
    raise WorkflowError(f"{MCT_CONFIG}: {exc}")
# mct's own checks (above) name the bad key in one line; the schema is the same, generated
validate(_raw, schema=str(_SCHEMA), set_default=False)

if Path(mct.__file__).resolve().parent != PIPELINE.pkg.resolve():
    logger.warning(f"MCT: the mct package imported here ({Path(mct.__file__).parent}) is not this checkout's "
                   f"{PIPELINE.pkg}; the jobs run the installed one.")


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) or "(?!)"


wildcard_constraints:
    bench=_alternatives(PIPELINE.benches),
    variant=_alternatives(sorted({v for b in PIPELINE.benches for v in PIPELINE.variants(b)})),


# What a rule of stage `stage` needs, all from the stage table.
def job_of(stage):
    def get(wildcards):
        return PIPELINE.job(stage, wildcards.get("bench"), wildcards.get("variant"))

    return get


def stage_input(stage):
    return lambda wildcards: job_of(stage)(wildcards).inputs


def stage_output(stage):
    spec = STAGES[stage]
    out = {}
    for rel in spec.files:
        path = stage_path(stage, rel, PIPELINE.results_dir)
        out[Path(rel).stem] = directory(path) if spec.directory else path
    return out


def stage_log(stage):
    return log_path(stage)


def stage_params(stage):
    return {
        "cmd": lambda wildcards: job_of(stage)(wildcards).shell,
        "config": lambda wildcards: job_of(stage)(wildcards).config_hash,
    }


def stage_threads(stage):
    return lambda wildcards: job_of(stage)(wildcards).resources["threads"]


def stage_resources(stage):
    # the keys must not depend on the wildcards: take them from any job of this stage
    keys = {k for j in PIPELINE.jobs if j.stage == stage for k in j.resources} - {"threads"}
    return {k: _resource(stage, k) for k in sorted(keys)}


def _resource(stage, key):
    return lambda wildcards: job_of(stage)(wildcards).resources.get(key, "")


def bench_constraint(stage):
    return _alternatives(PIPELINE.benches_with(stage))


def distill_retries():
    """A distill run longer than its runtime limit is split into segments (cluster ...segments,
    derived by `mct plan`): each job stops itself before the limit with a checkpoint (exit 75,
    `mct distill --time-limit`) and the resubmitted job resumes. So distill gets segments - 1
    retries on top of the profile's own (for failures); None keeps the profile's."""
    from mct.pipeline.resources import segments_of

    most = max((segments_of(PIPELINE.cluster, b) for b in PIPELINE.benches_with("distill")), default=1)
    failures = getattr(workflow.execution_settings, "retries", 0) or 0  # None in a dry run
    return None if most <= 1 else most - 1 + failures


# Under SLURM, a distill job stops itself before its runtime limit (resources.runtime, minutes).
DISTILL_TIME_LIMIT = 'if [ -n "${{SLURM_JOB_ID:-}}" ]; then export MCT_TIME_LIMIT_MIN={resources.runtime}; fi; '

# Torch uses as many threads as the job has (not every core of the machine per job). Every job
# takes its `gpu` resource's worth of free GPUs of the node and sees only those
# (CUDA_VISIBLE_DEVICES; `mct gpus`, src/mct/pipeline/gpus.py); under SLURM it runs unchanged.
GPU_LOCK_DIR = shlex.quote(posixpath.join(PIPELINE.results_dir, ".gpu-slots")).replace("{", "{{").replace("}", "}}")
STAGE_SHELL = ("export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}; "
               f"mct gpus --need {{resources.gpu}} --lock-dir {GPU_LOCK_DIR} -- {{params.cmd}} > {{log}} 2>&1")
