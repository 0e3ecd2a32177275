#!/usr/bin/env bash
# The prepared GPU check (`livevsr bench gpu`) on a bare GPU image, from the repository root.
#
# The image brings torch (CUDA 13), CuPy 14, Triton, numpy, PyYAML, nvcc and ncu, but not PyAV, which
# the engine, profile and e2e stages need: it travels as a wheel in .whl/ (git-ignored). Once, on a
# machine that reaches PyPI:
#     bash scripts/gpu_check.sh --fetch-wheels     # PyAV for CPython 3.12 on x86-64 Linux into .whl/
# then, on the GPU machine, with .whl/ copied along:
#     bash scripts/gpu_check.sh [livevsr bench gpu options, e.g. --budget 450 --only tests,attention]
# Results: $OUT (else ./gpu-check): gpu_check.json, gpu_check.log, BENCHMARKS.md, tests.xml, attn.ncu-rep,
# trace.json.gz; a summary is printed at the end. Exit status: 0 only if every stage passed.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WHL=${WHL:-.whl}
AV_VERSION=18.1.1 # pyproject.toml: av>=18.1,<19

if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p "$WHL"
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHL" "av==$AV_VERSION"
fi

export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import av" 2>/dev/null; then
    if compgen -G "$WHL/*.whl" >/dev/null; then
        SITE=${TMPDIR:-/tmp}/livevsr-site
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$WHL"/*.whl && export PYTHONPATH="$PYTHONPATH:$SITE"
    fi
    "$PY" -c "import av" 2>/dev/null ||
        echo "gpu_check.sh: PyAV is missing (no wheel in $WHL/): the engine, profile and e2e stages will fail" >&2
fi
exec "$PY" -m livevsr bench gpu "$@"
