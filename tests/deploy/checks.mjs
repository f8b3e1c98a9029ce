// checks.mjs — the checks of validate.mjs, each a function of a "world":
// the texts of the files it reads (a Map path -> text, paths relative to
// the repository root), so that validate.mjs can run them on mutated
// copies and show that each one can fail.
//
// A check returns findings: [{check, msg}]; none means it passed. Nothing
// here reads the disk, a cluster or a Docker engine.
import { validate as lintDockerfile } from "dockerfile-utils";
import YAML from "yaml";

const K8S = "deploy/k8s/";
const MODELS = {
  "v1": "kubernetes-models/v1/",
  "apps/v1": "kubernetes-models/apps/v1/",
  "batch/v1": "kubernetes-models/batch/v1/",
  "policy/v1": "kubernetes-models/policy/v1/",
  "autoscaling/v2": "kubernetes-models/autoscaling/v2/",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/",
};

// ---- what the sources say ---------------------------------------------

// ATTND_* variables of the option table (server/config.c).
const configVars = (w) => new Set([...w.get("server/config.c").matchAll(/"(ATTND_[A-Z0-9_]+)"/g)].map((m) => m[1]));

// Metric names and their types, as registered in server/stats.c and
// server/metrics.c: srv_metrics_gauge(r, "attnd_x", ...) and the
// hist(r, "attnd_x", ...) wrapper (a histogram).
function metricNames(w) {
  const out = new Map();
  for (const f of ["server/stats.c", "server/metrics.c"]) {
    const re = /(srv_metrics_(counter|gauge|histogram)|hist)\(\s*\w+\s*,\s*"(attnd_[a-z0-9_]+)"/g;
    for (const m of w.get(f).matchAll(re)) out.set(m[3], m[2] || "histogram");
  }
  return out;
}

// Routes of the table in server/http.c: {"/healthz", "GET", ...}.
const routes = (w) => new Set([...w.get("server/http.c").matchAll(/\{\s*"(\/[^"]*)"\s*,\s*"[A-Z]+"/g)].map((m) => m[1]));

// attn's subcommands (tools/attn.c: !strcmp(cmd, "train")) and the flags
// `attn train` parses (tools/train.c: !strcmp(a, "--out")).
const attnCommands = (w) => new Set([...w.get("tools/attn.c").matchAll(/!strcmp\(cmd, "([a-z-]+)"\)/g)].map((m) => m[1]));
const trainFlags = (w) => new Set([...w.get("tools/train.c").matchAll(/"(--[a-z-]+)"/g)].map((m) => m[1]));

// attnd's default --grace-seconds (srv_config_parse).
function defaultGrace(w) {
  const m = w.get("server/config.c").match(/cfg->grace_seconds\s*=\s*(\d+)/);
  return m ? Number(m[1]) : NaN;
}

// ---- parsing ---------------------------------------------------------

export const k8sFiles = (w) => [...w.keys()].filter((p) => p.startsWith(K8S) && /\.ya?ml$/.test(p)).sort();

// Every YAML document of a file, or a finding.
function parseAll(w, path, findings) {
  const docs = YAML.parseAllDocuments(w.get(path));
  const out = [];
  for (const d of docs) {
    if (d.errors.length) {
      findings.push({ check: "yaml", msg: `${path}: ${d.errors[0].message.split("\n")[0]}` });
      return [];
    }
    const v = d.toJS();
    if (v !== null && v !== undefined) out.push(v);
  }
  return out;
}

// The parsed world: {objects: [{path, obj}], compose, files}.
export function load(w, findings) {
  const objects = [];
  for (const p of k8sFiles(w)) for (const obj of parseAll(w, p, findings)) objects.push({ path: p, obj });
  const compose = parseAll(w, "docker/compose.yaml", findings)[0];
  parseAll(w, "docker/prometheus-compose.yml", findings);
  return { objects, compose };
}

const byKind = (objs, kind) => objs.filter((o) => o.obj && o.obj.kind === kind).map((o) => o.obj);
const one = (objs, kind) => byKind(objs, kind)[0];

// ---- the checks ------------------------------------------------------

// docker/Dockerfile: no error from dockerfile-utils' linter (severity 1).
export function checkDockerfile(w) {
  return lintDockerfile(w.get("docker/Dockerfile"))
    .filter((d) => d.severity === 1)
    .map((d) => ({ check: "dockerfile", msg: `docker/Dockerfile:${d.range.start.line + 1}: ${d.message}` }));
}

// Each object against its kubernetes-models class (the API's JSON schema).
export async function checkSchemas(w, { objects }) {
  const f = [];
  for (const { path, obj } of objects) {
    const where = `${path}: ${obj.kind}/${obj.metadata && obj.metadata.name}`;
    if (obj.apiVersion === "kustomize.config.k8s.io/v1beta1") continue; // checkKustomization
    const base = MODELS[obj.apiVersion];
    if (!base || !/^[A-Za-z]+$/.test(obj.kind || "")) {
      f.push({ check: "schema", msg: `${where}: no model for ${obj.apiVersion} ${obj.kind}` });
      continue;
    }
    let cls;
    try {
      cls = (await import(base + obj.kind))[obj.kind];
    } catch {
      cls = undefined;
    }
    if (!cls) {
      f.push({ check: "schema", msg: `${where}: ${obj.apiVersion} has no kind ${obj.kind}` });
      continue;
    }
    try {
      new cls(obj).validate();
    } catch (e) {
      f.push({ check: "schema", msg: `${where}: ${e.message.split("\n")[0]}` });
    }
  }
  return f;
}

// kustomization.yaml: its resources exist, every manifest but the
// adapter's rules is listed, and its images: name the containers' image.
export function checkKustomization(w, { objects }) {
  const f = [];
  const k = one(objects, "Kustomization");
  if (!k) return [{ check: "kustomization", msg: "deploy/k8s/kustomization.yaml: no Kustomization" }];
  const res = k.resources || [];
  for (const r of res) if (!w.has(K8S + r)) f.push({ check: "kustomization", msg: `resource ${r} does not exist` });
  for (const p of k8sFiles(w)) {
    const name = p.slice(K8S.length);
    if (name !== "kustomization.yaml" && name !== "prometheus-adapter-rules.yaml" && !res.includes(name))
      f.push({ check: "kustomization", msg: `${name} is not in resources` });
  }
  const imgs = new Set((k.images || []).map((i) => i.name));
  for (const kind of ["Deployment", "Job"])
    for (const o of byKind(objects, kind))
      for (const c of o.spec.template.spec.containers)
        if (!imgs.has(c.image.split(":")[0]))
          f.push({ check: "kustomization", msg: `${kind} ${o.metadata.name}: image ${c.image} is not in images:` });
  return f;
}

// Every ATTND_* name in the manifests, the Dockerfile and compose is one
// server/config.c reads.
export function checkEnvVars(w) {
  const known = configVars(w);
  const f = [];
  for (const p of [...k8sFiles(w), "docker/Dockerfile", "docker/compose.yaml"])
    for (const m of w.get(p).matchAll(/\bATTND_[A-Z0-9_]+/g))
      if (!known.has(m[0])) f.push({ check: "env", msg: `${p}: ${m[0]} is not a variable of server/config.c` });
  return f;
}

// The HPA's Pods metrics are gauges attnd exports and that an adapter rule
// serves under that name; the adapter's series are attnd's metrics.
export function checkMetrics(w, { objects }) {
  const f = [];
  const known = metricNames(w);
  const served = new Set();
  const adapter = objects.find((o) => o.path === K8S + "prometheus-adapter-rules.yaml");
  const cfg = adapter ? YAML.parse(adapter.obj.data["config.yaml"]) : { rules: [] };
  for (const r of cfg.rules || []) {
    const series = (r.seriesQuery.match(/^'?([a-zA-Z_:][a-zA-Z0-9_:]*)/) || [])[1];
    if (!known.has(series)) f.push({ check: "metrics", msg: `adapter rule: ${series} is not a metric of server/` });
    served.add(r.name && r.name.as ? r.name.as : series);
    if (!/<<\.Series>>/.test(r.metricsQuery || "") || !/<<\.LabelMatchers>>/.test(r.metricsQuery || ""))
      f.push({ check: "metrics", msg: `adapter rule ${series}: metricsQuery lacks <<.Series>>/<<.LabelMatchers>>` });
  }
  const hpa = one(objects, "HorizontalPodAutoscaler");
  for (const m of (hpa && hpa.spec.metrics) || []) {
    if (m.type !== "Pods") continue;
    const name = m.pods.metric.name;
    if (known.get(name) !== "gauge") f.push({ check: "metrics", msg: `HPA: ${name} is not a gauge of server/` });
    if (!served.has(name)) f.push({ check: "metrics", msg: `HPA: no adapter rule serves ${name}` });
  }
  const sm = one(objects, "ServiceMonitor");
  for (const e of (sm && sm.spec.endpoints) || [])
    for (const r of e.metricRelabelings || [])
      for (const n of JSON.stringify(r).match(/attnd_[a-z0-9_]+/g) || [])
        if (!known.has(n)) f.push({ check: "metrics", msg: `ServiceMonitor: ${n} is not a metric of server/` });
  return f;
}

// Probes: readiness on /readyz, liveness on /healthz, each path a route of
// server/http.c, on the container's named port; the ServiceMonitor's path
// too; the Service and the ServiceMonitor reach the pods.
export function checkProbes(w, { objects }) {
  const f = [];
  const r = routes(w);
  const d = one(objects, "Deployment");
  const c = d.spec.template.spec.containers[0];
  const ports = new Set((c.ports || []).map((p) => p.name));
  const want = { readinessProbe: "/readyz", livenessProbe: "/healthz", startupProbe: null };
  for (const [probe, path] of Object.entries(want)) {
    const g = c[probe] && c[probe].httpGet;
    if (!g) { f.push({ check: "probes", msg: `Deployment: no ${probe}.httpGet` }); continue; }
    if (!r.has(g.path)) f.push({ check: "probes", msg: `${probe}: ${g.path} is not a route of server/http.c` });
    if (path && g.path !== path) f.push({ check: "probes", msg: `${probe}: ${g.path}, expected ${path}` });
    if (typeof g.port === "string" && !ports.has(g.port)) f.push({ check: "probes", msg: `${probe}: no port ${g.port}` });
  }
  const svc = one(objects, "Service");
  const labels = d.spec.template.metadata.labels;
  for (const [k, v] of Object.entries(svc.spec.selector))
    if (labels[k] !== v) f.push({ check: "probes", msg: `Service selector ${k}=${v} does not match the pods` });
  for (const p of svc.spec.ports)
    if (typeof p.targetPort === "string" && !ports.has(p.targetPort))
      f.push({ check: "probes", msg: `Service targetPort ${p.targetPort} is not a container port` });
  const sm = one(objects, "ServiceMonitor");
  const svcPorts = new Set(svc.spec.ports.map((p) => p.name));
  for (const [k, v] of Object.entries(sm.spec.selector.matchLabels || {}))
    if ((svc.metadata.labels || {})[k] !== v) f.push({ check: "probes", msg: `ServiceMonitor selector ${k}=${v} misses the Service` });
  for (const e of sm.spec.endpoints) {
    if (!svcPorts.has(e.port)) f.push({ check: "probes", msg: `ServiceMonitor port ${e.port} is not a Service port` });
    if (!r.has(e.path)) f.push({ check: "probes", msg: `ServiceMonitor path ${e.path} is not a route` });
  }
  return f;
}

// The pods' ATTND_* settings: the ConfigMap(s) of envFrom, then env.
function podEnv(objects, spec) {
  const env = {};
  for (const c of spec.containers)
    for (const s of c.envFrom || []) {
      const cm = byKind(objects, "ConfigMap").find((o) => s.configMapRef && o.metadata.name === s.configMapRef.name);
      Object.assign(env, cm ? cm.data : {});
    }
  for (const c of spec.containers) for (const e of c.env || []) if ("value" in e) env[e.name] = e.value;
  return env;
}

// terminationGracePeriodSeconds > preStop sleep + --grace-seconds (+ the
// 1 s hard deadline after it); compose's stop_grace_period above it too.
export function checkGrace(w, { objects, compose }) {
  const f = [];
  const d = one(objects, "Deployment");
  const spec = d.spec.template.spec;
  const env = podEnv(objects, spec);
  const c = spec.containers[0];
  const flag = (c.args || []).join(" ").match(/--grace-seconds[= ](\d+)/);
  const grace = Number(flag ? flag[1] : env.ATTND_GRACE_SECONDS || defaultGrace(w));
  const pre = c.lifecycle && c.lifecycle.preStop;
  const cmd = pre && (pre.exec ? pre.exec.command.join(" ") : "");
  const m = cmd && cmd.match(/\bsleep (\d+)/);
  if (!m && !(pre && pre.sleep)) f.push({ check: "grace", msg: "Deployment: no preStop sleep" });
  const sleep = m ? Number(m[1]) : pre && pre.sleep ? pre.sleep.seconds : 0;
  const tgp = spec.terminationGracePeriodSeconds ?? 30;
  if (!(tgp > sleep + grace + 1))
    f.push({ check: "grace", msg: `terminationGracePeriodSeconds ${tgp} <= preStop ${sleep} + grace ${grace} + 1` });
  const a = compose && compose.services && compose.services.attnd;
  const env2 = (a && a.environment) || {};
  const cg = Number(env2.ATTND_GRACE_SECONDS || defaultGrace(w));
  const sgp = a && a.stop_grace_period ? parseInt(a.stop_grace_period, 10) : 10; // Docker's default
  if (!(sgp > cg)) f.push({ check: "grace", msg: `compose stop_grace_period ${sgp}s <= grace ${cg}` });
  return f;
}

// Pod and container security, for the Deployment and the Job: the image's
// uid (the Dockerfile's USER), non-root, read-only root, no escalation,
// no capabilities, the runtime's seccomp profile.
export function checkSecurity(w, { objects }) {
  const f = [];
  const user = (w.get("docker/Dockerfile").match(/^USER (\d+)/m) || [])[1];
  for (const kind of ["Deployment", "Job"])
    for (const o of byKind(objects, kind)) {
      const s = o.spec.template.spec;
      const p = s.securityContext || {};
      const bad = (msg) => f.push({ check: "security", msg: `${kind} ${o.metadata.name}: ${msg}` });
      if (p.runAsNonRoot !== true) bad("runAsNonRoot is not true");
      if (String(p.runAsUser) !== user) bad(`runAsUser ${p.runAsUser}, the image's USER is ${user}`);
      if (!p.seccompProfile || p.seccompProfile.type !== "RuntimeDefault") bad("seccompProfile is not RuntimeDefault");
      for (const c of s.containers) {
        const cs = c.securityContext || {};
        if (cs.readOnlyRootFilesystem !== true) bad(`${c.name}: readOnlyRootFilesystem is not true`);
        if (cs.allowPrivilegeEscalation !== false) bad(`${c.name}: allowPrivilegeEscalation is not false`);
        if (!cs.capabilities || JSON.stringify(cs.capabilities.drop) !== '["ALL"]') bad(`${c.name}: capabilities do not drop ALL`);
        if (!c.resources || !c.resources.limits || !c.resources.limits.memory) bad(`${c.name}: no memory limit`);
      }
    }
  return f;
}

// The shared models volume: a ReadWriteMany claim, mounted by the
// Deployment where ATTND_TRAINED_MODELS_DIR points, rescanned
// (ATTND_MODELS_POLL_SECONDS > 0); the Job writes there with the same
// claim; the API keys file is the mounted Secret's key.
export function checkVolumes(w, { objects }) {
  const f = [];
  const bad = (msg) => f.push({ check: "volumes", msg });
  const pvc = one(objects, "PersistentVolumeClaim");
  if (!pvc || !pvc.spec.accessModes.includes("ReadWriteMany")) bad("the PVC is not ReadWriteMany");
  const d = one(objects, "Deployment");
  const spec = d.spec.template.spec;
  const env = podEnv(objects, spec);
  const mountOf = (s, pred) => {
    const v = (s.volumes || []).find(pred);
    return v && s.containers[0].volumeMounts.find((m) => m.name === v.name);
  };
  const claim = (v) => v.persistentVolumeClaim && pvc && v.persistentVolumeClaim.claimName === pvc.metadata.name;
  const m = mountOf(spec, claim);
  const dir = env.ATTND_TRAINED_MODELS_DIR || "";
  if (!m || !(dir + "/").startsWith(m.mountPath.replace(/\/?$/, "/")))
    bad(`ATTND_TRAINED_MODELS_DIR ${dir} is not on the shared claim's mount`);
  if (!(Number(env.ATTND_MODELS_POLL_SECONDS) > 0)) bad("ATTND_MODELS_POLL_SECONDS is not set above 0");
  const key = env.ATTND_API_KEY_FILE;
  const sec = (spec.volumes || []).find((v) => v.secret);
  const sm = sec && spec.containers[0].volumeMounts.find((x) => x.name === sec.name);
  const secret = sec && byKind(objects, "Secret").find((s) => s.metadata.name === sec.secret.secretName);
  const item = sec && (sec.secret.items || [])[0];
  if (!key || !sm || !secret || !item || key !== `${sm.mountPath}/${item.path}` || !(item.key in (secret.stringData || secret.data || {})))
    bad(`ATTND_API_KEY_FILE ${key} is not a key of a mounted Secret`);
  const mon = one(objects, "ServiceMonitor");
  for (const e of (mon && mon.spec.endpoints) || []) {
    const cr = e.authorization && e.authorization.credentials;
    const s = cr && byKind(objects, "Secret").find((x) => x.metadata.name === cr.name);
    const data = s ? s.stringData || {} : {};
    if (cr && !(cr.key in data)) bad(`ServiceMonitor credentials ${cr.name}/${cr.key} do not exist`);
    else if (cr && !String(data[item ? item.key : ""]).split("\n").includes(data[cr.key]))
      bad("the ServiceMonitor's key is not a line of attnd's keys file");
  }
  for (const j of byKind(objects, "Job")) {
    const jm = mountOf(j.spec.template.spec, claim);
    if (!jm) bad(`Job ${j.metadata.name} does not mount the shared claim`);
    const out = (jobScript(j).match(/--out[= ](\S+)/) || [])[1] || "";
    const dirOf = out.replace(/\/[^/]*$/, "");
    if (jm && m && dirOf !== dir.replace(m.mountPath, jm.mountPath))
      bad(`Job --out ${out} is not in the served trained-models dir ${dir}`);
    if (/\.tmp(\.\d+)?$/.test(out) || !/\.safetensors$/.test(out)) bad(`Job --out ${out}: not a name attnd serves`);
  }
  return f;
}

// The Job's command line, flattened (command + args, a bash -c script's
// line continuations joined).
function jobScript(j) {
  const c = j.spec.template.spec.containers[0];
  return [...(c.command || []), ...(c.args || [])].join(" ").replace(/\\\n/g, " ");
}

// The Job runs a real `attn` subcommand, with flags `attn train` parses.
export function checkJob(w, { objects }) {
  const f = [];
  const cmds = attnCommands(w);
  const flags = trainFlags(w);
  const jobs = byKind(objects, "Job");
  if (!jobs.length) f.push({ check: "job", msg: "no training Job" });
  for (const j of jobs) {
    const s = jobScript(j);
    const m = s.match(/(?:^|[\s/])attn\s+([a-z-]+)/);
    if (!m || !cmds.has(m[1])) { f.push({ check: "job", msg: `Job ${j.metadata.name}: ${m ? m[1] : "no"} attn subcommand` }); continue; }
    if (m[1] !== "train") continue;
    for (const fl of s.slice(m.index).match(/--[a-z][a-z-]*/g) || [])
      if (!flags.has(fl)) f.push({ check: "job", msg: `Job ${j.metadata.name}: attn train has no ${fl}` });
  }
  return f;
}

export const CHECKS = [
  ["dockerfile", checkDockerfile], ["schema", checkSchemas], ["kustomization", checkKustomization],
  ["env", checkEnvVars], ["metrics", checkMetrics], ["probes", checkProbes], ["grace", checkGrace],
  ["security", checkSecurity], ["volumes", checkVolumes], ["job", checkJob],
];

// Every check on a world; a check that throws is a finding of that check.
export async function runAll(w) {
  const findings = [];
  const parsed = load(w, findings);
  for (const [id, fn] of CHECKS) {
    try {
      findings.push(...(await fn(w, parsed)));
    } catch (e) {
      findings.push({ check: id, msg: `threw: ${e.message}` });
    }
  }
  return findings;
}
