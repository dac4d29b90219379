#!/usr/bin/env bash
# bench/run.sh — time moepack against the NumPy/PyTorch scripts a user would otherwise write.
#
# Usage (from anywhere):  bash bench/run.sh        (make bench = make release && bash bench/run.sh)
#                         bash bench/run.sh --write-reference-figures
#                             runs only the reference scripts and rewrites bench/reference-figures.json
#
# Needs .build/release/moepack (builds nothing). Each job runs as a whole process under
# `/usr/bin/time -f '%e %M'` (GNU time; installed with apt-get when missing and root): 1 warm-up run,
# then $BENCH_RUNS (default 5) timed runs; the table shows medians. Wall time is taken from bash's
# EPOCHREALTIME around the process (ms resolution) when available, else from %e; peak RSS is %M.
#
# Jobs:
#   pack-tiny    moepack pack on bench/out/train-tiny.pth (float32 weights of the bundled model's shapes
#                + AdamW state, ~216 MB) vs bench/reference_pack.py on the same file
#   inspect      moepack inspect --json on models/m3vit-tiny-edge-moe.pth
#   export       moepack export on models/m3vit-tiny-edge-moe.pth → safetensors
#   run-float    moepack run --mode float, per frame = (T(N frames) − T(N/2 frames)) / (N/2), N = $BENCH_FRAMES
#                (80; a 20-frame run differs from a 10-frame one by a few tenths of a second, within this VM's
#                run-to-run noise): steady state, both cores busy; vs bench/reference_forward.py ms/frame (PyTorch CPU,
#                2 threads). Also 1 frame, to show how cost grows with frames (slopes 1→N/2 and N/2→N)
#   run-fixed    the same with --mode fixed (no reference). Float, fixed and the reference alternate in rounds
#                (float 1, N/2, N frames, fixed 1, N/2, N frames, reference_forward.py; a warm-up round, then
#                $BENCH_FRAME_RUNS (9)), so that fixed ÷ float and float ÷ PyTorch compare runs of the same
#                minute; the fixed ÷ float ratio of each round is listed too
#   pack-small   pack on bench/out/train-small.pth (ViT-Small-sized, ~860 MB) with --profile bench/vit-small.json,
#                both tools, plus the growth factors small ÷ tiny (file bytes, moepack, reference)
#   run-small-*  moepack run --mode float / fixed on that image, per frame = slope between N and 2N frames with
#                full batches (float 8 → 16, fixed 4 → 8), $BENCH_SMALL_RUNS (1) timed runs after the warm-up
#   heads        moepack heads (semseg + depth decoders) per frame vs bench/reference_heads.py
#   cold-build   swift build -c release --product moepack in a fresh clone (1 run; BENCH_COLD_BUILD=0 skips)
#   cold-test    make test in the same fresh clone, debug build from nothing (1 run; skipped with cold-build)
# Every cell shows the median and, in brackets, the spread (min–max) over the timed runs (for per-frame
# rows: over the paired runs, run i of the N-frame job minus run i of the N/2-frame job). The last lines
# state issue 15's targets with this run's figure and margin.
#
# The bench checkpoints are generated when missing, only if a Python with torch is available:
# $PYTHON, <repo>/.venv/bin/python, /work/venv/bin/python or python3 (the first that imports torch+numpy).
# Without one, the reference column shows the committed figures in bench/reference-figures.json and
# their date. Machines are noisy: compare medians and ratios, not single runs. Nothing here asserts
# on timings.
#
# Environment: MOEPACK (binary, default .build/release/moepack), BENCH_RUNS (5), BENCH_FRAME_RUNS (9), BENCH_FRAMES (80),
# PYTHON, BENCH_REFERENCE=committed (use the committed reference figures even when torch is available).
# A full run with torch also writes its reference medians to bench/out/reference-figures.json. Outputs and logs go to bench/out/ (git-ignored); the table is also written to
# bench/out/results.md.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${MOEPACK:-.build/release/moepack}"
RUNS="${BENCH_RUNS:-5}"
FRAMES="${BENCH_FRAMES:-80}"
OUT=bench/out
LOG="$OUT/logs"
BUNDLED=models/m3vit-tiny-edge-moe.pth
FRAME=models/demo-frame.u8
CK_TINY="$OUT/train-tiny.pth"
CK_SMALL="$OUT/train-small.pth"
PROFILE_SMALL=bench/vit-small.json
FIGURES=bench/reference-figures.json

die() { echo "bench: $*" >&2; exit 1; }

REF_ONLY=false
case "${1:-}" in
    "") ;;
    --write-reference-figures) REF_ONLY=true ;;
    *) die "usage: bash bench/run.sh [--write-reference-figures]" ;;
esac

$REF_ONLY || [ -x "$BIN" ] || die "$BIN not found or not executable. Build it first: make release (swift build -c release --product moepack), then run bash bench/run.sh (or make bench)."
(( RUNS >= 1 )) || die "BENCH_RUNS must be >= 1"
(( FRAMES >= 4 )) || die "BENCH_FRAMES must be >= 4"
HALF=$(( FRAMES / 2 ))

