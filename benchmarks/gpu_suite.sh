#!/usr/bin/env bash
# Every GPU measurement the project owes, in one call of a lent GPU machine (README: Benchmarks).
#
#   bash benchmarks/gpu_suite.sh           # on a CUDA machine; without one: a one-line skip, exit 0
#   bash benchmarks/gpu_suite.sh --smoke   # (or GPU_SUITE_SMOKE=1) the same steps, tiny, on CPU
#
# Steps, each an existing benchmark or test under its own timeout, inside one global budget
# (GPU_SUITE_BUDGET_S, default 450 s; a step that overruns is recorded as timed_out and the
# rest still run):
#   setup    make `saelab` importable (local editable install, no index) and unpack carried wheels
#   parity   the Triton-vs-torch parity tests on CUDA (tests/kernels/test_kernels_triton.py -m gpu)
#   kernels  benchmarks/decode_kernels.py: decode fwd+bwd vs dense and vs the memory floor, and the TopK
#            (and JumpReLU) training step vs dense, at d_in 2304, d_sae 65536, k 64, bf16
#   harvest  benchmarks/harvest.py on the embedded model's architecture (random weights): harvest
#            vs the bare forward, loader rate, and a TopK SAE's training rate on the GPU
# Results: one JSON per step and summary.json (every step's status) in $OUT when it is set, else
# benchmarks/results/gpu-suite/ (smoke: benchmarks/results/gpu-suite-smoke/), plus suite.log.
# Nothing is fetched from the network: missing Python packages travel as wheels in .gpu/wheels,
# the embedded model's config and tokenizer in .gpu/model (benchmarks/gpu_suite_carry.sh).
set -u
cd "$(dirname "$0")/.." || exit 1

mode=gpu
if [ "${1:-}" = "--smoke" ] || [ "${GPU_SUITE_SMOKE:-0}" = "1" ]; then mode=smoke; fi
if [ "$mode" = gpu ] && ! { command -v nvidia-smi >/dev/null 2>&1 || [ -e /dev/nvidia0 ]; }; then
    echo "gpu_suite: skipped: no CUDA device here (no nvidia-smi, no /dev/nvidia0); --smoke runs the steps tiny on CPU"
    exit 0
fi

if [ -n "${PYTHON:-}" ]; then py=$PYTHON
elif [ -x .venv/bin/python ]; then py=.venv/bin/python
else py=python3
fi
if [ "$mode" = gpu ] && ! "$py" benchmarks/gpu_suite.py cuda 2>/dev/null; then
    echo "gpu_suite: skipped: $py's torch sees no CUDA device"
    exit 0
fi

out=${OUT:-benchmarks/results/gpu-suite$([ "$mode" = smoke ] && echo -smoke)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
budget=${GPU_SUITE_BUDGET_S:-450}
deadline=$(($(date +%s) + budget))
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-suite.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$out/suite.log
steps=$work/steps.tsv
: >"$log"
: >"$steps"
export py mode out work
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export SAELAB_CACHE=${SAELAB_CACHE:-$work/cache}
if [ "$mode" = smoke ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
echo "gpu_suite: mode $mode, budget ${budget}s, results in $out"

# record NAME STATUS SECONDS JSON REASON
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$steps"; }

# step NAME LIMIT_S JSON CMD...: run CMD under min(LIMIT_S, what is left of the budget)
step() {
    local name=$1 limit=$2 json=$3
    shift 3
    local left=$((deadline - $(date +%s)))
    if [ "$left" -lt 5 ]; then
        record "$name" timed_out 0 "" "the global budget was spent before it began"
        echo "gpu_suite: $name: timed_out (no budget left)"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit}s): $*" >>"$log"
    local t0 t1 rc
    t0=$(date +%s.%N)
    # through bash -c, so that a step may be one of the (exported) functions below
    timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" >>"$log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    local secs status reason=""
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" -eq 0 ]; then status=ok
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=timed_out; reason="over its ${limit}s limit"
    elif [ "$rc" -eq 3 ]; then status=skipped; reason=$(tail -n 1 "$log")
    else status=failed; reason="exit $rc (see suite.log)"
    fi
    [ -f "$out/$json" ] || json=""
    record "$name" "$status" "$secs" "$json" "$reason"
    echo "gpu_suite: $name: $status in ${secs}s $reason"
}

