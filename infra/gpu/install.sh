#!/usr/bin/env bash
# The GPU extra (vLLM 0.20.0 and the wheels in requirements.txt) for a CUDA machine that has torch
# 2.11.0+cu130, peft, numpy, pytest and pytest-timeout but no package index; then flywheel's GPU tests.
#
#   infra/gpu/install.sh download [WHEELS]        on a machine with an index: fetch the CPython 3.12
#                                                 manylinux x86_64 wheels into WHEELS (about 455 MB)
#   infra/gpu/install.sh install  [WHEELS]        on the GPU machine: install them with --no-deps into
#                                                 $FLYWHEEL_GPU_SITE beside the machine's own torch,
#                                                 then check what imports from where
#   infra/gpu/install.sh test     [WHEELS] [ARGS] install, then run the GPU tests and the backend
#                                                 contract suite (vLLM included); ARGS go to pytest
#   infra/gpu/install.sh bench    [WHEELS] SCRIPT [ARGS]
#                                                 install, then run tests/bench/SCRIPT with ARGS on the GPU
#                                                 (bench_gpu_serving.py, bench_gpu_quantized.py,
#                                                 bench_training.py, bench_tune.py)
#
# WHEELS defaults to infra/gpu/wheels (git-ignored), FLYWHEEL_GPU_SITE to .flywheel/gpu-site, PYTHON to
# python3 (the interpreter that holds the machine's torch). Run from anywhere; paths are the repo's.
# To use the extra afterwards: export PYTHONPATH="$FLYWHEEL_GPU_SITE:<repo>" and set
# FLYWHEEL_GATEWAY__BACKEND=vllm (README: "GPU serving with vLLM").
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
SITE="${FLYWHEEL_GPU_SITE:-$REPO/.flywheel/gpu-site}"
MODE="${1:-}"
WHEELS="${2:-$HERE/wheels}"

# pip matches manylinux tags exactly: name every glibc level the wheels above are built for.
PLATFORMS=(manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64
  manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

download() {
  local platform_args=()
  for platform in "${PLATFORMS[@]}"; do platform_args+=(--platform "$platform"); done
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platform_args[@]}" -r "$HERE/requirements.txt" -d "$WHEELS"
}

install() {
  local wheels=("$WHEELS"/*.whl)
  [[ -e "${wheels[0]}" ]] || { echo "no wheels in $WHEELS: run '$0 download' where an index is reachable" >&2; exit 1; }
  # the same wheels installed before: nothing to do (the marker lists them)
  if [[ -f "$SITE/.installed" ]] && [[ "$(cat "$SITE/.installed")" == "$(basename -a "${wheels[@]}")" ]]; then
    check
    return
  fi
  mkdir -p "$SITE"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$SITE" "${wheels[@]}"
  basename -a "${wheels[@]}" >"$SITE/.installed"
  check
}

# What imports from where: vLLM and our packages from the extra, torch from the machine.
check() {
  PYTHONPATH="$SITE:$REPO" "$PYTHON" - "$SITE" <<'PY'
import sys
from pathlib import Path

import torch

site = Path(sys.argv[1]).resolve()
assert not Path(torch.__file__).resolve().is_relative_to(site), "torch must stay the machine's own"
import httptools  # noqa: F401  uvicorn's HTTP parser and event loop, picked up by the gateway
import transformers
import uvloop  # noqa: F401
import vllm
from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401

from feedback.content.classifier import OffensiveLanguageClassifier
from services.cli import main  # noqa: F401  the command line imports every command's module
from services.gateway import vllm_backend

OffensiveLanguageClassifier(0.99)  # the content filter's model unpickles under this scikit-learn

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPUs), "
      f"transformers {transformers.__version__}, vllm {vllm.__version__}; backend ready: {vllm_backend.available()}")
PY
}

run_tests() {
  shift $(( $# < 2 ? $# : 2 ))
  cd "$REPO"
  # Offline: no model hub, no usage reports; the engine core starts in a spawned process.
  PYTHONPATH="$SITE:$REPO" HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    "$PYTHON" -m pytest tests/gpu tests/services/gateway/test_backend_contract.py -ra "$@"
}

run_bench() {
  shift $(( $# < 2 ? $# : 2 ))
  [[ $# -ge 1 ]] || { echo "name the benchmark: $0 bench WHEELS SCRIPT [ARGS]" >&2; exit 2; }
  local script="$1"
  shift
  cd "$REPO"
  PYTHONPATH="$SITE:$REPO:$REPO/tests:$REPO/tests/bench" HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    PYTHONUNBUFFERED=1 "$PYTHON" "tests/bench/$script" "$@"
}

case "$MODE" in
  download) download ;;
  install) install ;;
  test) install && run_tests "$@" ;;
  bench) install && run_bench "$@" ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
