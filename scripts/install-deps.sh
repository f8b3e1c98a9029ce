#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the benchmarks need,
# and the pinned npm packages of the client tests (tests/clients).
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
  haproxy           # tests/lb: three replicas behind a real load balancer
  chromium          # tests/ui: the web console in a headless browser
  firefox-esr       # tests/ui: the same page in Firefox (WebDriver BiDi)
)
# `scripts/install-deps.sh --bench` adds Debian's python3-torch (~1 GB
# installed): the PyTorch side of `make bench`'s training comparison.
[ "${1:-}" = --bench ] && PKGS+=(python3-torch)

# Node.js runs the client tests (tests/clients: the official npm clients
# against a live attnd) and the OpenAPI lint.  The machine images ship
# NodeSource's nodejs 20 (with npm); only where node is missing is Debian's
# added, whose nodejs is 18 on Debian 12: too old for @redocly/cli (>= 20.19),
# so the npm step below is then skipped with a warning and the `clients` and
# `openapi_lint` tests fail saying why, while the C build and the other tests
# still run.
command -v node >/dev/null 2>&1 || PKGS+=(nodejs npm)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The npm packages of each tests/<suite> with a package-lock.json (the
# official clients, the deploy validators, the browser test), exactly as the
# lockfile pins them (`npm ci`).  Skipped when node_modules already matches:
# a stamp holds the lockfile's hash and the node version it was installed
# with.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
node_ver="$(node -p 'process.versions.node' 2>/dev/null || echo 0)"
IFS=. read -r n_major n_minor _ <<<"$node_ver"
for lock in "$ROOT"/tests/*/package-lock.json; do
  [ -f "$lock" ] || continue
  suite="$(dirname "$lock")"
  if [ "$n_major" -lt 20 ] || { [ "$n_major" -eq 20 ] && [ "$n_minor" -lt 19 ]; }; then
    echo "install-deps: warning: node $node_ver is older than 20.19; ${suite#"$ROOT"/} not" \
         "installed (its tests will fail until a newer node is installed)" >&2
    continue
  fi
  want="$(sha256sum "$lock" | cut -d' ' -f1) node-$node_ver"
  stamp="$suite/node_modules/.attnd-installed"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "install-deps: npm ci in ${suite#"$ROOT"/}"
    (cd "$suite" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$want" >"$stamp"
  fi
done
