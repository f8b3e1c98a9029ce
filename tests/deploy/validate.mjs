// validate.mjs — offline checks of docker/ and deploy/k8s/ (no Docker
// engine, no cluster): run by ctest as deploy_validate (deploy.cmake).
//
//   node tests/deploy/validate.mjs          (after npm ci in tests/deploy)
//
// 1. Every check of checks.mjs on the repository's files: the Dockerfile
//    lint, the YAML of compose and the manifests, each Kubernetes object
//    against its API schema, and the cross-references to the C sources
//    (ATTND_* variables, metric names, routes, attn's subcommands and
//    flags, grace periods, security, the shared volume, the keys).
// 2. A negative self-check: each mutation below breaks one thing in an
//    in-memory copy of the files, and the check it names must report it
//    (and not by throwing). Every check has at least one mutation, so none
//    can pass vacuously.
// Not checked: unknown fields. kubernetes-models' schemas, like the API
// server without strict field validation, accept a misspelt key; use
// `kubectl apply --dry-run=server --validate=strict` against a cluster.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { CHECKS, runAll } from "./checks.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const SOURCES = ["docker/Dockerfile", "docker/compose.yaml", "docker/prometheus-compose.yml",
  "server/config.c", "server/stats.c", "server/metrics.c", "server/http.c", "tools/attn.c", "tools/train.c"];

function loadWorld() {
  const w = new Map();
  for (const p of SOURCES) w.set(p, fs.readFileSync(path.join(ROOT, p), "utf8"));
  for (const name of fs.readdirSync(path.join(ROOT, "deploy/k8s")).sort())
    if (/\.ya?ml$/.test(name)) w.set(`deploy/k8s/${name}`, fs.readFileSync(path.join(ROOT, "deploy/k8s", name), "utf8"));
  return w;
}

