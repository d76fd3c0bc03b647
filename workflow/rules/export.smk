# The main run's generator as a self-describing folder (results/<bench>/export/<variant>/:
# model.safetensors, config.json, metrics.json, README.md model card), read by mct.load_generator.


rule export:
    input:
        stage_input("export"),
    output:
        **stage_output("export"),
    log:
        stage_log("export"),
    params:
        **stage_params("export"),
    threads: stage_threads("export")
    resources:
        **stage_resources("export"),
    wildcard_constraints:
        bench=bench_constraint("export"),
    conda:
        CONDA_ENV
    shell:
        STAGE_SHELL
