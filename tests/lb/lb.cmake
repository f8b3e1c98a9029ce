# tests/lb: three real attnd replicas sharing one trained-models dir behind
# HAProxy (round-robin, /readyz health checks, retries): spread, a trained
# model served by all, SIGTERM drain and kill -9 under load.  Exit 77 =
# skipped (no haproxy; scripts/install-deps.sh installs it).
# tests/lb/rolling_restart.py (the measurements in tests/lb/README.md) is
# not registered: it is run by hand.
add_test(NAME lb COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/lb/test_lb.py
         --attnd $<TARGET_FILE:attnd> --attn $<TARGET_FILE:attn>)
set_tests_properties(lb PROPERTIES TIMEOUT 600 LABELS lb RUN_SERIAL ON SKIP_RETURN_CODE 77)
