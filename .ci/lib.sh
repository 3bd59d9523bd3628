# Setup shared by the CI scripts; each one sources it first:   source "$(dirname "$0")/lib.sh" NAME
#
# Sets ROOT (the checkout), PY (the real interpreter: $PYTHON or python3, resolved through
# sys.executable so that a pyenv shim, a shell script, never gets a sanitizer preload) and WORK (a
# temporary folder named after NAME, removed when the script exits), and defines the helpers below.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/selfattn-${1:-ci}.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

step() {        # a numbered step of .ci/run, with the time
    printf '\n==== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"
}

log() {         # a line of a script's own progress
    echo "== $*"
}

copy_tree() {   # $1: destination; $2 (optional): a pattern of paths to leave out (grep -z)
    # the tree as git sees it: tracked and untracked files, not the ignored ones (builds, venvs)
    mkdir -p "$1"
    (cd "$ROOT" && git ls-files -co --exclude-standard -z | grep -zv "${2:-^$}" \
        | xargs -0 -I{} cp --parents {} "$1/")
}

build_in_place() {  # $1: a copy of the tree, $2: SELFATTN_CFLAGS, $3: SELFATTN_LDFLAGS
    log "building in $1 with SELFATTN_CFLAGS='$2' SELFATTN_LDFLAGS='${3:-}'"
    (cd "$1" && SELFATTN_CFLAGS="$2" SELFATTN_LDFLAGS="${3:-}" \
        "$PY" setup.py -q build_ext --inplace --force >"$1/build.log" 2>&1) \
        || { cat "$1/build.log"; echo "build failed"; return 1; }
}

new_venv() {    # $1: folder; a fresh virtual environment of $PY with a current pip, and the
    # setuptools that build_in_place's `setup.py build_ext` needs (77+: setup.py says why)
    "$PY" -m venv "$1"
    "$1/bin/python" -m pip install -q --upgrade pip "setuptools>=77"
}
