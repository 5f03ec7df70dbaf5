#!/usr/bin/env bash
# The CUDA path measured in one go (issue 21, docs/gpu.md), on a bare CUDA machine whose python3 has
# torch, lightning, timm, torchmetrics and tensorboard: the CUDA tests, a short train.py trainer=gpu run,
# bench.py and finetune.py at the GPU sizes, a profile where a target is missed, and the BENCHMARKS.md
# sections -- everything into one output folder, within 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--work DIR] [--profile auto|always|never]
#
# --dry-run: the same steps, tiny, on the CPU (about a minute). --out: $OUT where that is set (the
# device tool's), else outputs/gpu_check/<time>. --work: data, caches and runs (a new temporary folder,
# removed at the end). Exit 0 when every step ran and passed, 1 when one failed, 2 when it cannot start.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
DRY=0
OUT_DIR=${OUT:-}
WORK=""
PROFILE=auto
while (($#)); do
    case $1 in
        --dry-run) DRY=1 ;;
        --out) OUT_DIR=${2:?--out needs a folder}; shift ;;
        --work) WORK=${2:?--work needs a folder}; shift ;;
        --profile) PROFILE=${2:?--profile needs auto, always or never}; shift ;;
        -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1' (--dry-run, --out DIR, --work DIR, --profile auto|always|never)" >&2; exit 2 ;;
    esac
    shift
done
case $PROFILE in auto | always | never) ;; *) echo "gpu_check: --profile $PROFILE: auto, always or never" >&2; exit 2 ;; esac

if ((DRY)); then
    MODE=dry
    # the dry run checks the script, not the machine: the project's venv where there is one
    PY=${GPU_CHECK_PYTHON:-$( [[ -x .venv/bin/python ]] && echo "$REPO/.venv/bin/python" || echo python3 )}
    [[ $PROFILE == auto ]] && PROFILE=always   # so that the profile's path runs too
else
    MODE=gpu
    PY=${GPU_CHECK_PYTHON:-python3}   # the machine's own, with its CUDA torch
fi
OUT_DIR=${OUT_DIR:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
KEEP_WORK=${WORK:+1}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
TEE=$!
# the log's last lines are written before the script returns: the device tool stops what is left running
finish() {
    [[ -n $KEEP_WORK ]] || rm -rf "$WORK"
    exec >&- 2>&-
    wait "$TEE" 2> /dev/null || true
}
trap finish EXIT
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1   # the GPU machine reaches no network; nothing here needs one
START=$SECONDS
echo "gpu_check ($MODE) $(date '+%F %T') in $REPO: out $OUT_DIR, work $WORK, python $PY"

# --- set-up: our non-torch dependencies from the carried wheels (make gpu-wheels), never the machine's torch
command -v "$PY" > /dev/null || { echo "gpu_check: no $PY here" >&2; exit 2; }
"$PY" -c 'import torch, lightning, timm, torchmetrics, tensorboard' 2> /dev/null || {
    echo "gpu_check: $PY lacks torch, lightning, timm, torchmetrics or tensorboard, which the machine's own python must bring (GPU_CHECK_PYTHON=... names another)" >&2
    exit 2; }
WHEELS=$REPO/data/gpu-wheels
if ! "$PY" -c 'import hydra, omegaconf, captum' 2> /dev/null; then
    compgen -G "$WHEELS/*.whl" > /dev/null || {
        echo "gpu_check: $PY lacks hydra-core/omegaconf/captum and $WHEELS has no wheels: run 'make gpu-wheels' and carry data/gpu-wheels" >&2
        exit 2; }
    # pytest's own only where the machine has none: its plugins (xdist, timeout, ...) fit its own pytest
    wheels=()
    for w in "$WHEELS"/*.whl; do
        case ${w##*/} in pytest-* | pytest_* | pluggy-* | iniconfig-*) "$PY" -c 'import pytest' 2> /dev/null && continue ;; esac
        wheels+=("$w")
    done
    SITE=$WORK/site
    "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --disable-pip-version-check --root-user-action=ignore --target "$SITE" "${wheels[@]}"
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    echo "installed ${#wheels[@]} wheels into $SITE: ${wheels[*]##*/}"
fi
# the package from the working tree as it is (pip install -e needs the dependencies pip would fetch)
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c 'import pytest' 2> /dev/null || { echo "gpu_check: $PY has no pytest, and data/gpu-wheels none either: make gpu-wheels" >&2; exit 2; }
"$PY" - "$MODE" << 'EOF' || exit 2
import sys
import torch, lightning, timm, torchmetrics, hydra, captum
cuda = torch.cuda.is_available()
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), lightning {lightning.__version__}, "
      f"timm {timm.__version__}, torchmetrics {torchmetrics.__version__}, hydra {hydra.__version__}, captum {captum.__version__}; "
      + (f"GPU {torch.cuda.get_device_name(0)}, cuDNN {torch.backends.cudnn.version()}" if cuda else "no GPU"))
