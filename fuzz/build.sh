#!/usr/bin/env bash
# Builds the libFuzzer targets (Linux, swiftc -sanitize=fuzzer,address) into fuzz/.build/fuzz-<target>.
# MoepackCore and MoepackCheckpoint are compiled from Sources/ as their own modules (with -enable-testing
# so targets can reach internal reader entry points), instrumented for coverage and ASan, then each
# fuzz/targets/<target>.swift is linked with fuzz/FuzzSupport.swift, zlib, libhdf5 and libcrypto
# (pkg-config). The manifest target also gets MoepackFixedPoint, MoepackModel and MoepackPacking.
# Usage: bash fuzz/build.sh [target ...]     (default: every target)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=fuzz/.build
mkdir -p "$OUT"
SWIFTC=${SWIFTC:-swiftc}
SAN=(-sanitize=fuzzer,address -O -g -swift-version 6 -parse-as-library)
HDF5_CFLAGS=$(pkg-config --cflags hdf5)
HDF5_LIBS=$(pkg-config --libs hdf5)
ZLIB_LIBS=$(pkg-config --libs zlib)
CINC=(-I Sources/CZlib -I Sources/CHDF5 -I Sources/CCrypto)
for f in $HDF5_CFLAGS; do CINC+=(-Xcc "$f"); done

stale() { # stale OUTPUT INPUT... : true when OUTPUT is missing or older than an input
    local out=$1; shift
    [ -e "$out" ] || return 0
    for f in "$@"; do [ "$f" -nt "$out" ] && return 0; done
    return 1
}

CORE=(Sources/MoepackCore/*.swift)
if stale "$OUT/MoepackCore.o" "${CORE[@]}" fuzz/build.sh; then
    echo "build: MoepackCore"
    "$SWIFTC" "${SAN[@]}" -enable-testing -module-name MoepackCore -wmo -c "${CORE[@]}" "${CINC[@]}" \
        -emit-module -emit-module-path "$OUT/MoepackCore.swiftmodule" -o "$OUT/MoepackCore.o"
fi
CKPT=(Sources/MoepackCheckpoint/*.swift)
if stale "$OUT/MoepackCheckpoint.o" "${CKPT[@]}" "$OUT/MoepackCore.o"; then
    echo "build: MoepackCheckpoint"
    "$SWIFTC" "${SAN[@]}" -enable-testing -module-name MoepackCheckpoint -wmo -c "${CKPT[@]}" \
        -I "$OUT" "${CINC[@]}" \
        -emit-module -emit-module-path "$OUT/MoepackCheckpoint.swiftmodule" -o "$OUT/MoepackCheckpoint.o"
fi
# The manifest target also needs the packing stage (and the model and fixed-point modules under it).
# SwiftPM's resource accessor (Bundle.module) is replaced by fuzz/PackingBundle.swift.
module() { # module NAME OBJ-DEPS... -- SOURCES...
    local name=$1; shift
    local deps=(); while [ "$1" != "--" ]; do deps+=("$1"); shift; done; shift
    if stale "$OUT/$name.o" "$@" "${deps[@]}"; then
        echo "build: $name"
        "$SWIFTC" "${SAN[@]}" -module-name "$name" -wmo -c "$@" -I "$OUT" "${CINC[@]}" \
            -emit-module -emit-module-path "$OUT/$name.swiftmodule" -o "$OUT/$name.o"
    fi
}
PACKING_OBJS=()
needs_packing() { for t in "$@"; do [ "$t" = manifest ] && return 0; done; return 1; }
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for t in fuzz/targets/*.swift; do targets+=("$(basename "$t" .swift)"); done
fi
if needs_packing "${targets[@]}"; then
    module MoepackFixedPoint "$OUT/MoepackCore.o" -- Sources/MoepackFixedPoint/*.swift
    module MoepackModel "$OUT/MoepackCheckpoint.o" -- Sources/MoepackModel/*.swift
    module MoepackPacking "$OUT/MoepackModel.o" "$OUT/MoepackFixedPoint.o" -- Sources/MoepackPacking/*.swift fuzz/PackingBundle.swift
    PACKING_OBJS=("$OUT/MoepackFixedPoint.o" "$OUT/MoepackModel.o" "$OUT/MoepackPacking.o")
fi
CRYPTO_LIBS=$(pkg-config --libs libcrypto)
for t in "${targets[@]}"; do
    src=fuzz/targets/$t.swift
    objs=(); [ "$t" = manifest ] && objs=("${PACKING_OBJS[@]}")
    bin=$OUT/fuzz-$t
    if stale "$bin" "$src" fuzz/FuzzSupport.swift "$OUT/MoepackCheckpoint.o" "$OUT/MoepackCore.o" "${objs[@]}"; then
        echo "build: fuzz-$t"
        "$SWIFTC" "${SAN[@]}" -module-name Fuzz_$t "$src" fuzz/FuzzSupport.swift -I "$OUT" "${CINC[@]}" \
            "$OUT/MoepackCore.o" "$OUT/MoepackCheckpoint.o" "${objs[@]}" $ZLIB_LIBS $HDF5_LIBS $CRYPTO_LIBS -o "$bin" 2> "$OUT/link-$t.log" \
            || { cat "$OUT/link-$t.log" >&2; exit 1; }
    fi
done
