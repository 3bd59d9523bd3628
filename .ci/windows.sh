#!/usr/bin/env bash
# The kernels, the thread pool and the platform layer on Windows, checked from Linux: the C driver
# tests/native/kernel_driver.c is built natively with gcc and cross-compiled with mingw-w64, the
# .exe runs under wine, and both must pass their own checks (every tier against the reference,
# the same bits for 1, 2 and 3 threads) and print the same bits for every fast tier.
#
#   .ci/windows.sh          (installs mingw-w64 and wine from Debian's packages when missing)
#
# A third build, with -DSA_NO_VECTOR_TIERS, has the tiers an MSVC build has (the reference tier
# alone) and must give the reference tier's results. What this does not cover: MSVC itself (the
# extension's MSVC build is untested here), the Python glue on Windows, and Windows on ARM.
source "$(dirname "$0")/lib.sh" windows
cd "$ROOT"

if ! command -v x86_64-w64-mingw32-gcc >/dev/null || ! command -v wine >/dev/null; then
    echo "installing mingw-w64 and wine64 (Debian packages)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mingw-w64 wine64 >"$WORK/apt.log" 2>&1 \
        || { tail -20 "$WORK/apt.log"; exit 1; }
fi

# The extension's C sources from setup.py (one list), less the Python glue.
mapfile -t SOURCES < <("$PY" - <<'PY'
import ast
tree = ast.parse(open("setup.py").read())
for node in tree.body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SOURCES":
        for src in ast.literal_eval(node.value):
            if src != "csrc/module.c":
                print(src)
PY
)
FLAGS=(-std=c11 -O3 -fno-math-errno -ffp-contract=off -Wall -Wextra -Wno-unused-parameter -Werror -Icsrc)

gcc "${FLAGS[@]}" -o "$WORK/driver" tests/native/kernel_driver.c "${SOURCES[@]}" -lm -pthread
x86_64-w64-mingw32-gcc "${FLAGS[@]}" -static -o "$WORK/driver.exe" tests/native/kernel_driver.c "${SOURCES[@]}"
# The shape of an MSVC build (no GCC vector extensions there): the reference tier alone.
x86_64-w64-mingw32-gcc "${FLAGS[@]}" -DSA_NO_VECTOR_TIERS -static -o "$WORK/driver-reference.exe" \
    tests/native/kernel_driver.c "${SOURCES[@]}"

"$WORK/driver" >"$WORK/linux.txt" || { cat "$WORK/linux.txt"; echo "windows.sh: the native driver failed"; exit 1; }
export WINEDEBUG=-all WINEPREFIX="$WORK/wineprefix"
timeout 600 wine "$WORK/driver.exe" 2>"$WORK/wine.err" | tr -d '\r' >"$WORK/windows.txt" \
    || { cat "$WORK/windows.txt"; tail -5 "$WORK/wine.err"; echo "windows.sh: the Windows driver failed under wine"; exit 1; }

timeout 600 wine "$WORK/driver-reference.exe" 2>>"$WORK/wine.err" | tr -d '\r' >"$WORK/windows-reference.txt" \
    || { cat "$WORK/windows-reference.txt"; echo "windows.sh: the reference-only Windows driver failed"; exit 1; }
if grep -v '^cpus\|^OK' "$WORK/windows-reference.txt" | grep -qv '^reference '; then
    echo "windows.sh: the reference-only build has other tiers"; exit 1
fi
if ! diff <(grep '^reference ' "$WORK/linux.txt") <(grep '^reference ' "$WORK/windows-reference.txt"); then
    echo "windows.sh: the reference-only build's results differ from the full build's"; exit 1
fi

echo "linux:   $(tail -1 "$WORK/linux.txt"); windows (wine): $(tail -1 "$WORK/windows.txt")"
echo "tiers run under wine: $(grep -v '^cpus\|^OK\|^FAIL' "$WORK/windows.txt" | cut -d' ' -f1 | sort -u | tr '\n' ' ')"
# Fast tiers: our own exp, so the two builds must agree to the bit. The reference tier calls the
# C library's exp(); its rounded checksums must agree.
if ! diff <(grep -v '^cpus' "$WORK/linux.txt") <(grep -v '^cpus' "$WORK/windows.txt"); then
    echo "windows.sh: the Windows build's results differ from the Linux build's"
    exit 1
fi
echo "windows.sh: $(grep -c 'bits=' "$WORK/windows.txt") fast-tier results bit-identical to Linux, $(grep -c 'sum=' "$WORK/windows.txt") reference checksums equal; the reference-only build (an MSVC build's tiers) agrees"
