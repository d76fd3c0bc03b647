# Distillation: one job per benchmark variant -> <bench>/runs/<variant>/{checkpoint.pt, train_log.csv}.
# checkpoint.pt appears only when training finished; a job stopped at its runtime limit leaves
# checkpoints/ and is retried (distill_retries), resuming where it stopped.


rule distill:
    input:
        stage_input("distill"),
    output:
        **stage_output("distill"),
    log:
        stage_log("distill"),
    params:
        **stage_params("distill"),
    threads: stage_threads("distill")
    retries: distill_retries()
    resources:
        **stage_resources("distill"),
    wildcard_constraints:
        bench=bench_constraint("distill"),
    conda:
        CONDA_ENV
    shell:
        DISTILL_TIME_LIMIT + STAGE_SHELL
