#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the benchmarks need.
# Idempotent, and quiet when everything is already present.  The Makefile,
# the Dockerfile and .ci/run all call this one script.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config
  libopenblas-dev   # cblas_sgemm
  libjansson-dev    # JSON: requests, responses, safetensors headers
  libuv1-dev        # the server's event loop
  libmicrohttpd-dev # HTTP/1.1
  libcmocka-dev     # unit tests
  curl python3 python3-yaml python3-jsonschema # server tests: HTTP, the OpenAPI schema
  prometheus        # promtool checks the /metrics exposition
  wrk               # server bench: HTTP load (tests/bench/server_bench.py)
  gnuplot-nox       # make cost-report: the attention cost plot
  python3-numpy     # tests/bench/train_torch.py's data generator (the CLI test diffs it)
  bible-kjv         # scripts/train-defaults.sh: the text model's corpus
  clang libclang-rt-14-dev # make fuzz: clang 14 and libFuzzer (libclang_rt.fuzzer-x86_64.a)
)
# `scripts/install-deps.sh --bench` adds Debian's python3-torch (~1 GB
# installed): the PyTorch side of `make bench`'s training comparison.
[ "${1:-}" = --bench ] && PKGS+=(python3-torch)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
