# Reference statistics: the embedded feature network for FID/KID/precision/recall
# (features) and the tiny CLIP model of digits-text (clip). Paper-scale benchmarks fetch
# their reference statistics inside their own stages.


rule features:
    input:
        stage_input("features"),
    output:
        **stage_output("features"),
    log:
        stage_log("features"),
    params:
        **stage_params("features"),
    threads: stage_threads("features")
    resources:
        **stage_resources("features"),
    wildcard_constraints:
        bench=bench_constraint("features"),
    conda:
        CONDA_ENV
    shell:
        STAGE_SHELL


rule clip:
    input:
        stage_input("clip"),
    output:
        **stage_output("clip"),
    log:
        stage_log("clip"),
    params:
        **stage_params("clip"),
    threads: stage_threads("clip")
    resources:
        **stage_resources("clip"),
    wildcard_constraints:
        bench=bench_constraint("clip"),
    conda:
        CONDA_ENV
    shell:
        STAGE_SHELL
