#!/usr/bin/env bash
# The extension built with clang instead of gcc, in a fresh virtual environment, and the whole
# test suite run against it. (Apple's compiler is clang: this is the nearest check of a Mac build
# that Linux allows.) Installs Debian's clang when it is missing.
source "$(dirname "$0")/lib.sh" clang

if ! command -v clang >/dev/null; then
    echo "installing clang (Debian package)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >"$WORK/apt.log" 2>&1 \
        || { tail -20 "$WORK/apt.log"; exit 1; }
fi
clang --version | head -1

# A copy of the tree, with the build/ folder a gcc `pip install .` left in the tree (step 1's),
# as a user's folder has it when they install again with CC=clang: setup.py must rebuild, not
# take gcc's objects as up to date, nor install a module that is gone from the tree.
copy_tree "$WORK/src"
if [[ -d "$ROOT/build" ]]; then
    cp -r "$ROOT/build" "$WORK/src/build"
    for lib in "$WORK"/src/build/lib.*/selfattn; do
        if [[ -d "$lib" ]]; then echo "GONE = 1" > "$lib/_removed_module.py"; fi
    done
fi
new_venv "$WORK/venv"
log "building with clang"
(cd "$WORK/src" && CC=clang "$WORK/venv/bin/python" -m pip install -q ".[test]" >"$WORK/build.log" 2>&1) \
    || { tail -40 "$WORK/build.log"; exit 1; }
so=$("$WORK/venv/bin/python" -c 'import selfattn._core as c; print(c.__file__)')
grep -q "clang version" "$so" || { echo "clang.sh: the extension was not built by clang"; exit 1; }
if "$WORK/venv/bin/python" -c 'import selfattn._removed_module' 2>/dev/null; then
    echo "clang.sh: a module removed from the tree was installed from an earlier build/"; exit 1
fi
cd "$WORK/src"
# pytest itself, not python -m pytest: the tests import the installed build, not this copy
"$WORK/venv/bin/pytest" -q -p no:cacheprovider
