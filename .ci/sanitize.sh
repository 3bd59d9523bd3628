#!/usr/bin/env bash
# Sanitizer and assertion builds of selfattn's C extension, each running the whole test suite.
#
#   .ci/sanitize.sh [asan|assert|tsan|all] [pytest arguments...]      (default: all, tests/)
#
# asan:   the extension built with -fsanitize=address,undefined -fno-sanitize-recover=all and
#         -UNDEBUG (assert() live too), loaded by the normal interpreter with the sanitizer
#         runtimes preloaded, PYTHONMALLOC=malloc (so ASan sees every Python allocation), leak
#         detection off (CPython itself "leaks" at exit). Any ASan or UBSan report or failed
#         assertion ends the run with a nonzero status.
# assert: the extension built with -UNDEBUG only (optimised as released, assert() live), the
#         suite under python -X dev. Not part of `all`: the asan build has the assertions live,
#         and .ci/run's step 1 runs the suite under -X dev, so a whole-suite pass of its own only
#         repeated them (8 minutes of CI on a 2-core machine).
# tsan:   the extension built with -fsanitize=thread, libtsan preloaded, the thread tests
#         (tests/test_threads.py, and test_thread_count.py's public calls, unless pytest arguments
#         are given); any report fails.
#
# Each build happens in a throwaway copy of the tree (git's tracked and untracked, not ignored,
# files), in place there, and the tests import that copy; the checkout is never touched.
# PYTHON selects the interpreter (default: python3); its numpy, pytest and hypothesis are used.
#
# Tests marked `timing` (wall-clock bounds: interrupt latency, fixed budgets) scale their bounds
# for an instrumented build (conftest.py's time_scale, from SELFATTN_SANITIZED). The asan run
# selects them with -m: the suite without them, then they alone, so that a missed bound is told
# apart from a sanitizer report.
source "$(dirname "$0")/lib.sh" sanitize

MODE="${1:-all}"
[ $# -gt 0 ] && shift
PYTEST_ARGS=("$@")

check_import() {  # the tests must exercise the copy just built, not an installed selfattn
    local where
    where="$(cd "$1" && env "${@:2}" "$PY" -P -c 'import sys; sys.path.insert(0, "."); import selfattn._core as c; print(c.__file__)')"
    case "$where" in
        "$1"/*) log "testing $where" ;;
        *) echo "selfattn imported from $where, not from the build in $1"; return 1 ;;
    esac
}

sanitized_pytest() {  # $1: folder, $2: log file, then env assignments, --, pytest arguments
    local dir="$1" log="$2" envs=()
    shift 2
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    set +e
    (cd "$dir" && env "${envs[@]}" "$PY" -m pytest -p no:cacheprovider -q -s "$@") 2>&1 | tee -a "$log"
    local status=${PIPESTATUS[0]}
    set -e
    return "$status"
}

run_asan() {
    local dir="$WORK/asan"
    copy_tree "$dir"
    # -fno-wrapv: CPython compiles extensions with -fwrapv, which defines signed overflow and so
    # turns off UBSan's check for it; our size arithmetic must trap instead.
    build_in_place "$dir" "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-wrapv -fno-omit-frame-pointer -g -O1 -UNDEBUG" \
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
    local log="$WORK/asan.log" status=0
    if [ ${#PYTEST_ARGS[@]} -gt 0 ]; then
        sanitized_pytest "$dir" "$log" "${envs[@]}" -- "${PYTEST_ARGS[@]}" || status=$?
    else
        sanitized_pytest "$dir" "$log" "${envs[@]}" -- -m "not timing" tests || status=$?
        log "asan: the timing tests, their bounds scaled for this build"
        [ "$status" -ne 0 ] || sanitized_pytest "$dir" "$log" "${envs[@]}" -- -m timing tests || status=$?
    fi
    # A report that did not stop the process (e.g. printed by a child) still fails the run.
    if grep -qE "ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$log"; then
        log "sanitizer report found in the output (see above)"
        return 1
    fi
    [ "$status" -eq 0 ] || { log "asan/ubsan run failed with status $status"; return "$status"; }
    log "asan+ubsan, assertions on: clean"
}

run_assert() {
    local dir="$WORK/assert"
    copy_tree "$dir"
    build_in_place "$dir" "-UNDEBUG -g" ""
    local envs=(PYTHONPATH="$dir" PYTHONDEVMODE=1)
    check_import "$dir" "${envs[@]}"
    (cd "$dir" && env "${envs[@]}" "$PY" -X dev -m pytest -p no:cacheprovider -q ${PYTEST_ARGS[@]+"${PYTEST_ARGS[@]}"})
    log "assertions on (-UNDEBUG), -X dev: clean"
}

run_tsan() {
    # ThreadSanitizer on the extension only (CPython and NumPy are not instrumented; TSan still
    # sees the GIL's pthread locks, so it orders our threads correctly and reports races among the
    # kernels' workers and callers). Runs the thread tests, which call everything concurrently.
    local dir="$WORK/tsan"
    copy_tree "$dir"
    build_in_place "$dir" "-fsanitize=thread -fno-omit-frame-pointer -g -O1" "-fsanitize=thread"
    local envs=(
        LD_PRELOAD="$(gcc -print-file-name=libtsan.so)"
        TSAN_OPTIONS="halt_on_error=1:exitcode=66:report_signal_unsafe=0"
        PYTHONPATH="$dir"
        SELFATTN_SANITIZED=tsan
    )
    check_import "$dir" "${envs[@]}"
    local log="$WORK/tsan.log" status=0 args=("${PYTEST_ARGS[@]}")
    # the concurrent calls, and every public call on the pool with each thread count
    [ ${#args[@]} -gt 0 ] || args=(tests/test_threads.py tests/test_thread_count.py -k "not core_kernel")
    sanitized_pytest "$dir" "$log" "${envs[@]}" -- "${args[@]}" || status=$?
    if grep -q "WARNING: ThreadSanitizer" "$log"; then
        log "ThreadSanitizer report found in the output (see above)"
        return 1
    fi
    [ "$status" -eq 0 ] || { log "tsan run failed with status $status"; return "$status"; }
    log "tsan: clean"
}

case "$MODE" in
    asan) run_asan ;;
    assert) run_assert ;;
    tsan) run_tsan ;;
    all) run_asan; run_tsan ;;
    *) echo "usage: $0 [asan|assert|tsan|all] [pytest arguments...]"; exit 2 ;;
esac
