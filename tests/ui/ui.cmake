# The web console in a real browser: Debian's chromium (and Firefox ESR when
# present) driven headless by the pinned puppeteer-core (tests/ui, installed
# by scripts/install-deps.sh), against a live attnd.  Exit 77 = skipped (no
# chromium).  Screenshots of each view go to <build>/ui-screenshots.
add_test(NAME ui_browser COMMAND node ${CMAKE_SOURCE_DIR}/tests/ui/console.test.mjs)
set_tests_properties(ui_browser PROPERTIES TIMEOUT 300 LABELS ui RUN_SERIAL ON SKIP_RETURN_CODE 77
  ENVIRONMENT "ATTND=$<TARGET_FILE:attnd>;ATTN=$<TARGET_FILE:attn>;ATTND_UI_ARTIFACTS=${CMAKE_BINARY_DIR}/ui-screenshots")
