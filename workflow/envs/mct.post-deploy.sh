#!/usr/bin/env bash
# Runs inside the new conda env (Snakemake --use-conda), after mct.yaml is installed:
# install this checkout of mct into it, editable, with the pinned torch pair.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
python -m pip install --no-input -c constraints.txt -e .
