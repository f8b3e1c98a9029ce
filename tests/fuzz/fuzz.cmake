# tests/fuzz/fuzz.cmake — the fuzz targets, included by CMakeLists.txt.
#
# Each tests/fuzz/fuzz_<name>.c defines LLVMFuzzerTestOneInput and is built
# one of two ways:
#   -DATTND_FUZZ=ON (clang): fuzz_<name>, a libFuzzer binary, with the
#     core and the server code it calls instrumented for coverage and
#     built with ASan + UBSan (make fuzz: build-fuzz/, tests/fuzz/run.sh);
#   an ordinary build with testing on (gcc): fuzz_<name>_replay, the same
#     file with replay.c's main, registered with ctest (label fuzz) to
#     replay tests/fuzz/corpus/<name> and tests/fuzz/regressions/<name>,
#     so make test and make asan keep every crash found fixed.
option(ATTND_FUZZ "Build the libFuzzer targets of tests/fuzz (clang)" OFF)
set(ATTND_FUZZ_TARGETS
  safetensors llama2c tokenizer_bin byte_encode bpe_encode utf8_stream
  json_guard train_params generate recall train_record openai tgi)
set(ATTND_FUZZ_DIR ${CMAKE_SOURCE_DIR}/tests/fuzz)

if(ATTND_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "ATTND_FUZZ needs clang (libFuzzer): -DCMAKE_C_COMPILER=clang")
  endif()
  # Everything built here (the tfm core included) gets coverage
  # instrumentation and the sanitizers; the targets add libFuzzer's main.
  target_compile_options(attnd_flags INTERFACE
    -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
    -fno-omit-frame-pointer -g)
  target_link_options(attnd_flags INTERFACE -fsanitize=address,undefined)
endif()

if(ATTND_FUZZ OR BUILD_TESTING)
  # The server code the targets reach: validators, records, text; no HTTP
  # and no event loop (engine.c only for srv_job, stats/metrics for the
  # counters train_record.c links to).
  add_library(attnd_fuzz_srv STATIC EXCLUDE_FROM_ALL
    server/text.c server/json_guard.c server/error.c server/train_params.c
    server/train_record.c server/generate_parse.c server/recall_parse.c server/engine.c server/engine_ctx.c server/job.c server/format_attnd.c
    server/openai_parse.c server/openai_format.c server/tgi_parse.c server/tgi_format.c
    server/models.c server/models_scan.c server/config.c server/datadir.c server/stats.c server/metrics.c)
  target_include_directories(attnd_fuzz_srv PUBLIC ${CMAKE_SOURCE_DIR}/server)
  target_compile_definitions(attnd_fuzz_srv PRIVATE
    ATTND_SHARE_DIR="${CMAKE_INSTALL_FULL_DATADIR}/attnd")
  target_link_libraries(attnd_fuzz_srv PUBLIC tfm PkgConfig::JANSSON PkgConfig::LIBUV
                                              Threads::Threads attnd_flags)
  set(fuzz_all "")
  foreach(t ${ATTND_FUZZ_TARGETS})
    if(ATTND_FUZZ)
      set(exe fuzz_${t})
      add_executable(${exe} EXCLUDE_FROM_ALL ${ATTND_FUZZ_DIR}/fuzz_${t}.c)
      target_link_options(${exe} PRIVATE -fsanitize=fuzzer)
    else()
      set(exe fuzz_${t}_replay)
      add_executable(${exe} ${ATTND_FUZZ_DIR}/fuzz_${t}.c ${ATTND_FUZZ_DIR}/replay.c)
      add_test(NAME fuzz_${t} COMMAND ${exe} ${ATTND_FUZZ_DIR}/corpus/${t}
                                             ${ATTND_FUZZ_DIR}/regressions/${t})
      set_tests_properties(fuzz_${t} PROPERTIES TIMEOUT 300 LABELS fuzz)
    endif()
    target_link_libraries(${exe} PRIVATE attnd_fuzz_srv attnd_flags)
    set_target_properties(${exe} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
    list(APPEND fuzz_all ${exe})
  endforeach()
  if(ATTND_FUZZ)
    add_custom_target(fuzz_targets DEPENDS ${fuzz_all})
  endif()
endif()
