# Thin wrapper over cmake.  `make run` installs, builds and serves the
# bundled models; `make test` installs, builds and runs every test.
BUILD ?= build
JOBS  ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release

# The default model make run serves until trained ones land: seeded random
# weights, byte-level tokenizer, made here rather than committed.
DEFAULT_MODEL := models/tiny-random.safetensors
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: all deps build test bench cost-report run clean asan tsan soak fuzz

all: build

deps:
	@scripts/install-deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

$(DEFAULT_MODEL): | build
	$(BUILD)/attn random --out $@ --dim 192 --hidden 512 --layers 4 --heads 6 --kv-heads 3 \
	  --vocab 258 --seq-len 1024 --seed 1

run: build $(DEFAULT_MODEL)
	$(BUILD)/attnd --host $(HOST) --port $(PORT) --models-dir models

bench: build
	scripts/bench.sh $(BUILD)

# Attention cost against the context length (attn cost): CSV, markdown and
# a gnuplot PNG in $(BUILD)/cost.
cost-report: build
	scripts/cost-report.sh $(BUILD)

# Unit, CLI and live-server tests under AddressSanitizer + UBSan, in their
# own build directory.
asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DATTND_SANITIZE=ON
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(JOBS) -LE "^(ui|lb)$$"

# The live-server tests and the web console's browser test under
# ThreadSanitizer (the engine, HTTP and loop threads share jobs).
tsan: deps
	cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTND_TSAN=ON
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure -L "^(server|ui)$$"

# The soak and load test (tests/soak/soak.py): one live attnd under a fixed,
# seeded mix of good, bad and slow clients for SOAK_SECONDS; fails on a
# crash, a 5xx but 503, a wrong answer, a leak of memory or descriptors, or
# /metrics counts that differ from the client's.
SOAK_SECONDS ?= 600
soak: build
	/usr/bin/python3 tests/soak/soak.py --attnd $(BUILD)/attnd --attn $(BUILD)/attn --seconds $(SOAK_SECONDS)

# libFuzzer (clang) on every target of tests/fuzz for FUZZ_SECONDS each,
# ASan + UBSan, in build-fuzz: the regressions and seed corpus replayed
# first, then new inputs into build-fuzz/fuzz-work; a crash fails and
# prints the input's path (tests/fuzz/run.sh).
FUZZ_SECONDS ?= 60
fuzz: deps
	cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DATTND_FUZZ=ON -DBUILD_TESTING=OFF
	cmake --build build-fuzz -j $(JOBS) --target fuzz_targets
	tests/fuzz/run.sh build-fuzz $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) build-asan build-tsan build-fuzz
