# Distillation: one job per benchmark variant -> <bench>/runs/<variant>/{checkpoint.pt, train_log.csv}.


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
    resources:
        **stage_resources("distill"),
    wildcard_constraints:
        bench=bench_constraint("distill"),
    conda:
        CONDA_ENV
    shell:
        STAGE_SHELL
