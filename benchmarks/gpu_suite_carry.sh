#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what benchmarks/gpu_suite.sh needs on a lent GPU machine that
# has no network: the wheels of the packages its image lacks (at this checkout's versions, for
# Python 3.12 on x86-64) and the embedded model's config and tokenizer (the weights stay here:
# the suite times the architecture with random weights). Run here, where PyPI is reachable;
# then name `.gpu` in the device call's `carry` (README: Benchmarks). About 15 MB.
set -eu
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
# What saelab's harvest imports that the device image (/work/.library/device/KINDS.md) lacks
# (transformer-lens's other requirements, such as beartype or wandb, are not imported by it).
packages="transformer-lens datasets dill multiprocess zarr numcodecs donfig google-crc32c"
mkdir -p .gpu/wheels .gpu/model
pins=$("$py" - $packages <<'EOF'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
EOF
)
platforms=""
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms="$platforms --platform ${tag}_x86_64"
done
# shellcheck disable=SC2086
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $platforms -d .gpu/wheels $pins
folder=$("$py" -c "from saelab.activations.models import resolve_model_folder as r; print(r('smollm2-135m')[0])")
for f in "$folder"/config.json "$folder"/tokenizer*; do cp "$f" .gpu/model/; done
du -sh .gpu