if sys.argv[1] == "gpu" and not cuda:
    sys.exit("gpu_check: this python's torch sees no CUDA GPU; on a CPU machine run it with --dry-run")
EOF
((DRY)) || nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true

STEPS=$WORK/steps.tsv NOTES=$WORK/notes.tsv
: > "$STEPS"
: > "$NOTES"
FAILED=()
# step NAME SECONDS CMD...: CMD under its own limit (its whole process group is stopped there), its
# status and seconds recorded for the summary; a failing step never stops the steps after it
step() {
    local name=$1 limit=$2 rc=0 t0=$SECONDS
    shift 2
    echo
    echo "=== $name (limit ${limit} s, $((SECONDS - START)) s in): $*"
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$STEPS"
    if ((rc == 0)); then
        echo "=== $name: ok ($((SECONDS - t0)) s)"
    else
        FAILED+=("$name")
        echo "=== $name: FAILED, status $rc$( ((rc == 124 || rc == 137)) && echo ': ran out of its time' ) ($((SECONDS - t0)) s)"
    fi
}
CHECK=(benchmarks/gpu_check.py)
BENCH_MD=$OUT_DIR/BENCHMARKS-gpu.md
[[ -f $BENCH_MD ]] || printf '# GPU check\n\nbenchmarks/gpu_check.sh; paste the sections below into BENCHMARKS.md.\n\n' > "$BENCH_MD"

# Sizes: the issue's on the GPU; on the CPU the fewest images and steps that run every code path
# (the profile needs 10 training batches: 60 per class at batch 8).
if ((DRY)); then
    TRAINER=cpu TRAIN_PER_CLASS=12 TRAIN_SIZE=(debug=fast)
    SIZE=32 PER_CLASS=60 BATCH=8 STEPS_ARGS=(--steps 2 --warmup 1) EPOCHS=3 PROFILE_STEPS=(--wait 1 --active 2)
    LIMITS=(120 120 180 180 120)
else
    TRAINER=gpu TRAIN_PER_CLASS=500
    TRAIN_SIZE=(debug=fast data.image_size=224 data.loader.batch_size=64 data.loader.eval_batch_size=128)
    SIZE=224 PER_CLASS=20000 BATCH=256 STEPS_ARGS=(--steps 200) EPOCHS=10 PROFILE_STEPS=(--wait 10 --active 5)
    # tests, train.py, bench, fine-tune, profile: 455 s; with the set-up and the checks inside 8 minutes
    LIMITS=(50 55 155 155 40)
fi

# 1. the tests that skip without a GPU (grep skipif tests/: only tests/test_cache.py's needs_cuda ones)
step "CUDA tests" "${LIMITS[0]}" "$PY" -m pytest -p no:cacheprovider -q -rs tests/test_cache.py -k cuda \
    --junitxml="$WORK/cuda-tests.xml"
if [[ ! -f $WORK/cuda-tests.xml ]]; then
    FAILED+=("CUDA tests' report")