# GNU time (Debian package `time`).
if ! /usr/bin/time -f '%e %M' -o /dev/null true >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bench: installing GNU time (apt-get install time)" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null \
            || die "could not install GNU time"
    else
        die "GNU time (/usr/bin/time) is missing: install the Debian package 'time' (sudo apt-get install time)"
    fi
fi

# A Python with torch + numpy, if any.
PY=""
[ "${BENCH_REFERENCE:-}" = committed ] && ! $REF_ONLY && PYCANDS=() || PYCANDS=("${PYTHON:-}" "$ROOT/.venv/bin/python" /work/venv/bin/python python3)
for cand in "${PYCANDS[@]}"; do
    [ -n "$cand" ] || continue
    command -v "$cand" >/dev/null 2>&1 || [ -x "$cand" ] || continue
    if "$cand" -c 'import torch, numpy' >/dev/null 2>&1; then PY="$cand"; break; fi
done

$REF_ONLY && [ -z "$PY" ] && die "--write-reference-figures needs a Python with torch and numpy (set PYTHON)"

# The previous run's logs are kept in logs.prev/ (one generation).
rm -rf "$LOG.prev"
[ -d "$LOG" ] && mv "$LOG" "$LOG.prev"
mkdir -p "$LOG"
# Every timed run, not only the medians: job, run, wall seconds, peak RSS KiB.
RUNS_TSV="$OUT/runs.tsv"
printf 'job\trun\twall_s\trss_kb\n' > "$RUNS_TSV"

if [ -n "$PY" ]; then
    for size in tiny small; do
        ck="$OUT/train-$size.pth"
        if [ ! -f "$ck" ]; then
            echo "bench: generating $ck (scripts/make_bench_checkpoint.py --size $size, seeded) ..." >&2
            "$PY" scripts/make_bench_checkpoint.py --size "$size" "$ck" >&2 || die "generating $ck failed"
        fi
    done
elif [ "${BENCH_REFERENCE:-}" = committed ]; then
    echo "bench: BENCH_REFERENCE=committed: reference figures come from $FIGURES (the reference scripts do not run); jobs needing generated checkpoints run only if they already exist" >&2
else
    echo "bench: no Python with torch found: reference figures come from $FIGURES; jobs needing generated checkpoints run only if they already exist" >&2
fi

# ---------------------------------------------------------------------------------------------
declare -A WALL RSS FAIL LINEAR WALLS SPREAD

median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END { if (NR == 0) exit 1; if (NR % 2) printf "%.6g\n", a[(NR+1)/2]; else printf "%.6g\n", (a[NR/2]+a[NR/2+1])/2 }'
}

now() { if [ -n "${EPOCHREALTIME:-}" ]; then echo "${EPOCHREALTIME/,/.}"; else echo ""; fi; }

# measure KEY CMD...: 1 warm-up + RUNS timed runs. Sets WALL[KEY] (s), RSS[KEY] (KiB), or FAIL[KEY].
# stdout of timed run i is in $LOG/KEY.i.out, stderr in $LOG/KEY.i.err.
# measure_once KEY I CMD...: run I of KEY (0 = the warm-up, not kept). Appends the wall time and
# peak RSS of a timed run to KEY's lists, or sets FAIL[KEY] and returns 1.
declare -A WLIST RLIST
measure_once() {
    local key=$1 i=$2; shift 2
    local t0 t1 e m
    t0=$(now)
    if ! /usr/bin/time -f '%e %M' -o "$LOG/$key.time" "$@" >"$LOG/$key.$i.out" 2>"$LOG/$key.$i.err"; then
        echo "bench: $key failed (run $i); last lines of $LOG/$key.$i.err:" >&2
        tail -n 3 "$LOG/$key.$i.err" | sed 's/^/    /' >&2
        FAIL[$key]=1
        return 1
    fi
    t1=$(now)
    ((i == 0)) && return 0
    read -r e m < <(tail -n 1 "$LOG/$key.time")
    if [ -n "$t0" ] && [ -n "$t1" ]; then e=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }'); fi
    WLIST[$key]+="$e "; RLIST[$key]+="$m "
    printf '%s\t%d\t%s\t%s\n' "$key" "$i" "$e" "$m" >> "$RUNS_TSV"
}

# measure_done KEY: WALL[KEY] (s) and RSS[KEY] (KiB) are the medians of KEY's timed runs, WALLS[KEY] the runs.
measure_done() {
    local key=$1
    WALL[$key]=$(median ${WLIST[$key]})
    WALLS[$key]="${WLIST[$key]% }"
    RSS[$key]=$(median ${RLIST[$key]} | awk '{ printf "%d\n", $1 + 0.5 }')
}

