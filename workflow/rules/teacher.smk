# Teachers: download a real one (teacher_fetch), train the embedded one (teacher_train),
# score it at several NFE (teacher_eval). Outputs: <results_dir>/<bench>/teacher/.


rule teacher_fetch:
    input:
        stage_input("teacher_fetch"),
    output:
        **stage_output("teacher_fetch"),
    log:
        stage_log("teacher_fetch"),
    params:
        **stage_params("teacher_fetch"),
    threads: stage_threads("teacher_fetch")
    resources:
        **stage_resources("teacher_fetch"),
    wildcard_constraints:
        bench=bench_constraint("teacher_fetch"),
    conda:
        CONDA_ENV
    shell:
        STAGE_SHELL


rule teacher_train:
    input:
        stage_input("teacher_train"),
    output:
        **stage_output("teacher_train"),
    log:
        stage_log("teacher_train"),
    params:
        **stage_params("teacher_train"),
    threads: stage_threads("teacher_train")
    resources:
        **stage_resources("teacher_train"),
    wildcard_constraints:
        bench=bench_constraint("teacher_train"),
    conda:
        CONDA_ENV
    shell:
        STAGE_SHELL


rule teacher_eval:
    input:
        stage_input("teacher_eval"),
    output:
        **stage_output("teacher_eval"),
    log:
        stage_log("teacher_eval"),
    params:
        **stage_params("teacher_eval"),
    threads: stage_threads("teacher_eval")
    resources:
        **stage_resources("teacher_eval"),
    wildcard_constraints:
        bench=bench_constraint("teacher_eval"),
    conda:
        CONDA_ENV
    shell:
        STAGE_SHELL