// [check id, file, text to find, its replacement, what it breaks]
const K = "deploy/k8s/";
const MUTATIONS = [
  ["dockerfile", "docker/Dockerfile", "EXPOSE 8080", "EXPOSE http", "an invalid EXPOSE"],
  ["schema", K + "deployment.yaml", "containerPort: 8080", "containerPort: eighty", "a port that is not an integer"],
  ["schema", K + "hpa.yaml", "  maxReplicas: 8\n", "", "a required field left out"],
  ["schema", K + "pdb.yaml", "kind: PodDisruptionBudget", "kind: PodDisruptionBugdet", "an unknown kind"],
  ["schema", K + "servicemonitor.yaml", "interval: 15s", "interval: [15s]", "a CRD field of the wrong type"],
  ["yaml", K + "service.yaml", "  ports:\n", "  ports:\n   - {\n", "a YAML syntax error"],
  ["yaml", "docker/compose.yaml", "services:\n", "services: [\n", "a YAML syntax error in compose"],
  ["kustomization", K + "kustomization.yaml", "  - pdb.yaml\n", "  - pdb.yaml\n  - nope.yaml\n", "a resource that does not exist"],
  ["kustomization", K + "kustomization.yaml", "  - hpa.yaml\n", "", "a manifest left out"],
  ["kustomization", K + "kustomization.yaml", "  - name: attnd\n", "  - name: attnd-server\n", "images: not naming the image"],
  ["env", K + "configmap.yaml", "ATTND_MODELS_POLL_SECONDS:", "ATTND_MODEL_POLL_SECONDS:", "a variable config.c does not read"],
  ["env", "docker/Dockerfile", "ATTND_DATA_DIR=/data", "ATTND_DATADIR=/data", "a wrong variable in the Dockerfile"],
  ["env", "docker/compose.yaml", "ATTND_QUIET:", "ATTND_QUITE:", "a wrong variable in compose"],
  ["metrics", K + "hpa.yaml", "name: attnd_requests_in_flight", "name: attnd_requests_inflight", "an HPA metric attnd does not export"],
  ["metrics", K + "hpa.yaml", "name: attnd_requests_in_flight", "name: attnd_requests_total", "an HPA Pods metric that is not a gauge"],
  ["metrics", K + "prometheus-adapter-rules.yaml", "'attnd_queue_depth{", "'attnd_queue_len{", "an adapter series attnd does not export"],
  ["metrics", K + "prometheus-adapter-rules.yaml", 'as: "attnd_requests_in_flight"', 'as: "inflight"', "an HPA metric no adapter rule serves"],
  ["probes", K + "deployment.yaml", "path: /readyz", "path: /ready", "a readiness path that is no route"],
  ["probes", K + "deployment.yaml", "path: /healthz\n              port: http\n            periodSeconds: 10",
    "path: /readyz\n              port: http\n            periodSeconds: 10", "liveness on /readyz"],
  ["probes", K + "service.yaml", "targetPort: http", "targetPort: web", "a Service targetPort the pod lacks"],
  ["probes", K + "servicemonitor.yaml", "path: /metrics", "path: /metric", "a scrape path that is no route"],
  ["grace", K + "deployment.yaml", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: 15", "a grace period under sleep + drain"],
  ["grace", K + "configmap.yaml", 'ATTND_GRACE_SECONDS: "10"', 'ATTND_GRACE_SECONDS: "40"', "a drain longer than the pod's grace"],
  ["grace", K + "deployment.yaml", 'command: ["bash", "-c", "sleep 5"]', 'command: ["true"]', "no preStop sleep"],
  ["grace", "docker/compose.yaml", "stop_grace_period: 20s", "stop_grace_period: 5s", "compose stopping before the drain"],
  ["security", K + "deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "a writable root"],
  ["security", K + "train-job.yaml", "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "escalation in the Job"],
  ["security", K + "deployment.yaml", "runAsUser: 10001", "runAsUser: 1000", "a uid that is not the image's"],
  ["security", K + "train-job.yaml", "type: RuntimeDefault", "type: Unconfined", "no seccomp profile"],
  ["security", K + "deployment.yaml", 'drop: ["ALL"]', 'drop: ["NET_RAW"]', "capabilities kept"],
  ["volumes", K + "pvc.yaml", 'accessModes: ["ReadWriteMany"]', 'accessModes: ["ReadWriteOnce"]', "a claim one node at a time"],
  ["volumes", K + "configmap.yaml", "ATTND_TRAINED_MODELS_DIR: /shared/models", "ATTND_TRAINED_MODELS_DIR: /data/models", "trained models off the shared volume"],
  ["volumes", K + "configmap.yaml", 'ATTND_MODELS_POLL_SECONDS: "10"', 'ATTND_MODELS_POLL_SECONDS: "0"', "no rescan"],
  ["volumes", K + "configmap.yaml", "ATTND_API_KEY_FILE: /etc/attnd/keys/keys", "ATTND_API_KEY_FILE: /etc/attnd/keys.txt", "a keys file that is not mounted"],
  ["volumes", K + "secret.yaml", "  scrape-key: change-me-scrape-key", "  scrape-key: another-key", "a scrape key attnd does not accept"],
  ["volumes", K + "train-job.yaml", "--out /shared/models/recall-k8s.safetensors", "--out /shared/recall-k8s.safetensors", "a Job output no replica serves"],
  ["volumes", K + "train-job.yaml", "--out /shared/models/recall-k8s.safetensors", "--out /shared/models/recall-k8s.safetensors.tmp", "a Job output with a temporary name"],
  ["job", K + "train-job.yaml", "exec attn train", "exec attn trian", "an attn subcommand that does not exist"],
  ["job", K + "train-job.yaml", "--steps 2000", "--step 2000", "a flag attn train does not parse"],
];

let failed = 0;
const world = loadWorld();
const findings = await runAll(world);
for (const f of findings) console.log(`FAIL [${f.check}] ${f.msg}`);
if (findings.length) failed++;
console.log(`${findings.length ? "not ok" : "ok"} - the repository's files: ${CHECKS.length} checks, ` +
  `${[...world.keys()].filter((p) => p.startsWith(K)).length} manifests, ${findings.length} findings`);

// The self-check: on the clean files every check passes (above), and each
// mutation makes its own check report.
const covered = new Set();
for (const [id, file, from, to, what] of MUTATIONS) {
  const w = new Map(world);
  const text = w.get(file);
  if (text === undefined || !text.includes(from)) {
    console.log(`not ok - mutation "${what}": ${JSON.stringify(from)} is not in ${file} (update the mutation)`);
    failed++;
    continue;
  }
  w.set(file, text.replace(from, to));
  const got = (await runAll(w)).filter((f) => f.check === id && !f.msg.startsWith("threw:"));
  if (got.length) {
    covered.add(id);
    console.log(`ok - [${id}] catches ${what}: ${got[0].msg}`);
  } else {
    console.log(`not ok - [${id}] misses ${what} (${file})`);
    failed++;
  }
}
for (const [id] of [...CHECKS, ["yaml"]])
  if (!covered.has(id)) {
    console.log(`not ok - check ${id} has no mutation that makes it fail`);
    failed++;
  }
const total = 1 + MUTATIONS.length;
console.log(`${total - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