# measure KEY CMD...: 1 warm-up + RUNS timed runs. Sets WALL[KEY] (s), RSS[KEY] (KiB), or FAIL[KEY].
# stdout of timed run i is in $LOG/KEY.i.out, stderr in $LOG/KEY.i.err.
measure() {
    local key=$1; shift
    local i runs=${MEASURE_RUNS:-$RUNS}
    echo "bench: $key: $*" >&2
    for ((i = 0; i <= runs; i++)); do measure_once "$key" "$i" "$@" || return 1; done
    measure_done "$key"
}

# Committed reference figure: figure KEY FIELD → value or empty.
figure() {
    [ -f "$FIGURES" ] || return 0
    grep -E "^ *\"$1\": *\{" "$FIGURES" | sed -nE "s/.*\"$2\": *([0-9.eE+-]+).*/\\1/p" | head -n 1
}
FIG_DATE=$( [ -f "$FIGURES" ] && sed -nE 's/^ *"date": *"([^"]*)".*/\1/p' "$FIGURES" | head -n 1 )

have_ref() { [ -n "$PY" ]; }

# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bench: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), load average $LOAD_START" >&2

# (a) pack on the training checkpoint
if [ -f "$CK_TINY" ]; then
    $REF_ONLY || measure pack-tiny "$BIN" pack "$CK_TINY" -o "$OUT/pack-moepack-tiny" --quiet
    have_ref && measure ref-pack-tiny "$PY" bench/reference_pack.py "$CK_TINY" -o "$OUT/pack-ref-tiny"
fi

# (b) inspect and export on the bundled checkpoint
if ! $REF_ONLY; then
    measure inspect "$BIN" inspect "$BUNDLED" --json
    measure export "$BIN" export "$BUNDLED" -o "$OUT/export.safetensors"
fi

# (c, d) run per frame
PACKED="$OUT/packed-bundled"
RUN_MODE=""
if $REF_ONLY; then
    :
elif "$BIN" pack "$BUNDLED" -o "$PACKED" --quiet >"$LOG/prep-pack.out" 2>"$LOG/prep-pack.err"; then
    RUN_HELP=$("$BIN" run --help 2>&1 || true)
    if grep -q -- '--repeat' <<<"$RUN_HELP"; then
        RUN_MODE=repeat
    else
        # A folder of N copies of the frame vs a folder of one.
        for n in 1 "$HALF" "$FRAMES"; do
            d="$OUT/frames-$n"; rm -rf "$d"; mkdir -p "$d"
            for ((j = 0; j < n; j++)); do cp "$FRAME" "$d/$(printf 'frame-%03d.u8' "$j")"; done
        done
        if "$BIN" run "$PACKED" --image "$OUT/frames-1" --mode float -o "$OUT/run-probe" >"$LOG/probe.out" 2>"$LOG/probe.err"; then
            RUN_MODE=folder
        else
            echo "bench: moepack run has no --repeat and does not take a folder of frames (see $LOG/probe.err): per-frame rows skipped" >&2
        fi
    fi
else
    echo "bench: packing the bundled checkpoint failed (see $LOG/prep-pack.err): run rows skipped" >&2
