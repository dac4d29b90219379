#!/usr/bin/env bash
# Runs every libFuzzer target for FUZZ_SECONDS (default 60) each, starting from the committed seeds in
# fuzz/corpus/<target>/ plus the growing working corpus fuzz/.work/<target>/. Crashing inputs land in
# fuzz/.artifacts/<target>/ (copy them to Tests/Fixtures/hostile/regressions/<target>/ once fixed).
# Usage: FUZZ_SECONDS=300 bash fuzz/run.sh [target ...]   (targets: zip pickle legacy safetensors npy manifest hdf5)
# Exit status: 0 when no target produced an artifact, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    # hdf5 only on request (FUZZ_HDF5=1 or by name): the system libhdf5 1.10 crashes on some corrupted
    # files by itself (fuzz/known-crashes/libhdf5/), which would stop that target within seconds.
    targets=(zip pickle legacy safetensors npy manifest)
    [ "${FUZZ_HDF5:-0}" = 1 ] && targets+=(hdf5)
fi
bash fuzz/build.sh "${targets[@]}" || exit 2
status=0
printf "%-12s %12s %8s %s\n" target executions crashes log
for t in "${targets[@]}"; do
    work=fuzz/.work/$t; art=fuzz/.artifacts/$t; log=fuzz/.work/$t.log
    mkdir -p "$work" "$art"
    before=$(ls "$art" | wc -l)
    SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1} \
    "fuzz/.build/fuzz-$t" "$work" "fuzz/corpus/$t" -max_total_time="$SECONDS_EACH" -timeout=10 \
        -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 -artifact_prefix="$art/" > "$log" 2>&1
    runs=$(grep -E "stat::number_of_executed_units" "$log" | awk '{print $2}' | tail -1)
    crashes=$(( $(ls "$art" | wc -l) - before ))
    printf "%-12s %12s %8s %s\n" "$t" "${runs:-?}" "$crashes" "$log"
    [ "$crashes" -gt 0 ] && status=1
done
exit $status
