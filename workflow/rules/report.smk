# Speed measurements (<results_dir>/bench/*.json) and the report (<results_dir>/report.html),
# which reads every result except checkpoints.

localrules: report


rule bench:
    input:
        stage_input("bench"),
    output:
        **stage_output("bench"),
    log:
        stage_log("bench"),
    params:
        **stage_params("bench"),
    threads: stage_threads("bench")
    resources:
        **stage_resources("bench"),
    conda:
        CONDA_ENV
    shell:
        STAGE_SHELL


rule report:
    input:
        stage_input("report"),
    output:
        **stage_output("report"),
    log:
        stage_log("report"),
    params:
        **stage_params("report"),
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        CONDA_ENV
    shell:
        STAGE_SHELL