# -- setup: saelab importable, carried wheels unpacked; nothing comes from the network --------
# The wheels are built for the device's Python 3.12, and only used there (not by --smoke).
wheels=""
if [ "$mode" = gpu ] && ls .gpu/wheels/*.whl >/dev/null 2>&1; then wheels=1; fi
export wheels
setup() {
    if [ -n "$wheels" ]; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$work/site" .gpu/wheels/*.whl || return 1
    fi
    if ! "$py" -c "import saelab.kernels" 2>/dev/null; then
        # the editable install, from this folder alone; else a sitecustomize.py doing its mapping
        "$py" -m pip install -q --no-index --no-deps --no-build-isolation -e . ||
            "$py" benchmarks/gpu_suite.py shim "$work/shim" || return 1
    fi
    "$py" -c "import saelab.kernels, saelab.sae, benchmarks.machine"
}
export -f setup
# $work/shim holds a sitecustomize.py only if setup had to write one
export PYTHONPATH=$work/shim${PYTHONPATH:+:$PYTHONPATH}
if [ -n "$wheels" ]; then export PYTHONPATH=$work/site:$PYTHONPATH; fi
step setup 120 "" setup

# -- parity: the Triton kernels against the torch path on CUDA --------------------------------
parity() {
    local t0 rc
    t0=$(date +%s)
    "$py" -m pytest -q -p no:cacheprovider -m gpu -rs tests/kernels/test_kernels_triton.py \
        >"$work/parity.log" 2>&1
    rc=$?
    cat "$work/parity.log"
    "$py" benchmarks/gpu_suite.py pytest "$out/parity.json" "$work/parity.log" \
        '{"tests": "tests/kernels/test_kernels_triton.py -m gpu", "dtypes": ["float32", "bfloat16"]}' \
        "$rc" "$(($(date +%s) - t0))" || return 1
    if [ "$mode" = gpu ]; then  # on a GPU, a run where every test skipped is a failure
        "$py" -c "import json,sys; sys.exit(0 if json.load(open('$out/parity.json'))['passed'] else 1)"
    else
        return "$rc"
    fi
}
export -f parity
step parity 150 parity.json parity

# -- kernels: decode and the TopK/JumpReLU training step against dense and the memory floor ---
if [ "$mode" = gpu ]; then
    kernels_args=(--device cuda --dtype bfloat16 --batch 4096 --d-in 2304 --d-sae 65536 --k 64 --repeats 5)
else
    kernels_args=(--device cpu --dtype float32 --batch 256 --d-in 64 --d-sae 1024 --k 16 --repeats 1 --threads 1)
fi
step kernels 200 kernels.json "$py" benchmarks/decode_kernels.py "${kernels_args[@]}" --out "$out/kernels.json"

# -- harvest: the embedded model's architecture on the device, then the loader and training ---
harvest() {
    local missing src
    missing=$("$py" benchmarks/gpu_suite.py missing transformer_lens zarr numcodecs datasets)
    if [ -n "$missing" ]; then
        echo "missing Python packages: $missing (carry them: benchmarks/gpu_suite_carry.sh)"
        return 3
    fi
    src=.gpu/model
    [ -f "$src/config.json" ] || src=${SAELAB_MODEL_SRC:-$HOME/.cache/saelab/models/smollm2-135m}
    if [ ! -f "$src/config.json" ]; then
        echo "no model config: carry .gpu/model (benchmarks/gpu_suite_carry.sh)"
        return 3
    fi
    "$py" benchmarks/gpu_suite.py model "$src" "$work/model" || return 1
    "$py" benchmarks/gpu_suite.py corpus "$work/corpus" >/dev/null || return 1
    local args
    if [ "$mode" = gpu ]; then
        args=(--device cuda --tokens 262144 --batch-size 64 --rounds 2 --loader-seconds 5
            --train-d-sae 18432 --train-k 64 --train-steps 20)
    else
        args=(--device cpu --tokens 1024 --batch-size 8 --rounds 1 --loader-seconds 0.5
            --loader-batch 256 --train-d-sae 1024 --train-k 16 --train-steps 1)
    fi
    "$py" benchmarks/harvest.py --model "$work/model" --dataset "$work/corpus" "${args[@]}" \
        --out "$out/harvest.json"
}
export -f harvest
step harvest 200 harvest.json harvest

"$py" benchmarks/gpu_suite.py summary "$out" "$steps" "$budget" "$mode"
echo "gpu_suite: wrote $out/summary.json"
exit 0
