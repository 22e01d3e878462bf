#!/usr/bin/env bash
# One short accelerator session's measurements of jaxsr, printed as one JSON object.
#
#   bash benchmarks/device_check.sh [--out FILE] [--peak-tflops X] [--install-cuda]
#   bash benchmarks/device_check.sh --smoke      # every part at tiny sizes on CPU (< 2 min)
#
# Parts, in order, each one process of an existing benchmark under its own time limit:
#   info    device name, backend, jax version          (benchmarks/device_report.py info)
#   refine  candidates/s at B = 1,024 and 8,192         (benchmarks/refine.py, batched)
#   train   samples/s and MFU, paper config, bfloat16   (benchmarks/train_step.py)
#   decode  tokens/s greedy and 1,024 samples per bag   (benchmarks/decode.py, paper)
#   search  evaluations/s at population 16,384          (benchmarks/search.py)
#
# Each part's stdout, stderr and exit status go to a temporary folder (printed on stderr;
# --tmp DIR chooses it); benchmarks/device_report.py turns them into the report. A part that
# fails or runs out of time reports {"error": "..."} and the others still run. The report
# is rewritten after every part (to --out FILE too), so a run killed from outside still
# leaves what was measured until then.
#
# Time: all parts share one budget (--budget, default 440 s; 110 s with --smoke), counted
# from the start, the --install-cuda step included. A part may run until its own cap, but
# never into the minimum time held back for the parts after it, so a slow part cannot
# starve the rest. With the kill grace of each part the whole stays under 8 minutes.
#
# Environment, for tests: DEVICE_CHECK_FAIL=part[,part...] replaces those parts' commands
# with one that fails at once; part:hang with one that sleeps until its time limit.
# DEVICE_CHECK_PYTHON (or --python) picks the interpreter; by default ./.venv/bin/python
# where it exists, else python3 (an accelerator machine's own image).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE=0
INSTALL=0
OUT_FILE=""
PEAK=""
BUDGET=""
TMP=""
PY="${DEVICE_CHECK_PYTHON:-}"
PARTS="info,refine,train,decode,search"
LIMITS=()

usage() {
    sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    echo "Options: --smoke --out FILE --peak-tflops X --install-cuda --budget SECONDS"
    echo "         --tmp DIR --python PATH --parts info,refine,train,decode,search"
    echo "         --limit PART=SECONDS (a part's own cap; repeatable)"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --install-cuda) INSTALL=1 ;;
        --out) OUT_FILE="${2:?--out needs a file}"; shift ;;
        --peak-tflops) PEAK="${2:?--peak-tflops needs a number}"; shift ;;
        --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
        --tmp) TMP="${2:?--tmp needs a folder}"; shift ;;
        --python) PY="${2:?--python needs a path}"; shift ;;
        --parts) PARTS="${2:?--parts needs a list}"; shift ;;
        --limit) LIMITS+=("${2:?--limit needs part=seconds}"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "device_check: unknown argument '$1' (--help lists them)" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "[device_check] $*" >&2; }
now() {  # seconds since the epoch, with a decimal point whatever the locale
    local t=${EPOCHREALTIME:-$(date +%s.%N)}
    printf '%s' "${t/,/.}"
}
seconds_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

START=$(now)
START_INT=${START%.*}
if [ -z "$BUDGET" ]; then
    if [ "$SMOKE" = 1 ]; then BUDGET=110; else BUDGET=440; fi
fi
DEADLINE=$((START_INT + BUDGET))

