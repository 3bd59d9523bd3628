#!/usr/bin/env bash
# The wheel, built once against NumPy 2 (as pyproject.toml requires), must work with the oldest
# NumPy the package declares and with the newest 2.x: each in a fresh venv, with the test suite.
#
#   .ci/numpy_versions.sh [numpy versions...]     (default: the declared floor, and the newest)
#
# A version is X.Y.Z, `floor` (the declared floor) or `newest` (the newest 2.x). .ci/run passes
# `floor` alone: its step 1 has already run the whole suite on the newest NumPy, the one the
# README's Quick start installs.
#
# PYTHON selects the interpreter (default python3), TESTS the test paths (default: tests, the
# suite; .ci/python_versions.sh passes a subset). Needs PyPI. The tests run from a copy of the
# tree without selfattn/, so they import the installed wheel, never the source folder.
source "$(dirname "$0")/lib.sh" numpy

# The floor declared in pyproject.toml's dependencies ("numpy>=X").
FLOOR="$("$PY" - "$ROOT/pyproject.toml" <<'PYEOF'
import re, sys
text = open(sys.argv[1]).read()
deps = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M).group(1)
print(re.search(r'"numpy>=([0-9.]+)"', deps).group(1))
PYEOF
)"
VERSIONS=("$@")
[ ${#VERSIONS[@]} -eq 0 ] && VERSIONS=("$FLOOR" "newest")

log "building the wheel once (build isolation: NumPy 2 from PyPI, as pyproject.toml says)"
copy_tree "$WORK/src"
"$PY" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log"; exit 1; }
WHEEL="$(ls "$WORK"/dist/selfattn-*.whl)"
log "$WHEEL"
# The tests and the files they read (README, docs, examples, pyproject's pytest settings), but
# not the package's source folder: `import selfattn` must find the installed wheel.
copy_tree "$WORK/run" '^selfattn/'

for i in "${!VERSIONS[@]}"; do
    [ "${VERSIONS[$i]}" = floor ] && VERSIONS[$i]="$FLOOR"
done
for version in "${VERSIONS[@]}"; do
    venv="$WORK/venv-$version"
    if [ "$version" = newest ]; then spec="numpy>=2"; else spec="numpy==$version"; fi
    log "$spec"
    new_venv "$venv" >/dev/null
    # the wheel with its test extra, and NumPy pinned in the same resolution
    "$venv/bin/python" -m pip install --quiet "$spec" "selfattn[test] @ file://$WHEEL" \
        >"$WORK/install-$version.log" 2>&1 || { cat "$WORK/install-$version.log"; exit 1; }
    # -P (no working folder on sys.path; Python 3.11+) on top of run/'s having no selfattn/
    safe_path=()
    "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' && safe_path=(-P)
    (cd "$WORK/run" && "$venv/bin/python" "${safe_path[@]}" -c '
import sys, numpy, selfattn, hypothesis
print("   numpy", numpy.__version__, "| selfattn from", selfattn.__file__, "| hypothesis", hypothesis.__version__)
sys.exit(0 if selfattn.__file__.startswith(sys.prefix) else "selfattn is not the installed wheel")')
    # shellcheck disable=SC2086  # TESTS is a list of paths
    (cd "$WORK/run" && "$venv/bin/python" "${safe_path[@]}" -m pytest -p no:cacheprovider -q -m "not slow" ${TESTS:-tests})
done
log "NumPy versions: ${VERSIONS[*]} all pass"