fi
run_once() {   # run_once MODE N I → run I of key run-MODE-N
    local mode=$1 n=$2 i=$3
    ((i == 0)) && echo "bench: run-$mode-$n: $BIN run $PACKED --image $OUT/frames-$n --mode $mode -o $OUT/run-$mode-$n" >&2
    if [ "$RUN_MODE" = repeat ]; then
        measure_once "run-$mode-$n" "$i" "$BIN" run "$PACKED" --image "$FRAME" --mode "$mode" --repeat "$n" -o "$OUT/run-$mode-$n.npy"
    else
        rm -rf "$OUT/run-$mode-$n"
        measure_once "run-$mode-$n" "$i" "$BIN" run "$PACKED" --image "$OUT/frames-$n" --mode "$mode" -o "$OUT/run-$mode-$n"
    fi
}
# slope_list KEY_A KEY_B FRAMES_A FRAMES_B → ms/frame of each pair of runs (run i − run i), one per line.
slope_list() {
    local a=(${WALLS[$1]:-}) b=(${WALLS[$2]:-}) i
    for ((i = 0; i < ${#a[@]} && i < ${#b[@]}; i++)); do
        awk -v x="${a[$i]}" -v y="${b[$i]}" -v n="$3" -v m="$4" 'BEGIN { printf "%.3f\n", (y - x) * 1000 / (m - n) }'
    done
}
# slope_spread KEY_A KEY_B FRAMES_A FRAMES_B → "min–max" ms/frame over the paired runs.
slope_spread() {
    slope_list "$@" | sort -g | awk '{a[NR]=$1} END { if (NR) printf "%.1f–%.1f", a[1], a[NR] }'
}
per_frame() {   # per_frame MODE (after its runs) → sets WALL[run-MODE] (ms/frame), RSS[run-MODE], LINEAR[MODE]
    local mode=$1 n
    for n in 1 "$HALF" "$FRAMES"; do measure_done "run-$mode-$n"; done
    # Steady state: the slope between N/2 and N frames, where every core runs frames throughout (a
    # 1-frame run keeps one core idle, so a slope from 1 frame would understate the cost).
    WALL[run-$mode]=$(awk -v a="${WALL[run-$mode-$HALF]}" -v b="${WALL[run-$mode-$FRAMES]}" -v h="$HALF" -v n="$FRAMES" \
        'BEGIN { printf "%.3f", (b - a) * 1000 / (n - h) }')
    # Linearity in frames: the per-frame slope over the first and the second half of the range.
    LINEAR[$mode]=$(awk -v a="${WALL[run-$mode-1]}" -v m="${WALL[run-$mode-$HALF]}" -v b="${WALL[run-$mode-$FRAMES]}" \
        -v h="$HALF" -v n="$FRAMES" 'BEGIN { printf "1→%d frames %.1f ms/frame, %d→%d frames %.1f ms/frame", h, (m - a) * 1000 / (h - 1), h, n, (b - m) * 1000 / (n - h) }')
    RSS[run-$mode]=${RSS[run-$mode-$FRAMES]}
    SPREAD[run-$mode]=$(slope_spread "run-$mode-$HALF" "run-$mode-$FRAMES" "$HALF" "$FRAMES")
}
# Float, fixed and the PyTorch reference are timed in rounds: each round runs float on 1, N/2 and N
# frames, fixed on the same, then the reference, so the ratios compare runs of the same minute. On a
# shared VM the speed drifts by tens of percent over minutes; with each job's runs in one block, that
# drift went into the fixed ÷ float and float ÷ PyTorch ratios. $BENCH_FRAME_RUNS (9) rounds after a
# warm-up round, since a short run is the one a slow minute moves most.
FRAME_RUNS="${BENCH_FRAME_RUNS:-9}"
ref_forward_once() {   # ref_forward_once I → run I of the reference forward
    ((${1} == 0)) && echo "bench: ref-forward: $PY bench/reference_forward.py --frames $FRAMES --threads 2" >&2
    measure_once ref-forward "$1" "$PY" bench/reference_forward.py --checkpoint "$BUNDLED" --image "$FRAME" \
        --frames "$FRAMES" --warmup 3 --threads 2
}
if ! $REF_ONLY && [ -n "$RUN_MODE" ]; then
    for ((i = 0; i <= FRAME_RUNS; i++)); do
        for mode in float fixed; do
            [ -n "${FAIL[run-$mode]:-}" ] && continue
            for n in 1 "$HALF" "$FRAMES"; do run_once "$mode" "$n" "$i" || { FAIL[run-$mode]=1; break; }; done
        done
        have_ref && [ -z "${FAIL[ref-forward]:-}" ] && { ref_forward_once "$i" || true; }
    done
    for mode in float fixed; do [ -n "${FAIL[run-$mode]:-}" ] || per_frame "$mode"; done
    # Fixed ÷ float of each round (its two slopes), for the spread of the ratio.
    if [ -z "${FAIL[run-float]:-}" ] && [ -z "${FAIL[run-fixed]:-}" ]; then
        RATIO_ROUNDS=$(paste <(slope_list "run-fixed-$HALF" "run-fixed-$FRAMES" "$HALF" "$FRAMES") \
                             <(slope_list "run-float-$HALF" "run-float-$FRAMES" "$HALF" "$FRAMES") |
                       awk '$2 > 0 { printf "%.2f\n", $1 / $2 }' | sort -g | tr '\n' ' ')
    fi
elif ! $REF_ONLY; then
    FAIL[run-float]=1; FAIL[run-fixed]=1
elif have_ref; then
    for ((i = 0; i <= RUNS; i++)); do ref_forward_once "$i" || break; done
fi
# The reference's own in-process ms/frame of each timed run.
if have_ref && [ -z "${FAIL[ref-forward]:-}" ] && [ -n "${WLIST[ref-forward]:-}" ]; then
    measure_done ref-forward
    ms=()
    for f in "$LOG"/ref-forward.*.out; do
        [ "$f" = "$LOG/ref-forward.0.out" ] || ms+=("$(sed -nE 's/^ms\/frame: *([0-9.]+).*/\1/p' "$f")")
    done
    WALL[ref-forward-ms]=$(median "${ms[@]}")
    SPREAD[ref-forward]=$(printf '%s\n' "${ms[@]}" | sort -g | awk '{a[NR]=$1} END { printf "%.1f–%.1f", a[1], a[NR] }')
fi

# (f) task decoders (semseg + depth) on the bundled checkpoint's backbone output: moepack heads (per frame =
# slope between 1 and HEADS_FRAMES frames, .npy + .png written) vs bench/reference_heads.py (PyTorch, 2 threads)
HEADS_FRAMES=8
if ! $REF_ONLY && [ -d "${PACKED:-/nonexistent}" ] && "$BIN" run "$PACKED" --image "$FRAME" -o "$OUT/heads-x.npy" >/dev/null 2>&1; then
    hf=(); for ((j = 0; j < HEADS_FRAMES; j++)); do hf+=(--features "$OUT/heads-x.npy"); done
    if measure heads-1 "$BIN" heads "$BUNDLED" --features "$OUT/heads-x.npy" -o "$OUT/heads-1" &&
       measure heads-n "$BIN" heads "$BUNDLED" "${hf[@]}" -o "$OUT/heads-n"; then
        WALL[heads]=$(awk -v a="${WALL[heads-1]}" -v b="${WALL[heads-n]}" -v n="$HEADS_FRAMES" 'BEGIN { printf "%.3f", (b - a) * 1000 / (n - 1) }')
        RSS[heads]=${RSS[heads-n]}
    fi
fi
if have_ref && [ -f "$OUT/heads-x.npy" ]; then
    if measure ref-heads "$PY" bench/reference_heads.py --checkpoint "$BUNDLED" --features "$OUT/heads-x.npy" --frames "$HEADS_FRAMES" --threads 2; then
        ms=()
        for ((i = 1; i <= RUNS; i++)); do ms+=("$(sed -nE 's/^ms\/frame: *([0-9.]+).*/\1/p' "$LOG/ref-heads.$i.out")"); done
        WALL[ref-heads-ms]=$(median "${ms[@]}")
    fi
fi

# (e) pack on the ViT-Small-sized checkpoint
if [ -f "$CK_SMALL" ]; then
    $REF_ONLY || measure pack-small "$BIN" pack "$CK_SMALL" -o "$OUT/pack-moepack-small" --profile "$PROFILE_SMALL" --quiet
    have_ref && measure ref-pack-small "$PY" bench/reference_pack.py "$CK_SMALL" -o "$OUT/pack-ref-small" --profile "$PROFILE_SMALL"
fi

# (e2) run on the ViT-Small-sized image (1025 tokens), float and fixed, per frame in steady state: the
# slope between N and 2N frames where every worker's batches are full (float takes batches of 4 frames,
# fixed one frame at a time): float 8 → 16 frames, fixed 4 → 8. $BENCH_SMALL_RUNS (default 1) timed runs
# after the warm-up, since a fixed frame takes seconds. The frame is 3×512×512 seeded pseudo-random bytes
# (awk's srand(1)).
SMALL_PACKED="$OUT/pack-moepack-small"
if ! $REF_ONLY && [ -f "$SMALL_PACKED/manifest.json" ]; then
    SMALL_FRAME="$OUT/small-frame.u8"
    [ -f "$SMALL_FRAME" ] || LC_ALL=C awk 'BEGIN { srand(1); for (i = 0; i < 3 * 512 * 512; i++) printf "%c", int(rand() * 256) }' > "$SMALL_FRAME"
    for n in 4 8 16; do
        d="$OUT/small-frames-$n"; rm -rf "$d"; mkdir -p "$d"
        for ((j = 0; j < n; j++)); do cp "$SMALL_FRAME" "$d/$(printf 'frame-%03d.u8' "$j")"; done
    done
    for mode in float fixed; do
        if [ "$mode" = float ]; then lo=8; hi=16; else lo=4; hi=8; fi
        ok=true
        for n in $lo $hi; do
            rm -rf "$OUT/run-small-$mode-$n"
            MEASURE_RUNS=${BENCH_SMALL_RUNS:-1} measure "run-small-$mode-$n" "$BIN" run "$SMALL_PACKED" --image "$OUT/small-frames-$n" \
                --mode "$mode" -o "$OUT/run-small-$mode-$n" || ok=false
        done
        if $ok; then
            WALL[run-small-$mode]=$(awk -v a="${WALL[run-small-$mode-$lo]}" -v b="${WALL[run-small-$mode-$hi]}" -v n="$lo" 'BEGIN { printf "%.3f", (b - a) * 1000 / n }')
            RSS[run-small-$mode]=${RSS[run-small-$mode-$hi]}
            SPREAD[run-small-$mode]=$(slope_spread "run-small-$mode-$lo" "run-small-$mode-$hi" "$lo" "$hi")
        else
            FAIL[run-small-$mode]=1
        fi
    done
fi

# (f) cold release build of a fresh clone (once, not $RUNS times: it takes minutes). The clone is of
# the checked-out commit (git clone --local --no-hardlinks), so nothing built here is reused; Swift
# packages resolve from SwiftPM's shared cache. BENCH_COLD_BUILD=0 skips it.
if ! $REF_ONLY && [ "${BENCH_COLD_BUILD:-1}" != 0 ] && git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1; then
    COLD="$OUT/cold-clone"
    rm -rf "$COLD"
    if git clone -q --local --no-hardlinks "$ROOT" "$COLD" >"$LOG/cold-clone.out" 2>&1 \
        && git -C "$COLD" checkout -q "$(git -C "$ROOT" rev-parse HEAD)" >>"$LOG/cold-clone.out" 2>&1; then
        COLD_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
        echo "bench: cold-build: swift build -c release --product moepack in a fresh clone (load $COLD_LOAD)" >&2
        t0=$(now)
        if (cd "$COLD" && /usr/bin/time -f '%e %M' -o "$ROOT/$LOG/cold-build.time" swift build -c release --product moepack) \
            >"$LOG/cold-build.out" 2>&1; then
            t1=$(now)
            read -r e m < <(tail -n 1 "$LOG/cold-build.time")
            if [ -n "$t0" ] && [ -n "$t1" ]; then e=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'); fi
            WALL[cold-build]=$e; RSS[cold-build]=$m
            COLD_STEPS=$(grep -c 'Compiling' "$LOG/cold-build.out" || true)
            printf '%s\t%d\t%s\t%s\n' cold-build 1 "$e" "$m" >> "$RUNS_TSV"
        else
            echo "bench: cold build failed; see $LOG/cold-build.out" >&2
            FAIL[cold-build]=1
        fi
        # The README's test command from the same fresh clone (debug build of the package and its
        # tests, then every test), timed as one.
        rm -rf "$COLD/.build"
        echo "bench: cold-test: make test in a fresh clone (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
        t0=$(now)
        if (cd "$COLD" && /usr/bin/time -f '%e %M' -o "$ROOT/$LOG/cold-test.time" make test) >"$LOG/cold-test.out" 2>&1; then
            t1=$(now)
            read -r e m < <(tail -n 1 "$LOG/cold-test.time")
            if [ -n "$t0" ] && [ -n "$t1" ]; then e=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'); fi
            WALL[cold-test]=$e; RSS[cold-test]=$m
            printf '%s\t%d\t%s\t%s\n' cold-test 1 "$e" "$m" >> "$RUNS_TSV"
        else
            echo "bench: make test in the fresh clone failed; see $LOG/cold-test.out" >&2
            FAIL[cold-test]=1
        fi
        rm -rf "$COLD"
    else
        echo "bench: could not clone $ROOT for the cold build; see $LOG/cold-clone.out" >&2
    fi
fi

# ---------------------------------------------------------------------------------------------
# Committed reference figures
# ---------------------------------------------------------------------------------------------
# write_figures FILE: the reference medians of this run as JSON (one job per line).
write_figures() {
    job() {   # job NAME KEY EXTRA → one JSON line
        local extra=${3:-}
        printf '  "%s": {"wall_s": %s, "rss_kb": %s%s}' "$1" "${WALL[$2]:-null}" "${RSS[$2]:-null}" "$extra"
    }
    cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
    {
        echo "{"
        echo " \"description\": \"Medians of $RUNS whole-process runs (after 1 warm-up) of the reference scripts (bench/reference_pack.py, bench/reference_forward.py) under GNU time, written by bench/run.sh. Shown by bench/run.sh when no Python with torch is available.\","
        echo " \"date\": \"$(date -u +%Y-%m-%d)\","
        echo " \"runs\": $RUNS,"
        echo " \"machine\": {\"nproc\": $(nproc), \"cpu\": \"$cpu\", \"ram_kb\": $(awk '/MemTotal/ { print $2 }' /proc/meminfo), \"load_average_start\": \"$LOAD_START\", \"load_average_end\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"},"
        echo " \"python\": \"$("$PY" -c 'import sys, torch, numpy; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}")')\","
        echo " \"jobs\": {"
        job pack-tiny ref-pack-tiny ", \"checkpoint_bytes\": $(stat -L -c %s "$CK_TINY")"; echo ","
        job forward-float ref-forward ", \"ms_per_frame\": ${WALL[ref-forward-ms]:-null}, \"frames\": $FRAMES"; echo ","
        job pack-small ref-pack-small ", \"checkpoint_bytes\": $(stat -L -c %s "$CK_SMALL")"; echo
        echo " }"
        echo "}"
    } > "$1"
}
if $REF_ONLY; then
    write_figures "$FIGURES"
    cat "$FIGURES"
    exit 0
fi
# Every full run with torch also leaves its reference medians where they can be committed from.
have_ref && write_figures "$OUT/reference-figures.json"

# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------
fmt_s()  { [ -n "${1:-}" ] && awk -v x="$1" 'BEGIN { if (x < 1) printf "%.0f ms", x * 1000; else printf "%.2f s", x }'; }
fmt_ms() { [ -n "${1:-}" ] && awk -v x="$1" 'BEGIN { printf "%.1f ms/frame", x }'; }
fmt_mb() { [ -n "${1:-}" ] && awk -v x="$1" 'BEGIN { printf "%.0f MiB", x / 1024 }'; }
ratio()  { [ -n "${1:-}" ] && [ -n "${2:-}" ] && awk -v r="$1" -v m="$2" 'BEGIN { if (m > 0) printf "%.1f×", r / m }'; }

# row LABEL MOE_KEY REF_KEY FIG_KEY UNIT(s|ms)
row() {
    local label=$1 mk=$2 rk=$3 fk=$4 unit=$5 mw="" mr="" rw="" rr="" mcell rcell note=""
    if [ -n "$mk" ] && [ -z "${FAIL[$mk]:-}" ] && [ -n "${WALL[$mk]:-}" ]; then mw=${WALL[$mk]}; mr=${RSS[$mk]:-}; fi
    if [ -n "$rk" ] && have_ref && [ -z "${FAIL[$rk]:-}" ]; then
        if [ "$unit" = ms ]; then rw=${WALL[$rk-ms]:-}; else rw=${WALL[$rk]:-}; fi
        rr=${RSS[$rk]:-}
    elif [ -n "$fk" ] && ! have_ref; then
        if [ "$unit" = ms ]; then rw=$(figure "$fk" ms_per_frame); else rw=$(figure "$fk" wall_s); fi
        rr=$(figure "$fk" rss_kb)
        [ -n "$rw" ] && note=" (committed $FIG_DATE)"
    fi
    if [ "$unit" = ms ]; then mcell=$(fmt_ms "$mw"); rcell=$(fmt_ms "$rw"); else mcell=$(fmt_s "$mw"); rcell=$(fmt_s "$rw"); fi
    [ -n "$mcell" ] && [ -n "${SPREAD[$mk]:-}" ] && mcell="$mcell (${SPREAD[$mk]})"
    [ -n "$rcell" ] && [ -n "$rk" ] && [ -n "${SPREAD[$rk]:-}" ] && have_ref && rcell="$rcell (${SPREAD[$rk]})"
    [ -n "$mk" ] && [ -z "$mcell" ] && mcell="n/a"
    [ -z "$rcell" ] && rcell="—" || rcell="$rcell$note"
    printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "$mcell" "$rcell" "$(ratio "$rw" "$mw" || true)" \
        "$(fmt_mb "$mr" || true)" "$(fmt_mb "$rr" || true)"
}

size_mb() { [ -f "$1" ] && awk -v b="$(stat -L -c %s "$1")" 'BEGIN { printf "%.0f MB", b / 1e6 }'; }

{
    echo "| job | moepack median | reference median | ratio (reference ÷ moepack) | moepack peak RSS | reference peak RSS |"
    echo "|---|---|---|---|---|---|"
    row "pack, training checkpoint $(size_mb "$CK_TINY") (ViT-Tiny, float32 + AdamW)" pack-tiny ref-pack-tiny pack-tiny s
    row "inspect --json, bundled 36 MB" inspect "" "" s
    row "export → safetensors, bundled 36 MB" export "" "" s
    row "run --mode float, per frame" run-float ref-forward forward-float ms
    row "run --mode fixed, per frame" run-fixed "" "" ms
    row "heads: semseg + depth decoders, per frame" heads ref-heads "" ms
    row "pack, ViT-Small-sized checkpoint $(size_mb "$CK_SMALL") (float32 + AdamW)" pack-small ref-pack-small pack-small s
    [ -n "${WALL[run-small-float]:-}${FAIL[run-small-float]:-}" ] && row "run --mode float, ViT-Small-sized image, per frame" run-small-float "" "" ms
    [ -n "${WALL[run-small-fixed]:-}${FAIL[run-small-fixed]:-}" ] && row "run --mode fixed, ViT-Small-sized image, per frame" run-small-fixed "" "" ms
    [ -n "${WALL[cold-build]:-}${FAIL[cold-build]:-}" ] && row "cold \`swift build -c release\` of a fresh clone (1 run)" cold-build "" "" s
    [ -n "${WALL[cold-test]:-}${FAIL[cold-test]:-}" ] && row "\`make test\` in a fresh clone (debug build + all tests, 1 run)" cold-test "" "" s
    true
} > "$OUT/results.md"

{
    echo
    echo "Medians of $RUNS runs after 1 warm-up (page cache warm); the run rows and the PyTorch forward: $FRAME_RUNS rounds after a warm-up round. $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, load average at end $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%d)."
    if [ -n "${WALL[pack-tiny]:-}" ] && [ -n "${WALL[pack-small]:-}" ] && [ -f "$CK_TINY" ] && [ -f "$CK_SMALL" ]; then
        g() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.2f×", b / a }'; }
        line="Growth ViT-Small ÷ ViT-Tiny: checkpoint bytes $(g "$(stat -L -c %s "$CK_TINY")" "$(stat -L -c %s "$CK_SMALL")"), moepack pack wall $(g "${WALL[pack-tiny]}" "${WALL[pack-small]}"), peak RSS $(g "${RSS[pack-tiny]}" "${RSS[pack-small]}")"
        if have_ref && [ -n "${WALL[ref-pack-tiny]:-}" ] && [ -n "${WALL[ref-pack-small]:-}" ]; then
            line="$line; reference wall $(g "${WALL[ref-pack-tiny]}" "${WALL[ref-pack-small]}"), peak RSS $(g "${RSS[ref-pack-tiny]}" "${RSS[ref-pack-small]}")"
        elif ! have_ref && [ -n "$(figure pack-tiny wall_s)" ] && [ -n "$(figure pack-small wall_s)" ]; then
            line="$line; reference (committed) wall $(g "$(figure pack-tiny wall_s)" "$(figure pack-small wall_s)"), peak RSS $(g "$(figure pack-tiny rss_kb)" "$(figure pack-small rss_kb)")"
        fi
        echo "$line."
    fi
    for s in tiny small; do
        a="$OUT/pack-moepack-$s/ddr.bin" b="$OUT/pack-ref-$s/ddr.bin"
        # Only when the reference ran in this run (else its output is from an earlier one).
        if have_ref && [ -f "$a" ] && [ -f "$b" ] && [ "$b" -nt "$OUT/train-$s.pth" ]; then
            if cmp -s "$a" "$b"; then echo "pack-$s: moepack's ddr.bin and the reference's are byte-identical."
            else echo "pack-$s: ddr.bin differs from the reference's in $(cmp -l "$a" "$b" 2>/dev/null | wc -l) byte(s) ($(stat -L -c %s "$a") vs $(stat -L -c %s "$b") bytes)."; fi
        fi
    done
    for mode in float fixed; do
        [ -n "${LINEAR[$mode]:-}" ] && echo "Linear in frames, run --mode $mode: ${LINEAR[$mode]}."
    done
    if [ -n "${WALL[run-float]:-}" ] && [ -n "${WALL[run-fixed]:-}" ]; then
        echo "Fixed ÷ float per frame: $(awk -v a="${WALL[run-float]}" -v b="${WALL[run-fixed]}" 'BEGIN { if (a > 0) printf "%.2f×", b / a }'); per round (the two modes timed in the same minute): ${RATIO_ROUNDS:-? }(integer kernels: $(grep -qw avx512bw /proc/cpuinfo && grep -qw avx512f /proc/cpuinfo && echo AVX-512 || { grep -qw avx2 /proc/cpuinfo && echo AVX2 || echo portable C; })${MOEPACK_SIMD:+, forced MOEPACK_SIMD=$MOEPACK_SIMD})."
    fi
    # Issue 15's targets, each with this run's figure and its margin.
    target() {   # target LABEL VALUE LIMIT UNIT
        [ -n "${2:-}" ] && awk -v l="$1" -v v="$2" -v t="$3" -v u="$4" 'BEGIN {
            printf "Target %s ≤ %g%s: %.2f%s, %s (margin %+.0f%%).\n", l, t, u, v, u, (v <= t ? "met" : "NOT met"), (t - v) * 100 / t }'
    }
    fr() { [ -n "${1:-}" ] && [ -n "${2:-}" ] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.4f", a / b }'; }
    target "cold release build" "${WALL[cold-build]:-}" 90 " s"
    target "make test in a fresh clone" "${WALL[cold-test]:-}" 120 " s"
    target "fixed ÷ float per frame" "$(fr "${WALL[run-fixed]:-}" "${WALL[run-float]:-}")" 2.0 "×"
    target "ViT-Small-sized fixed ÷ float per frame" "$(fr "${WALL[run-small-fixed]:-}" "${WALL[run-small-float]:-}")" 10 "×"
    have_ref && target "float ÷ PyTorch per frame" "$(fr "${WALL[run-float]:-}" "${WALL[ref-forward-ms]:-}")" 0.5 "×"
    [ -n "${WALL[cold-build]:-}" ] && echo "Cold build: one run of swift build -c release --product moepack in a fresh clone, ${COLD_STEPS:-?} compile steps, load average $COLD_LOAD at its start."
    if [ -n "$RUN_MODE" ]; then
        echo "moepack per-frame time = (median wall of a $FRAMES-frame run − median wall of a $HALF-frame run) / $((FRAMES - HALF)) (frames via $RUN_MODE, both cores busy throughout: steady state); reference = median of bench/reference_forward.py's in-process ms/frame after 3 warm-up frames."
    fi
    if awk -v a="${LOAD_START%% *}" -v b="$(cut -d' ' -f1 /proc/loadavg)" -v n="$(nproc)" 'BEGIN { exit !(a > n || b > n) }'; then
        echo "Warning: the 1-minute load average ($LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end) exceeded the $(nproc) cores: other processes competed for the CPU and these figures are unreliable, multi-threaded ones (PyTorch's 2-thread pool) most of all. Re-run on a quiet machine."
    fi
    if ! have_ref; then
        echo "Reference column: the committed figures of $FIG_DATE (bench/reference-figures.json; no Python with torch used for this run)."
    fi
} >> "$OUT/results.md"

cat "$OUT/results.md"
