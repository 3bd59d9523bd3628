#!/usr/bin/env bash
# valgrind memcheck over a small suite, failing only on errors with selfattn in their stack.
#
#   .ci/valgrind.sh [pytest arguments...]
#
# CPython itself reports hundreds of (benign) errors under memcheck that no stock suppression file
# covers, so the gate is: every error whose stack holds a frame of selfattn's extension (its .so
# or a csrc/ file) fails the run; the others are counted and ignored. The extension is built with
# -g -O1 in a throwaway copy of the tree; the interpreter is the real one (sys.executable
# resolved, not a pyenv shim) with PYTHONMALLOC=malloc so memcheck sees every allocation.
# valgrind computes long double in 64 bits, so the fuzz tests' long-double oracle is not exact
# under it: they check outcomes (result or clean error) but not values here (SELFATTN_SANITIZED).
source "$(dirname "$0")/lib.sh" valgrind
command -v valgrind >/dev/null || { echo "valgrind is not installed"; exit 1; }

PYTEST_ARGS=("$@")
if [ ${#PYTEST_ARGS[@]} -eq 0 ]; then
    # A few minutes under memcheck: every public function on its success and error paths, the
    # size guards, a little fuzzing, and concurrent calls.
    # (Races are ThreadSanitizer's business: .ci/sanitize.sh tsan.)
    PYTEST_ARGS=(tests/test_sizes.py tests/test_fuzz.py tests/test_leaks.py
                 -k "not rss and not plateau")
fi

copy_tree "$WORK/src"
build_in_place "$WORK/src" "-g -O1 -fno-omit-frame-pointer"

log "valgrind memcheck: pytest ${PYTEST_ARGS[*]}"
set +e
(cd "$WORK/src" && PYTHONMALLOC=malloc PYTHONPATH="$WORK/src" SELFATTN_SANITIZED=valgrind \
    SELFATTN_FUZZ_EXAMPLES="${SELFATTN_FUZZ_EXAMPLES:-6}" \
    valgrind --tool=memcheck --xml=yes --xml-file="$WORK/memcheck.%p.xml" --num-callers=40 \
        --track-origins=no --error-exitcode=0 \
        "$PY" -m pytest -p no:cacheprovider -q "${PYTEST_ARGS[@]}")
status=$?
set -e

"$PY" - "$WORK" <<'PYEOF'
import glob, sys
import xml.etree.ElementTree as ET

ours, others = [], 0
for path in glob.glob(sys.argv[1] + "/memcheck.*.xml"):
    text = open(path, errors="replace").read()
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        # A process forked for exec (e.g. `uname` run by the platform module) leaves a file that
        # stops at the exec; it ran none of our code. Anything with errors in it is read anyway.
        if "<error>" not in text:
            continue
        root = ET.fromstring(text[: text.rindex("</error>") + len("</error>")] + "</valgrindoutput>")
    for error in root.iter("error"):
        frames = error.iter("frame")
        def mine(f):
            obj = f.findtext("obj") or ""
            where = (f.findtext("dir") or "") + "/" + (f.findtext("file") or "")
            # the extension itself (its path, not a folder that happens to be named selfattn-...)
            return obj.endswith(".so") and "/selfattn/_core." in obj or "/csrc/" in where
        stack = list(error.iter("frame"))
        kind = error.findtext("kind") or ""
        # Objects alive at exit: CPython never frees them all, so only memory that nothing points
        # to any more (definitely lost, e.g. a leaked reference or buffer) counts as our leak.
        if kind.startswith("Leak_") and kind != "Leak_DefinitelyLost":
            others += 1
            continue
        if any(mine(f) for f in stack):
            what = error.findtext("kind"), (error.findtext("what") or error.findtext("xwhat/text"))
            lines = [f"  {f.findtext('fn')} ({f.findtext('file') or f.findtext('obj')}:{f.findtext('line') or ''})"
                     for f in stack[:12]]
            ours.append(f"{what[0]}: {what[1]}\n" + "\n".join(lines))
        else:
            others += 1
print(f"== memcheck: {len(ours)} error(s) in selfattn's frames, {others} elsewhere (CPython, NumPy; ignored)")
for e in ours:
    print(e)
sys.exit(1 if ours else 0)
PYEOF
[ "$status" -eq 0 ] || { log "the suite failed under valgrind (status $status)"; exit "$status"; }
log "valgrind: clean"
