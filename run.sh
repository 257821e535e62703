#!/usr/bin/env bash
# The two commands of the README:
#   ./run.sh serve [voiceorch serve options]   set up .venv, then start the server with the embedded models
#   ./run.sh test  [pytest options]            set up .venv with the test extras (and Debian's chromium and
#                                              nginx-light, when missing and apt-get may), then run the test suite
# Any other first word runs inside the venv: ./run.sh voiceorch talk --text "hi", ./run.sh python bench/run.py ...
#   ./run.sh lock [uv lock options]            re-resolve uv.lock after editing pyproject.toml's dependencies
#
# Needs only Python >= 3.11 with pip/venv and a C/C++ compiler with CMake-capable toolchain (pip
# fetches cmake itself); PYTHON=python3.13 picks the interpreter, VOICEORCH_VENV another venv.
#
# What is installed is exactly uv.lock: every package's version and hashes, one universal
# resolution for every Python >= 3.11 (CI tests it on 3.11 and 3.13). run.sh installs a pinned uv
# (from PyPI, into ~/.cache/voiceorch/uv-VERSION) and runs `uv sync --locked`, which refuses a
# lock that no longer matches pyproject.toml. To change a dependency: edit pyproject.toml, run
# `./run.sh lock` (keeps every other pin), and commit both files; `./run.sh lock --upgrade-package
# NAME` moves one package, `./run.sh lock --upgrade` everything. The next set-up of any venv
# notices the new lock and installs it.
#
# llama-cpp-python is the one package not installed from PyPI as it is: its version and source
# hash come from uv.lock, but it is built here from that source (about 4 minutes on 2 cores) with
# portable CPU flags, since its default native build crashes on CPUs that report AMX. The wheel is
# kept in a cache keyed by version and flags, so later set-ups take seconds; it is tagged
# py3-none (a ctypes library, no CPython extension), so one build serves every Python.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VOICEORCH_VENV:-.venv}
case $VENV in /*) ;; *) VENV=$PWD/$VENV ;; esac
UV_VERSION=0.13.8
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/voiceorch
UV_DIR=$CACHE/uv-$UV_VERSION
UV=$UV_DIR/bin/uv
# uv finds interpreters on its own: never let it download one (the venv's is the one to use).
export UV_PYTHON_DOWNLOADS=never

log() { printf '[run.sh] %s\n' "$*" >&2; }

# "VERSION SHA256" of llama-cpp-python's source in uv.lock.
llama_from_lock() {
  "$PYTHON" - <<'EOF'
import tomllib
with open("uv.lock", "rb") as f:
    (pkg,) = [p for p in tomllib.load(f)["package"] if p["name"] == "llama-cpp-python"]
print(pkg["version"], pkg["sdist"]["hash"].removeprefix("sha256:"))
EOF
}

ensure_uv() {
  if [ ! -x "$UV" ] || [ "$("$UV" --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    log "installing uv $UV_VERSION into $UV_DIR"
    rm -rf "$UV_DIR"
    "$PYTHON" -m venv "$UV_DIR"
    "$UV_DIR/bin/python" -m pip install --quiet "uv==$UV_VERSION"
  fi
}

setup() {
  ensure_uv
  local llama_version llama_hash
  read -r llama_version llama_hash < <(llama_from_lock)
  local flags_key
  flags_key=$(printf '%s %s' "$llama_version" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
  local wheelhouse=${VOICEORCH_WHEELHOUSE:-$CACHE/wheels-$flags_key}
  if ! ls "$wheelhouse"/llama_cpp_python-"$llama_version"-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python $llama_version (portable CPU flags; about 4 minutes on 2 cores)"
    mkdir -p "$wheelhouse"
    local req
    req=$(mktemp)
    echo "llama-cpp-python==$llama_version --hash=sha256:$llama_hash" > "$req"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$UV_DIR/bin/python" -m pip wheel --quiet --no-deps --no-cache-dir \
      --no-binary llama-cpp-python --require-hashes -w "$wheelhouse" -r "$req"
    rm -f "$req"
  fi
  local wheel
  wheel=$(ls "$wheelhouse"/llama_cpp_python-"$llama_version"-*.whl | head -n 1)
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
  fi
  # Reinstall only when the lock, the project's metadata, the wheel, uv or the interpreter changed.
  local stamp="$VENV/.voiceorch-setup"
  local want
  want=$({ cat uv.lock pyproject.toml "$wheel"; echo "$UV_VERSION"; "$VENV/bin/python" -VV; } | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing voiceorch and the locked dependencies (uv.lock) into $VENV"
    rm -f "$stamp"
    if ! UV_PROJECT_ENVIRONMENT="$VENV" "$UV" sync --quiet --locked --extra test \
      --no-install-package llama-cpp-python; then
      log "uv sync failed; if pyproject.toml's dependencies changed, run ./run.sh lock and commit uv.lock"
      exit 1
    fi
    "$UV" pip install --quiet --python "$VENV/bin/python" --reinstall --no-deps "$wheel"
    "$UV" pip check --quiet --python "$VENV/bin/python"
    # The end-of-turn model (Smart Turn v3.2, BSD-2-Clause): only its ONNX file, taken from the
    # pipecat-ai wheel with its SHA-256 checked, into the venv (none of pipecat's dependencies).
    VOICEORCH_PIP_PYTHON="$UV_DIR/bin/python" "$VENV/bin/python" -m voiceorch.engines.end_of_turn fetch >/dev/null
    echo "$want" > "$stamp"
  fi
}

# The system tools some tests drive: Debian's chromium (the page in a real headless browser) and
# nginx-light (two instances behind a load balancer). Installed with apt-get when missing and
# this user may (root, or sudo without a password); otherwise those tests are skipped, unless
# VOICEORCH_REQUIRE_BROWSER / VOICEORCH_REQUIRE_NGINX make a missing one a failure (as in CI).
ensure_test_tools() {
  local missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  [ ${#missing[@]} -eq 0 ] && return 0
  local as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then as_root=(sudo -n); else as_root=(none); fi
  fi
  if ! command -v apt-get >/dev/null || [ "${as_root[*]}" = none ]; then
    log "not installing ${missing[*]} (needs apt-get as root): the tests that use them are skipped"
    return 0
  fi
  log "installing Debian's ${missing[*]} for the browser and load-balancer tests"
  if ! { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq "${missing[@]}"; } >/dev/null; then
    log "could not install ${missing[*]}: the tests that use them are skipped"
  fi
}

cmd=${1:-}
[ -n "$cmd" ] || { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
shift
if [ "$cmd" = lock ]; then
  ensure_uv
  exec "$UV" lock --python "$PYTHON" "$@"
fi
setup
export PATH="$VENV/bin:$PATH"
case "$cmd" in
  serve) exec voiceorch serve "$@" ;;
  test)  ensure_test_tools; exec python -m pytest "$@" ;;
  setup) exit 0 ;;
  *)     exec "$cmd" "$@" ;;
esac
