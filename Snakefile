# MCT pipeline: teacher -> reference statistics / feature network -> distill -> evaluate
# -> summarize -> report, for every benchmark in the config.
#
#   snakemake --cores all [--use-conda]                          # config/default.yaml (embedded, CPU)
#   snakemake --cores all --configfile config/quick.yaml         # tiny, for tests and CI
#   snakemake --profile workflow/profiles/slurm --configfile config/imagenet64.yaml
#
# A --configfile replaces config/default.yaml (each config file is complete); --config
# KEY=VALUE overrides top-level keys. Every rule calls the `mct` CLI only; the jobs, their
# inputs, outputs, params and resources come from the stage table in src/mct/pipeline/,
# which also generates dvc.yaml (`mct workflow dvc`).

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/default.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/refstats.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        PIPELINE.targets(),
    default_target: True
