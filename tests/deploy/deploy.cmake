# tests/deploy: offline checks of docker/ and deploy/k8s/ (validate.mjs;
# its npm packages come from `npm ci` here, as scripts/install-deps.sh
# runs for every tests/*/package-lock.json). Included by CMakeLists.txt
# inside if(BUILD_TESTING).
add_test(NAME deploy_validate COMMAND node ${CMAKE_SOURCE_DIR}/tests/deploy/validate.mjs)
set_tests_properties(deploy_validate PROPERTIES TIMEOUT 120 LABELS unit)