if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
if [ -z "$TMP" ]; then
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")
else
    mkdir -p "$TMP" && rm -f "$TMP"/*.meta "$TMP"/*.json "$TMP"/*.log "$TMP"/install.txt
fi
log "parts' outputs in $TMP; budget ${BUDGET} s; python: $PY"

# The repository's package without installing it; unbuffered so that a part stopped at its
# limit still leaves its progress lines in its log.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ "$SMOKE" = 1 ]; then
    export JAX_PLATFORMS=cpu
fi

# ----------------------------------------------------------------------------- parts
# define NAME CAP HELD-BACK COMMAND...: the part's own time limit, the seconds held back for
# it while earlier parts run, and its command (quoted here, run by bash -c).
declare -A CAP FLOOR CMD
define() {
    local name=$1
    CAP[$name]=$2
    FLOOR[$name]=$3
    shift 3
    CMD[$name]=$(printf '%q ' "$@")
}
B="$ROOT/benchmarks"
if [ "$SMOKE" = 1 ]; then
    # The peak is nominal: it exercises the MFU arithmetic, and means nothing on a CPU.
    define info 30 8 "$PY" "$B/device_report.py" info
    define refine 40 10 "$PY" "$B/refine.py" --json --sizes 64 --solvers batched \
        --scipy-subset 4
    define train 45 10 "$PY" "$B/train_step.py" --json --configs tiny --dtype bfloat16 \
        --tokens 1000 --repeats 2 --no-baseline --peak-tflops "${PEAK:-1}"
    define decode 30 10 "$PY" "$B/decode.py" --json --configs tiny --length 8 --samples 16 \
        --no-beam --no-uncached
    define search 40 10 "$PY" "$B/search.py" --json --sizes 256 --generations 1 --warm-up 1 \
        --repeats 1 --baseline-size 0
    REFINE_SIZES="[64]" TRAIN_CONFIG=tiny DECODE_CONFIG=tiny DECODE_SAMPLES=16 SEARCH_POP=256
else
    PEAK_ARGS=()
    [ -n "$PEAK" ] && PEAK_ARGS=(--peak-tflops "$PEAK")
    # Baselines that only run on a CPU (torch) or cost minutes (uncached decoding, the numpy
    # search loop) are left out: this session measures the accelerator's own rates.
    define info 60 15 "$PY" "$B/device_report.py" info
    define refine 150 45 "$PY" "$B/refine.py" --json --sizes 1024 8192 --solvers batched
    define train 170 45 "$PY" "$B/train_step.py" --json --configs paper --dtype bfloat16 \
        --no-baseline "${PEAK_ARGS[@]}"
    define decode 120 40 "$PY" "$B/decode.py" --json --configs paper --samples 1024 \
        --no-beam --no-uncached
    define search 110 40 "$PY" "$B/search.py" --json --sizes 16384 --repeats 3 --baseline-size 0
    REFINE_SIZES="[1024, 8192]" TRAIN_CONFIG=paper DECODE_CONFIG=paper DECODE_SAMPLES=1024
    SEARCH_POP=16384
fi

known() {
    [ -n "${CMD[$1]+x}" ] && return
    echo "device_check: unknown part '$1' (known: info,refine,train,decode,search)" >&2
    exit 2
}
IFS=',' read -r -a ORDER <<<"$PARTS"
for part in "${ORDER[@]}"; do known "$part"; done
for item in "${LIMITS[@]}"; do
    known "${item%%=*}"
    case "${item#*=}" in
        ''|*[!0-9]*) echo "device_check: --limit wants PART=SECONDS, not '$item'" >&2; exit 2 ;;
    esac
    CAP[${item%%=*}]=${item#*=}
done
PARTS_JSON=$(printf '"%s", ' "${ORDER[@]}")
SMOKE_JSON=false
[ "$SMOKE" = 1 ] && SMOKE_JSON=true
# The settings the report needs to find its figures in each benchmark's output.
{
    printf '{"start": %s, "budget": %s, "smoke": %s, "parts": [%s], ' \
        "$START" "$BUDGET" "$SMOKE_JSON" "${PARTS_JSON%, }"
    printf '"refine_sizes": %s, "train_config": "%s", "decode_config": "%s", ' \
        "$REFINE_SIZES" "$TRAIN_CONFIG" "$DECODE_CONFIG"
    printf '"decode_samples": %s, "search_population": %s}\n' "$DECODE_SAMPLES" "$SEARCH_POP"
} >"$TMP/run.json"

# ----------------------------------------------------------------------------- report

report() {
    # The helper needs only the standard library; python3 stands in if $PY cannot start.
    local json
    json=$("$PY" "$B/device_report.py" assemble "$TMP" 2>>"$TMP/report.log") ||
        json=$(python3 "$B/device_report.py" assemble "$TMP" 2>>"$TMP/report.log") ||
        json="{\"error\": \"the report could not be assembled: see $TMP/report.log\"}"
    printf '%s\n' "$json" >"$TMP/report.json"
    if [ -n "$OUT_FILE" ]; then
        # Through a temporary name, so that a reader never sees half a report.
        printf '%s\n' "$json" >"$OUT_FILE.tmp.$$" && mv -f "$OUT_FILE.tmp.$$" "$OUT_FILE"
    fi
}

CHILD=""
CURRENT=""
CURRENT_START=""
on_signal() {
    log "interrupted: reporting what was measured"
    if [ -n "$CHILD" ]; then
        kill -TERM "$CHILD" 2>/dev/null
        wait "$CHILD" 2>/dev/null
        printf '{"interrupted": true, "start": %s, "end": %s}\n' "$CURRENT_START" "$(now)" \
            >"$TMP/$CURRENT.meta"
    fi
    report
    cat "$TMP/report.json"
    exit 130
}
trap on_signal INT TERM

held_back_after() {  # seconds held back for the parts after $1 (all of them for "")
    local total=0 seen=0 p
    [ -z "$1" ] && seen=1
    for p in "${ORDER[@]}"; do
        if [ "$seen" = 1 ]; then total=$((total + FLOOR[$p])); fi
        [ "$p" = "$1" ] && seen=1
    done
    echo "$total"
}

write_meta() {  # part rc start limit [skipped-reason]
    if [ -n "${5:-}" ]; then
        printf '{"skipped": "%s"}\n' "$5" >"$TMP/$1.meta"
    else
        printf '{"rc": %s, "start": %s, "end": %s, "limit": %s}\n' "$2" "$3" "$(now)" "$4" \
            >"$TMP/$1.meta"
    fi
}

run_part() {
    local part=$1 limit start rc command
    limit=$((DEADLINE - $(date +%s) - $(held_back_after "$part")))
    [ "$limit" -gt "${CAP[$part]}" ] && limit=${CAP[$part]}
    # Under 5 s left (or under a smaller cap of its own) is too little to start a part.
    if [ "$limit" -lt 1 ] || [ "$limit" -lt "$((CAP[$part] < 5 ? CAP[$part] : 5))" ]; then
        write_meta "$part" "" "" "" "the time budget (--budget $BUDGET s) was used up"
        log "$part: not run, no time left"
        return
    fi
    command=${CMD[$part]}
    case ",${DEVICE_CHECK_FAIL:-}," in
        *",$part,"*)
            command="echo 'forced failure (DEVICE_CHECK_FAIL=$part)' >&2; false" ;;
        *",$part:hang,"*)
            command="echo 'forced hang (DEVICE_CHECK_FAIL=$part:hang)' >&2; sleep 3600" ;;
    esac
    log "$part: limit ${limit} s: $command"
    start=$(now)
    CURRENT=$part
    CURRENT_START=$start
    # In the background so that a signal reaches on_signal without waiting for the part;
    # timeout(1) signals the command's whole process group, grandchildren included.
    timeout -k 5 "$limit" bash -c "$command" >"$TMP/$part.json" 2>"$TMP/$part.log" </dev/null &
    CHILD=$!
    wait "$CHILD"
    rc=$?
    CHILD=""
    write_meta "$part" "$rc" "$start" "$limit"
    log "$part: exit status $rc after $(seconds_since "$start") s"
    report
}

# ----------------------------------------------------------------------------- install

install_cuda() {
    local status message cuda extra version
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        status=skipped; message="no GPU visible via nvidia-smi: nothing installed"
    elif "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' >/dev/null 2>&1; then
        status=skipped; message="jax already runs on the GPU: nothing installed"
    else
        # The wheel that matches the driver's CUDA major version and the jax already
        # installed (an upgrade of jax itself could leave the project's supported range).
        cuda=$(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9]*' | grep -o '[0-9]*$')
        if [ "${cuda:-12}" -ge 13 ]; then extra=cuda13; else extra=cuda12; fi
        version=$("$PY" -c 'import jax; print(jax.__version__)' 2>/dev/null)
        local spec="jax[$extra]${version:+==$version}"
        local limit=$((DEADLINE - $(date +%s) - $(held_back_after "") ))
        [ "$limit" -gt 180 ] && limit=180
        log "installing $spec (at most ${limit} s)"
        if [ "$limit" -ge 10 ] && timeout -k 5 "$limit" "$PY" -m pip install --quiet \
                --retries 0 --timeout 15 "$spec" >"$TMP/install.log" 2>&1; then
            status=installed; message="installed $spec"
        else
            status=failed
            message="could not install $spec (no network, no matching wheel, or out of time;"
            message+=" pip's last line: $(tail -n 1 "$TMP/install.log" 2>/dev/null | cut -c1-200))"
            message+="; the parts run on whatever jax finds"
        fi
    fi
    log "--install-cuda: $message"
    printf '%s\n%s\n' "$status" "$message" >"$TMP/install.txt"
}

# The floor of every part is held back from the install; held_back_after "" sums them all.
if [ "$INSTALL" = 1 ]; then
    install_cuda
fi

for part in "${ORDER[@]}"; do
    run_part "$part"
done
report
log "done in $(seconds_since "$START") s"
cat "$TMP/report.json"
