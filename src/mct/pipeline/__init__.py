"""The pipeline: one stage table from which the Snakemake rules and ``dvc.yaml`` are made.

:mod:`.stages` (the kinds of job and the results layout), :mod:`.jobs` (every job of a
config: :class:`~.jobs.Pipeline`), :mod:`.resources` (the ``cluster`` section),
:mod:`.code_deps` (the source files a job runs), :mod:`.dvc` (the ``dvc.yaml`` writer) and
:mod:`.schema` (the config's JSON schema). Nothing here imports torch."""