elif ! "$PY" "${CHECK[@]}" junit "$WORK/cuda-tests.xml" --mode $MODE --notes "$NOTES"; then
    FAILED+=("CUDA tests ran")
fi

# 1b. a short train.py on synthetic data; its probe (importable from benchmarks/) records precision,
# cuDNN/TF32 and where the decoded cache sits
train_run() {  # train_run OVERRIDES...: the sizes' overrides
    "$PY" -m crack_lightning.cli.synth --out "$WORK/train-data" --per-class "$TRAIN_PER_CLASS" --seed 0 --workers "$(nproc)"
    local args=("$@" "trainer=$TRAINER" backbone.pretrained=false "data.root=$WORK/train-data"
                "paths.data_dir=$WORK/data" "paths.log_dir=$WORK/logs" "hydra.run.dir=$WORK/train"
                +callbacks.gpu_check_probe._target_=gpu_check.settings_probe
                "+callbacks.gpu_check_probe.out=$WORK/train/settings.json")
    echo "$PY train.py ${args[*]}"
    PYTHONPATH=$REPO/benchmarks:$PYTHONPATH "$PY" train.py "${args[@]}"
}
export -f train_run
export PY WORK TRAIN_PER_CLASS TRAINER REPO
step "train.py" "${LIMITS[1]}" bash -c 'set -euo pipefail; train_run "$@"' train_run "${TRAIN_SIZE[@]}"
"$PY" "${CHECK[@]}" train-check "$WORK/train" --mode $MODE --notes "$NOTES" --copy-metrics "$OUT_DIR/metrics.json" \
    || FAILED+=("train.py check")

# 2-3. make bench / make bench-finetune without make (their targets build .venv), sections into BENCH_MD;
# one --work, so the fine-tune reuses bench's 40,000 images, image checks and decoded cache
step "bench" "${LIMITS[2]}" "$PY" benchmarks/bench.py --image-size $SIZE --per-class $PER_CLASS --batch-size $BATCH \
    "${STEPS_ARGS[@]}" --backbones mobilenetv2 --out "$BENCH_MD" --work "$WORK/bench"
step "fine-tune" "${LIMITS[3]}" "$PY" benchmarks/finetune.py --per-class $PER_CLASS --image-size $SIZE --batch-size $BATCH \
    --epochs $EPOCHS --out "$BENCH_MD" --work "$WORK/bench"

# 4. the targets (from the tables, or what a script that ran out of time left); where one is missed,
# where the time goes
rc=0
"$PY" "${CHECK[@]}" targets "$BENCH_MD" --json "$WORK/targets.json" --mode $MODE --notes "$NOTES" \
    --log "$OUT_DIR/gpu_check.log" --work "$WORK/bench" || rc=$?
((rc == 0 || rc == 3)) || FAILED+=("targets")
if [[ $PROFILE == always || ($PROFILE == auto && $rc == 3) ]]; then
    step "profile" "${LIMITS[4]}" "$PY" "${CHECK[@]}" profile --work "$WORK/bench" --per-class $PER_CLASS --image-size $SIZE \
        --batch-size $BATCH "${PROFILE_STEPS[@]}" --out "$OUT_DIR/profile.txt" --trace "$OUT_DIR/profile-trace.json.gz" \
        --notes "$NOTES"
fi

"$PY" "${CHECK[@]}" summary "$BENCH_MD" --steps "$STEPS" --notes "$NOTES" --targets "$WORK/targets.json" \
    --command "bash benchmarks/gpu_check.sh$( ((DRY)) && echo ' --dry-run')" || FAILED+=("summary")

echo
echo "gpu_check ($MODE): $((SECONDS - START)) s; results in $OUT_DIR: $(cd "$OUT_DIR" && ls | paste -sd ' ' -)"
if ((${#FAILED[@]})); then
    echo "gpu_check: FAILED: ${FAILED[*]}"
    exit 1
fi
echo "gpu_check: every step passed"
