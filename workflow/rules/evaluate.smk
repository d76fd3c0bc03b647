# Scoring: evaluate (runs/<variant>/{metrics.json, samples.png}), MCMC correction
# (runs/<variant>/correct/), and one summary.csv per benchmark.

localrules: summarize


rule evaluate:
    input:
        stage_input("evaluate"),
    output:
        **stage_output("evaluate"),
    log:
        stage_log("evaluate"),
    params:
        **stage_params("evaluate"),
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    wildcard_constraints:
        bench=bench_constraint("evaluate"),
    conda:
        CONDA_ENV
    shell:
        STAGE_SHELL


rule correct:
    input:
        stage_input("correct"),
    output:
        **stage_output("correct"),
    log:
        stage_log("correct"),
    params:
        **stage_params("correct"),
    threads: stage_threads("correct")
    resources:
        **stage_resources("correct"),
    wildcard_constraints:
        bench=bench_constraint("correct"),
    conda:
        CONDA_ENV
    shell:
        STAGE_SHELL


rule summarize:
    input:
        stage_input("summarize"),
    output:
        **stage_output("summarize"),
    log:
        stage_log("summarize"),
    params:
        **stage_params("summarize"),
    threads: stage_threads("summarize")
    resources:
        **stage_resources("summarize"),
    wildcard_constraints:
        bench=bench_constraint("summarize"),
    conda:
        CONDA_ENV
    shell:
        STAGE_SHELL
