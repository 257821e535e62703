#!/usr/bin/env bash
# The two commands of the README:
#   ./run.sh serve [voiceorch serve options]   set up .venv, then start the server with the embedded models
#   ./run.sh test  [pytest options]            set up .venv with the test extras, then run the test suite
# Any other first word runs inside the venv: ./run.sh voiceorch talk --text "hi", ./run.sh python bench/run.py ...
#
# Needs only Python >= 3.11 with pip/venv and a C/C++ compiler with CMake-capable toolchain (pip
# fetches cmake itself). The first set-up builds llama-cpp-python from source (about 4 minutes on
# 2 cores) with portable CPU flags: its default native build crashes on CPUs that report AMX. The
# built wheel is kept in a cache keyed by version and flags, so later set-ups take seconds.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VOICEORCH_VENV:-.venv}
LLAMA_VERSION=0.3.36
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
flags_key=$(printf '%s %s' "$LLAMA_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
WHEELHOUSE=${VOICEORCH_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/voiceorch/wheels-$flags_key}

log() { printf '[run.sh] %s\n' "$*" >&2; }

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
  fi
  local pip="$VENV/bin/python -m pip"
  if ! ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python $LLAMA_VERSION (portable CPU flags; about 4 minutes on 2 cores)"
    mkdir -p "$WHEELHOUSE"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" $pip wheel --quiet --no-deps --no-cache-dir \
      --no-binary llama-cpp-python -w "$WHEELHOUSE" "llama-cpp-python==$LLAMA_VERSION"
  fi
  # Reinstall only when the project's dependencies or the wheel changed.
  local stamp="$VENV/.voiceorch-setup"
  local want
  want=$(cat pyproject.toml "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing voiceorch and its dependencies into $VENV"
    $pip install --quiet --force-reinstall --no-deps "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
    $pip install --quiet --find-links "$WHEELHOUSE" -e ".[test]"
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-}
[ -n "$cmd" ] || { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
shift
setup
export PATH="$PWD/$VENV/bin:$PATH"
case "$cmd" in
  serve) exec voiceorch serve "$@" ;;
  test)  exec python -m pytest "$@" ;;
  setup) exit 0 ;;
  *)     exec "$cmd" "$@" ;;
esac
