#!/usr/bin/env bash
# Download the wheels that bench/gpu_check.sh installs on a GPU machine with no network (Python 3.12, manylinux
# x86-64), pinned to the versions of this checkout's virtualenv, so the GPU runs what the tests here ran.
#
#   bash bench/gpu_wheels.sh [DEST]        # default DEST: .whl (ignored by git)
#
# DEST/core/ holds everything but bitsandbytes, DEST/bnb/ bitsandbytes alone: a device call carries at most 64 MiB,
# and bitsandbytes' wheel alone is about 60 MB, so the 4-bit tests get a call of their own (gpu_check.sh --wheels
# DEST/bnb). Pure-Python projects published only as source (deepspeed, vaderSentiment) are built into wheels here
# (deepspeed with DS_BUILD_OPS=0: its CUDA ops are compiled on first use there, as pip would do).
# Run it where PyPI is reachable; it prints each set's size and fails when one is over the limit.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PY:-.venv/bin/python}
LIMIT_MIB=${LIMIT_MIB:-60}   # 64 MiB a call, less the working tree itself (about 1 MiB)

# Missing from the GPU image (see the device library's package list), or there in another version than ours.
CORE=(trl datasets dill multiprocess deepspeed hjson pydantic pydantic-core annotated-types typing-inspection
      gguf vaderSentiment transformers accelerate peft)
BNB=(bitsandbytes)

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

download() {  # download SET_DIR NAME...
    local dir=$1; shift
    mkdir -p "$dir"
    for name in "$@"; do
        local pinned="$name==$(version "$name")"
        if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
                --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
                --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
                --platform any -d "$dir" "$pinned" 2>/dev/null; then
            echo "building $pinned (published as source only)"
            DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$dir" "$pinned"
        fi
    done
}

check_size() {  # check_size SET_DIR
    local bytes
    bytes=$(du -cb "$1"/*.whl | tail -1 | cut -f1)
    local mib=$(( (bytes + 1048575) / 1048576 ))
    echo "$1: $(ls "$1"/*.whl | wc -l) wheels, $mib MiB (limit $LIMIT_MIB)"
    if (( mib > LIMIT_MIB )); then
        echo "error: $1 is over the $LIMIT_MIB MiB a device call can carry; split it" >&2
        return 1
    fi
}

rm -rf "$DEST/core" "$DEST/bnb"
download "$DEST/core" "${CORE[@]}"
download "$DEST/bnb" "${BNB[@]}"
check_size "$DEST/core"
check_size "$DEST/bnb"
ls -1 "$DEST/core" "$DEST/bnb"
