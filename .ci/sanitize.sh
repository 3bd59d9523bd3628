#!/usr/bin/env bash
# Sanitizer and assertion builds of selfattn's C extension, each running the whole test suite.
#
#   .ci/sanitize.sh [asan|assert|tsan|all] [pytest arguments...]      (default: all, tests/)
#
# asan:   the extension built with -fsanitize=address,undefined -fno-sanitize-recover=all, loaded
#         by the normal interpreter with the sanitizer runtimes preloaded, PYTHONMALLOC=malloc (so
#         ASan sees every Python allocation), leak detection off (CPython itself "leaks" at exit).
#         Any ASan or UBSan report ends the run with a nonzero status.
# assert: the extension built with -UNDEBUG (assert() live), the suite under python -X dev.
# tsan:   the extension built with -fsanitize=thread, libtsan preloaded, the thread tests
#         (tests/test_threads.py unless pytest arguments are given); any report fails.
#
# Each build happens in a throwaway copy of the tree (git's tracked and untracked, not ignored,
# files), in place there, and the tests import that copy; the checkout is never touched.
# PYTHON selects the interpreter (default: python3); its numpy, pytest and hypothesis are used.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODE="${1:-all}"
[ $# -gt 0 ] && shift
PYTEST_ARGS=("$@")
[ ${#PYTEST_ARGS[@]} -eq 0 ] && PYTEST_ARGS=(tests)

# The real interpreter, not a pyenv shim (a shell script that would get the preload too).
PY="$("${PYTHON:-python3}" -c 'import os, sys; print(sys.executable)')"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/selfattn-sanitize.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

copy_tree() {   # $1: destination
    mkdir -p "$1"
    (cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 -I{} cp --parents {} "$1/")
}

build() {       # $1: folder, $2: CFLAGS, $3: LDFLAGS
    echo "== building in $1 with SELFATTN_CFLAGS='$2' SELFATTN_LDFLAGS='$3'"
    (cd "$1" && SELFATTN_CFLAGS="$2" SELFATTN_LDFLAGS="$3" \
        "$PY" setup.py -q build_ext --inplace --force >"$1/build.log" 2>&1) \
        || { cat "$1/build.log"; echo "build failed"; return 1; }
}

check_import() {  # the tests must exercise the copy just built, not an installed selfattn
    local where
    where="$(cd "$1" && env "${@:2}" "$PY" -P -c 'import sys; sys.path.insert(0, "."); import selfattn._core as c; print(c.__file__)')"
    case "$where" in
        "$1"/*) echo "== testing $where" ;;
        *) echo "selfattn imported from $where, not from the build in $1"; return 1 ;;
    esac
}

run_asan() {
    local dir="$WORK/asan"
    copy_tree "$dir"
    # -fno-wrapv: CPython compiles extensions with -fwrapv, which defines signed overflow and so
    # turns off UBSan's check for it; our size arithmetic must trap instead.
    build "$dir" "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-wrapv -fno-omit-frame-pointer -g -O1" \
                 "-fsanitize=address,undefined"
    local preload
    preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
    local envs=(
        LD_PRELOAD="$preload"
        PYTHONMALLOC=malloc
        ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:abort_on_error=0:exitcode=86:symbolize=1"
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87"
        PYTHONPATH="$dir"
        SELFATTN_FUZZ_EXAMPLES="${SELFATTN_FUZZ_EXAMPLES:-60}"
        SELFATTN_SANITIZED=asan
    )
    check_import "$dir" "${envs[@]}"
    # A test with a fixed time budget that assumes optimised kernels (a -O1 ASan build is several
    # times slower); tests/test_interrupt.py checks the same with calibrated sizes.
    local skip=()
    [ -f "$dir/tests/test_gradients.py" ] && grep -q "def test_ctrl_c_interrupts_a_long_backward" "$dir/tests/test_gradients.py" \
        && skip=(--deselect tests/test_gradients.py::test_ctrl_c_interrupts_a_long_backward)
    local log="$WORK/asan.log"
    set +e
    (cd "$dir" && env "${envs[@]}" "$PY" -m pytest -p no:cacheprovider -q -s "${PYTEST_ARGS[@]}" ${skip[@]+"${skip[@]}"}) 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    set -e
    # A report that did not stop the process (e.g. printed by a child) still fails the run.
    if grep -qE "ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$log"; then
        echo "== sanitizer report found in the output (see above)"
        return 1
    fi
    [ "$status" -eq 0 ] || { echo "== asan/ubsan run failed with status $status"; return "$status"; }
    echo "== asan+ubsan: clean"
}

run_assert() {
    local dir="$WORK/assert"
    copy_tree "$dir"
    build "$dir" "-UNDEBUG -g" ""
    local envs=(PYTHONPATH="$dir" PYTHONDEVMODE=1)
    check_import "$dir" "${envs[@]}"
    (cd "$dir" && env "${envs[@]}" "$PY" -X dev -m pytest -p no:cacheprovider -q "${PYTEST_ARGS[@]}")
    echo "== assertions on (-UNDEBUG), -X dev: clean"
}

run_tsan() {
    # ThreadSanitizer on the extension only (CPython and NumPy are not instrumented; TSan still
    # sees the GIL's pthread locks, so it orders our threads correctly and reports races among the
    # kernels' workers and callers). Runs the thread tests, which call everything concurrently.
    local dir="$WORK/tsan"
    copy_tree "$dir"
    build "$dir" "-fsanitize=thread -fno-omit-frame-pointer -g -O1" "-fsanitize=thread"
    local envs=(
        LD_PRELOAD="$(gcc -print-file-name=libtsan.so)"
        TSAN_OPTIONS="halt_on_error=1:exitcode=66:report_signal_unsafe=0"
        PYTHONPATH="$dir"
        SELFATTN_SANITIZED=tsan
    )
    check_import "$dir" "${envs[@]}"
    local log="$WORK/tsan.log" args=("${PYTEST_ARGS[@]}")
    [ "${args[*]}" = tests ] && args=(tests/test_threads.py)
    set +e
    (cd "$dir" && env "${envs[@]}" "$PY" -m pytest -p no:cacheprovider -q -s "${args[@]}") 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    set -e
    if grep -q "WARNING: ThreadSanitizer" "$log"; then
        echo "== ThreadSanitizer report found in the output (see above)"
        return 1
    fi
    [ "$status" -eq 0 ] || { echo "== tsan run failed with status $status"; return "$status"; }
    echo "== tsan: clean"
}

case "$MODE" in
    asan) run_asan ;;
    assert) run_assert ;;
    tsan) run_tsan ;;
    all) run_asan; run_assert; run_tsan ;;
    *) echo "usage: $0 [asan|assert|tsan|all] [pytest arguments...]"; exit 2 ;;
esac
