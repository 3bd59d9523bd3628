#!/usr/bin/env bash
# The oldest and newest Python that pyproject.toml's classifiers name, each with the NumPy at the
# same end of its range: 3.9 with the declared floor (1.23.5), 3.13 with the newest 2.x. The
# wheel is built by that Python (.ci/numpy_versions.sh) and a subset of the suite runs against it:
# the files where the Python version shows (the notebook loader and grader, tracebacks and error
# messages, refcounts and leaks, threads), and the values.
#
#   .ci/python_versions.sh
#
# The interpreters: pythonX.Y on PATH, else pyenv's versions/X.Y.* (pyenv's shims answer only for
# the active version). One that is found nowhere fails the run: the README says both were run.
set -euo pipefail
cd "$(dirname "$0")/.."
export TESTS="tests/test_values.py tests/test_errors.py tests/test_load.py tests/test_grade.py
    tests/test_diagnoses.py tests/test_notebook.py tests/test_readme.py tests/test_import_errors.py
    tests/test_threads.py tests/test_leaks.py tests/test_inputs_untouched.py"

find_python() {     # $1: X.Y; prints the interpreter's path, or nothing
    local exe prefix
    if exe="$("python$1" -c 'import sys; print(sys.executable)' 2>/dev/null)"; then
        echo "$exe"
        return
    fi
    command -v pyenv >/dev/null || return 0
    for prefix in "$(pyenv root)/versions/$1".*; do
        if [ -x "$prefix/bin/python$1" ]; then
            echo "$prefix/bin/python$1"
            return
        fi
    done
}

for pair in "3.9 floor" "3.13 newest"; do
    read -r version numpy <<<"$pair"
    python="$(find_python "$version")"
    if [ -z "$python" ]; then
        echo "Python $version: not found (neither python$version nor pyenv's versions/$version.*)"
        exit 1
    fi
    echo "== Python $version ($python) with NumPy's $numpy"
    PYTHON="$python" .ci/numpy_versions.sh "$numpy"
done
