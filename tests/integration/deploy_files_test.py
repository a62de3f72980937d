#!/usr/bin/python3
"""Static checks of the deployment files (no Docker or Kubernetes needed).

    deploy_files_test.py PROJECT_SOURCE_DIR [--server-bin F] [--engramctl F]

Parses docker-compose.yml, deploy/compose/*.json, every deploy/k8s/*.yaml,
deploy/systemd/engram-server.service and deploy/Dockerfile, and checks that
they agree with each other: the compose services and their --shard flags
with the compose cluster map, the StatefulSet size, pod DNS names, Service
and probe ports and PDB selector with the Kubernetes cluster map under the
ordinal rule (pod engram-<o> -> shard o / R, replica o % R), the hardening of
the systemd unit, and the shape of the image. Runs deploy/docker-entrypoint.sh
with a stand-in server to check the ordinal rule it applies. Checks that the
image's runtime stage installs the Debian package of every shared library
the built engram-server and engramctl link (readelf -d NEEDED, resolved by
ldd, owner by dpkg -S); without --server-bin/--engramctl the binaries are
looked up in the CMake build tree ctest runs in (the working directory).

Node-local copies (deploy/k8s/node-local/, deploy/compose/node-local.yml):
each server's --shm-dir is the mount point of its volume (a hostPath, a
memory emptyDir with a sizeLimit, a compose tmpfs volume), writable by it;
every worker mounts the same hostPath/volume at that same path, read-only,
with the files' group (--shm-group) among its groups and on the server's
nodes; the DaemonSet's Service keeps traffic on the node. Every
engram-server command line (these, compose, the StatefulSet, systemd) names
only options in server/core/main.c's getopt table, every engramctl call a
known command and global option, and the inline shell scripts parse.

Needs python3-yaml, binutils (readelf) and dpkg (Debian 12, like the image). Prints `N passed, M failed`; exit 1 on failure.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml


def arg(name):
    """Value of an optional --name VALUE on the command line, or None."""
    a = sys.argv[1:]
    return a[a.index(name) + 1] if name in a[:-1] else None


_pos = [a for i, a in enumerate(sys.argv[1:])
        if not a.startswith("--") and (i == 0 or not sys.argv[i].startswith("--"))]
ROOT = os.path.abspath(_pos[0] if _pos else
                       os.path.join(os.path.dirname(__file__), "..", ".."))
SERVER_GRACE_S = 5  # engram-server --grace-ms default
PORT = 7070

passed = []
failed = []


def check(name):
    """Decorator: runs the check at once and records its outcome."""
    def run(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - any error is a failed check
            failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}")
        else:
            passed.append(name)
            print(f"ok   {name}")
        return fn
    return run


def need(cond, msg):
    if not cond:
        raise AssertionError(msg)


def path(*p):
    return os.path.join(ROOT, *p)


def load_yaml_docs(p):
    with open(p) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def duration_s(v):
    """Compose durations ('15s', '1m30s') or systemd ones ('30s', '2min', '30')."""
    if isinstance(v, (int, float)):
        return float(v)
    total, s = 0.0, str(v).strip()
    units = {"h": 3600, "min": 60, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(min|ms|us|h|m|s)?", s):
        total += float(num) * units[unit or "s"]
    return total


def flag(args, name):
    """Value of --name in an argv list, or None."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return str(args[i + 1])
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


# The manifest keys a model file must carry (common/manifest.h).
MANIFEST_KEYS = ["name", "engram_vocab_size", "max_ngram_size", "n_embed_per_ngram",
                 "n_head_per_ngram", "layer_ids", "pad_id", "dtype", "compression", "tables"]


def check_manifest(m):
    for k in MANIFEST_KEYS:
        need(k in m, f"manifest lacks {k!r}")
    need(len(m["engram_vocab_size"]) == m["max_ngram_size"] - 1,
         "engram_vocab_size needs one size per order 2..max_ngram_size")
    need(m["n_embed_per_ngram"] % m["n_head_per_ngram"] == 0,
         "n_embed_per_ngram must be a multiple of n_head_per_ngram")
    need(sorted(m["tables"]) == sorted(str(l) for l in m["layer_ids"]),
         "tables must name one table per layer id")
    lt = m["compression"]["lookup_table"]
    need(isinstance(lt, list) and lt and 0 <= m["pad_id"] < len(lt),
         "compression.lookup_table must cover pad_id")
    need(all(isinstance(x, int) and 0 <= x < min(m["engram_vocab_size"]) for x in lt),
         "compressed ids must be below every vocab size")


def check_cluster_map(c):
    for k in ("name", "placement", "shards"):
        need(k in c, f"cluster map lacks {k!r}")
    need(c["placement"] == "mod", "placement must be 'mod' (row r on shard r mod S)")
    need(c["shards"], "cluster map has no shards")
    r = len(c["shards"][0]["replicas"])
    need(r >= 1 and all(len(s["replicas"]) == r for s in c["shards"]),
         "every shard needs the same number of replicas")
    hosts = [h for s in c["shards"] for h in s["replicas"]]
    need(len(set(hosts)) == len(hosts), "a host appears twice in the map")
    for h in hosts:
        need(re.fullmatch(r"[A-Za-z0-9.-]+:\d+", h), f"bad host:port {h!r}")
    return len(c["shards"]), r


# ---------------------------------------------------------------- compose

compose = {}
compose_map = {}
server_services = {}


@check("compose: docker-compose.yml and deploy/compose/cluster.json parse")
def _():
    global compose, compose_map
    with open(path("docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    need(isinstance(compose.get("services"), dict), "no services")
    need(isinstance(compose.get("volumes"), dict), "no top-level volumes")
    with open(path("deploy", "compose", "cluster.json")) as f:
        compose_map = json.load(f)
    s, r = check_cluster_map(compose_map)
    need((s, r) == (3, 2), f"compose map is {s} shards x {r} replicas, want 3 x 2")


@check("compose: six server services, named as the map's hosts, one --shard each")
def _():
    for name, svc in compose["services"].items():
        cmd = svc.get("command") or []
        if isinstance(cmd, list) and "--shard" in [str(a) for a in cmd]:
            server_services[name] = svc
    need(len(server_services) == 6, f"{len(server_services)} server services, want 6")
    hosts = {}
    for i, shard in enumerate(compose_map["shards"]):
        for j, h in enumerate(shard["replicas"]):
            host, port = h.rsplit(":", 1)
            need(int(port) == PORT, f"{h}: port must be {PORT}")
            hosts[host] = i
            need(host == f"engram-s{i}-r{j}", f"map host {host} should be engram-s{i}-r{j}")
    need(set(hosts) == set(server_services),
         f"services {sorted(server_services)} != map hosts {sorted(hosts)}")
    for name, svc in server_services.items():
        args = [str(a) for a in svc["command"]]
        need(flag(args, "--shard") == str(hosts[name]),
             f"{name}: --shard {flag(args, '--shard')}, the map puts it in shard {hosts[name]}")
        need(flag(args, "--cluster") == "/etc/engram/cluster.json", f"{name}: --cluster")
        listen = flag(args, "--listen") or ""
        need(listen.endswith(f":{PORT}"), f"{name}: --listen {listen!r} not on port {PORT}")


@check("compose: each server has its own named volume and the map mounted read-only")
def _():
    seen = {}
    for name, svc in server_services.items():
        vols = svc.get("volumes") or []
        data = [v for v in vols if isinstance(v, str) and v.split(":")[1] == "/var/lib/engram"]
        need(len(data) == 1, f"{name}: one volume on /var/lib/engram, got {data}")
        vol = data[0].split(":")[0]
        need(vol in compose["volumes"], f"{name}: volume {vol} not declared")
        need(vol not in seen, f"{name} and {seen.get(vol)} share volume {vol}")
        seen[vol] = name
        maps = [v for v in vols if isinstance(v, str)
                and v.split(":")[1:] == ["/etc/engram/cluster.json", "ro"]]
        need(len(maps) == 1, f"{name}: cluster.json not mounted read-only")
        src = maps[0].split(":")[0]
        need(os.path.samefile(path(src), path("deploy", "compose", "cluster.json")),
             f"{name}: mounts {src}, not deploy/compose/cluster.json")


@check("compose: servers share one image, gRPC health check, stop grace > server grace, limits")
def _():
    images = {svc.get("image") for svc in server_services.values()}
    need(len(images) == 1 and None not in images, f"images {images}")
    for name, svc in server_services.items():
        hc = svc.get("healthcheck") or {}
        test = " ".join(hc.get("test") or [])
        need("health" in test and f"127.0.0.1:{PORT}" in test and "engramctl" in test,
             f"{name}: healthcheck {test!r}")
        need(duration_s(svc.get("stop_grace_period", "10s")) > SERVER_GRACE_S,
             f"{name}: stop_grace_period must exceed {SERVER_GRACE_S}s")
        lim = ((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        need(lim.get("memory"), f"{name}: no memory limit")


@check("compose: init depends on all servers healthy, imports a manifest that parses")
def _():
    init = compose["services"].get("init")
    need(init, "no init service")
    dep = init.get("depends_on") or {}
    need(isinstance(dep, dict), "init depends_on must use conditions")
    for name in server_services:
        need((dep.get(name) or {}).get("condition") == "service_healthy",
             f"init does not wait for {name} healthy")
    need(init.get("image") in {s.get("image") for s in server_services.values()},
         "init uses another image")
    text = " ".join(str(x) for x in (init.get("entrypoint") or [])) + " " + \
        " ".join(str(x) for x in (init.get("command") or []))
    m = re.search(r"--server\s+(\S+):(\d+)\s.*?put-manifest\s+(\S+)", text, re.S)
    need(m, "init never runs put-manifest with --server")
    need(m.group(1) in server_services and int(m.group(2)) == PORT,
         f"init's --server {m.group(1)}:{m.group(2)} is not a server")
    target = m.group(3)
    m2 = re.search(r"import-synthetic\s+--manifest\s+(\S+)\s+--seed\s+\d+", text)
    need(m2, "init never runs import-synthetic --manifest NAME --seed S")
    need(text.index("put-manifest") < text.index("import-synthetic"),
         "import-synthetic before put-manifest")
    src = None
    for v in init.get("volumes") or []:
        parts = v.split(":")
        if parts[1] == target:
            src = parts[0]
    need(src, f"{target} is not mounted into init")
    need(os.path.getsize(path(src)) < 100 * 1024, f"{src} is 100 KB or more")
    with open(path(src)) as f:
        model = json.load(f)
    check_manifest(model)
    need(model["name"] == m2.group(1),
         f"init imports manifest {m2.group(1)!r}, the file is {model['name']!r}")


# ---------------------------------------------------------------- k8s

k8s = {}  # (kind, name) -> document


@check("k8s: every deploy/k8s/*.yaml parses, with apiVersion/kind/metadata, one namespace")
def _():
    files = sorted(f for f in os.listdir(path("deploy", "k8s")) if f.endswith((".yaml", ".yml")))
    need(files, "no YAML files")
    namespaces = set()
    for f in files:
        docs = load_yaml_docs(path("deploy", "k8s", f))
        need(docs, f"{f} is empty")
        for d in docs:
            for k in ("apiVersion", "kind", "metadata"):
                need(k in d, f"{f}: a document lacks {k}")
            need(d["metadata"].get("name"), f"{f}: {d['kind']} without a name")
            k8s[(d["kind"], d["metadata"]["name"])] = d
            if d["kind"] != "Namespace":
                namespaces.add(d["metadata"].get("namespace"))
    need(len(namespaces) == 1 and None not in namespaces, f"namespaces {namespaces}")
    ns = namespaces.pop()
    declared = [n for (k, n) in k8s if k == "Namespace"]
    need(not declared or declared == [ns], f"Namespace objects {declared} != {ns}")
    for kind in ("StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "Job"):
        need(any(k == kind for k, _ in k8s), f"no {kind}")


def one(kind):
    docs = [d for (k, _), d in k8s.items() if k == kind]
    need(len(docs) == 1, f"want one {kind}, have {len(docs)}")
    return docs[0]


def container_port(ctr, ref):
    if isinstance(ref, int):
        return ref
    for p in ctr.get("ports") or []:
        if p.get("name") == ref:
            return p["containerPort"]
    raise AssertionError(f"no container port named {ref!r}")


def subset(small, big):
    return bool(small) and all(big.get(k) == v for k, v in small.items())


k8s_map = {}


@check("k8s: StatefulSet replicas == S*R of the ConfigMap's cluster.json, Parallel, PVCs")
def _():
    sts = one("StatefulSet")
    cms = [d for (k, _), d in k8s.items() if k == "ConfigMap" and "cluster.json" in (d.get("data") or {})]
    need(len(cms) == 1, "want one ConfigMap with cluster.json")
    k8s_map.update(json.loads(cms[0]["data"]["cluster.json"]))
    s, r = check_cluster_map(k8s_map)
    spec = sts["spec"]
    need(spec["replicas"] == s * r, f"replicas {spec['replicas']} != {s} x {r}")
    need(spec.get("podManagementPolicy") == "Parallel", "podManagementPolicy must be Parallel")
    pod = spec["template"]["spec"]
    need(subset(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"]),
         "selector does not match the pod labels")
    vcts = spec.get("volumeClaimTemplates") or []
    need(vcts, "no volumeClaimTemplates")
    ctr = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in ctr.get("volumeMounts") or []}
    for v in vcts:
        need(mounts.get(v["metadata"]["name"]) == "/var/lib/engram",
             f"claim {v['metadata']['name']} not mounted on /var/lib/engram")
        need(v["spec"]["resources"]["requests"]["storage"], "claim without a size")
    cm_vols = [v for v in pod.get("volumes") or []
               if (v.get("configMap") or {}).get("name") == cms[0]["metadata"]["name"]]
    need(cm_vols and mounts.get(cm_vols[0]["name"]) == "/etc/engram",
         "cluster ConfigMap not mounted on /etc/engram")


@check("k8s: headless Service named by serviceName; Service, container and probe ports agree")
def _():
    sts = one("StatefulSet")
    svc = k8s.get(("Service", sts["spec"]["serviceName"]))
    need(svc, f"no Service named {sts['spec']['serviceName']}")
    need(svc["spec"].get("clusterIP") == "None", "Service is not headless (clusterIP: None)")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    need(subset(svc["spec"]["selector"], labels), "Service selector does not match the pods")
    ctr = sts["spec"]["template"]["spec"]["containers"][0]
    ports = svc["spec"]["ports"]
    need(len(ports) == 1 and ports[0].get("name") == "grpc", "want one Service port named grpc")
    need(ports[0]["port"] == PORT, f"Service port {ports[0]['port']} != {PORT}")
    need(container_port(ctr, ports[0].get("targetPort", ports[0]["port"])) == PORT,
         "Service targetPort is not the container's port")
    need(container_port(ctr, "grpc") == PORT, f"container port grpc != {PORT}")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        p = ctr.get(probe)
        if probe != "startupProbe" or p:
            need(p and "grpc" in p, f"{probe} must be a gRPC health probe")
            need(container_port(ctr, p["grpc"]["port"]) == PORT, f"{probe} port")
    listen = flag([str(a) for a in ctr.get("args") or []], "--listen") or ""
    need(listen.endswith(f":{PORT}"), f"--listen {listen!r}")


@check("k8s: the map's hosts are the pod DNS names in ordinal order (o -> shard o/R, replica o%R)")
def _():
    sts = one("StatefulSet")
    name, svc = sts["metadata"]["name"], sts["spec"]["serviceName"]
    ns = sts["metadata"]["namespace"]
    s, r = len(k8s_map["shards"]), len(k8s_map["shards"][0]["replicas"])
    for o in range(s * r):
        want = f"{name}-{o}.{svc}.{ns}.svc.cluster.local:{PORT}"
        got = k8s_map["shards"][o // r]["replicas"][o % r]
        need(got == want, f"shard {o // r} replica {o % r}: {got}, want {want}")


@check("k8s: the pod runs docker-entrypoint.sh with ENGRAM_REPLICAS/SHARDS of the map")
def _():
    sts = one("StatefulSet")
    ctr = sts["spec"]["template"]["spec"]["containers"][0]
    need(ctr.get("command") == ["/usr/local/bin/docker-entrypoint.sh"],
         f"command {ctr.get('command')}")
    env = {e["name"]: e for e in ctr.get("env") or []}
    s, r = len(k8s_map["shards"]), len(k8s_map["shards"][0]["replicas"])
    need(env.get("ENGRAM_REPLICAS", {}).get("value") == str(r), "ENGRAM_REPLICAS != R")
    need(env.get("ENGRAM_SHARDS", {}).get("value") == str(s), "ENGRAM_SHARDS != S")
    need(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
         == "metadata.name", "POD_NAME must come from metadata.name")
    need(env.get("ENGRAM_CLUSTER", {}).get("value", "/etc/engram/cluster.json")
         == "/etc/engram/cluster.json", "ENGRAM_CLUSTER")


@check("k8s: pod security, grace period > server grace, resource requests and limits")
def _():
    sts = one("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    need(pod.get("terminationGracePeriodSeconds", 30) > SERVER_GRACE_S,
         "terminationGracePeriodSeconds must exceed the server's grace")
    need(pod.get("securityContext", {}).get("runAsNonRoot") is True, "runAsNonRoot")
    need(pod["securityContext"].get("runAsUser", 0) != 0, "runAsUser 0")
    ctr = pod["containers"][0]
    sc = ctr.get("securityContext") or {}
    need(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    need(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation")
    res = ctr.get("resources") or {}
    for k in ("requests", "limits"):
        need((res.get(k) or {}).get("memory"), f"no memory {k}")


@check("k8s: PDB selects exactly the server pods, one unavailable at a time")
def _():
    sts = one("StatefulSet")
    pdb = one("PodDisruptionBudget")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    need(subset(pdb["spec"]["selector"]["matchLabels"], labels), "PDB selector does not match the pods")
    job = one("Job")
    need(not subset(pdb["spec"]["selector"]["matchLabels"], job["spec"]["template"]["metadata"].get("labels") or {}),
         "PDB selector also matches the import job")
    s, r = len(k8s_map["shards"]), len(k8s_map["shards"][0]["replicas"])
    if "maxUnavailable" in pdb["spec"]:
        need(pdb["spec"]["maxUnavailable"] == 1 or (r > 2 and pdb["spec"]["maxUnavailable"] < r),
             "maxUnavailable must leave every shard a replica")
    else:
        need(pdb["spec"].get("minAvailable") == s * r - 1, "minAvailable must be S*R - 1")


@check("k8s: import job stores the demo manifest (same as compose's) and imports it")
def _():
    sts = one("StatefulSet")
    job = one("Job")
    pod = job["spec"]["template"]["spec"]
    need(pod.get("restartPolicy") in ("OnFailure", "Never"), "restartPolicy")
    ctr = pod["containers"][0]
    need(ctr["image"] == sts["spec"]["template"]["spec"]["containers"][0]["image"], "image differs")
    text = " ".join(str(x) for x in (ctr.get("command") or []) + (ctr.get("args") or []))
    m = re.search(r"put-manifest\s+(\S+)", text)
    need(m, "no put-manifest")
    need(re.search(r"import-synthetic\s+--manifest\s+demo\s+--seed\s+\d+", text),
         "no import-synthetic --manifest demo --seed S")
    hosts = [h for s in k8s_map["shards"] for h in s["replicas"]]
    need(any(h in text for h in hosts), "the job talks to no host of the map")
    target = m.group(1)
    mounts = {v["name"]: v["mountPath"] for v in ctr.get("volumeMounts") or []}
    found = None
    for v in pod.get("volumes") or []:
        cm = v.get("configMap")
        if cm and v["name"] in mounts:
            doc = k8s.get(("ConfigMap", cm["name"]))
            need(doc, f"ConfigMap {cm['name']} is not in deploy/k8s")
            for key, val in (doc.get("data") or {}).items():
                if os.path.join(mounts[v["name"]], key) == target:
                    found = json.loads(val)
    need(found is not None, f"{target} is not mounted from a ConfigMap")
    check_manifest(found)
    with open(path("deploy", "compose", "demo-model.json")) as f:
        need(found == json.load(f), "k8s demo model differs from deploy/compose/demo-model.json")


@check("entrypoint: docker-entrypoint.sh maps ordinals to shards as the ConfigMap does")
def _():
    s, r = len(k8s_map["shards"]), len(k8s_map["shards"][0]["replicas"])
    src = open(path("deploy", "docker-entrypoint.sh")).read()
    need(src.startswith("#!/bin/sh"), "not a POSIX sh script")
    need(os.access(path("deploy", "docker-entrypoint.sh"), os.X_OK), "not executable")
    with tempfile.TemporaryDirectory() as d:
        fake = os.path.join(d, "engram-server")
        with open(fake, "w") as f:
            f.write('#!/bin/sh\nprintf "%s\\n" "$@"\n')
        os.chmod(fake, 0o755)
        script = os.path.join(d, "entrypoint.sh")
        with open(script, "w") as f:
            f.write(src.replace("/usr/local/bin/engram-server", fake))
        env = dict(os.environ, ENGRAM_REPLICAS=str(r), ENGRAM_SHARDS=str(s))
        name = one("StatefulSet")["metadata"]["name"]
        for o in range(s * r):
            out = subprocess.run(["/bin/sh", script, "--listen", f"0.0.0.0:{PORT}"],
                                 env=dict(env, POD_NAME=f"{name}-{o}"),
                                 capture_output=True, text=True, check=True).stdout.split("\n")
            need(flag(out, "--shard") == str(o // r), f"{name}-{o}: --shard {flag(out, '--shard')}")
            need(flag(out, "--cluster") == "/etc/engram/cluster.json", "--cluster")
            need(flag(out, "--listen") == f"0.0.0.0:{PORT}", "arguments not passed on")
        bad = subprocess.run(["/bin/sh", script], env=dict(env, POD_NAME=f"{name}-{s * r}"),
                             capture_output=True, text=True)
        need(bad.returncode != 0, "an ordinal past S*R was accepted")
    if shutil.which("shellcheck"):
        sc = subprocess.run(["shellcheck", "-s", "sh", path("deploy", "docker-entrypoint.sh")],
                            capture_output=True, text=True)
        need(sc.returncode == 0, "shellcheck: " + sc.stdout.strip())


# ---------------------------------------------------------------- node-local (--shm-dir)
#
# deploy/k8s/node-local/ and deploy/compose/node-local.yml: a server that
# publishes its resident tables as files (--shm-dir) and workers that map
# them. The client only maps a file it finds at the path the server listed,
# so every worker must mount the server's volume at the server's --shm-dir;
# it opens the files O_RDONLY, so read-only mounts and read permission
# (the --shm-group) are what it needs.

def server_options():
    """{name: takes a value} of engram-server's long options, from the
    getopt_long table in server/core/main.c (the source of truth for what
    the server accepts; no build needed), each also named in usage()."""
    src = open(path("server", "core", "main.c")).read()
    m = re.search(r"struct option longopts\[\]\s*=\s*\{(.*?)\{0, 0, 0, 0\}", src, re.S)
    need(m, "no longopts table in server/core/main.c")
    opts = {n: a == "1" for n, a in re.findall(r'\{"([a-z][a-z-]*)",\s*([01]),', m.group(1))}
    need(len(opts) >= 20, f"only {len(opts)} options parsed from server/core/main.c")
    usage = src[src.index("static void usage"):src.index("static int parse_u64")]
    for n in opts:
        need(f"--{n}" in usage, f"--{n} is accepted but not in usage()")
    return opts


def check_server_argv(args, where, opts):
    """Every --flag in args is one the server accepts, with a value where it
    takes one; values that are shell expansions ($X) are taken as given."""
    i = 0
    while i < len(args):
        a = str(args[i])
        if a.startswith("$"):  # systemd's $ENGRAM_OPTS: checked in engram.env
            i += 1
            continue
        need(a.startswith("--"), f"{where}: stray argument {a!r}")
        name, eq, _ = a[2:].partition("=")
        need(name in opts, f"{where}: engram-server has no option --{name}")
        if opts[name] and not eq:
            need(i + 1 < len(args) and not str(args[i + 1]).startswith("--"),
                 f"{where}: --{name} needs a value")
            i += 1
        i += 1


def server_bytes(v):
    """engram-server BYTES: K, M, G, T suffixes, powers of 1024."""
    m = re.fullmatch(r"(\d+)([KMGT]?)", str(v))
    need(m, f"bad BYTES {v!r}")
    return int(m.group(1)) << (10 * " KMGT".index(m.group(2) or " "))


def k8s_bytes(v):
    """A Kubernetes memory quantity (Ki/Mi/Gi/Ti or k/M/G/T, or plain)."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(v))
    need(m, f"bad quantity {v!r}")
    mult = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return int(m.group(1)) * mult


def docker_bytes(v):
    """Compose memory or tmpfs size=: b, k, m, g suffixes, powers of 1024."""
    m = re.fullmatch(r"(\d+)([bkmgt]?)", str(v).lower())
    need(m, f"bad size {v!r}")
    return int(m.group(1)) << (10 * "bkmgt".index(m.group(2) or "b"))


def engramctl_grammar():
    """(commands, global options) of engramctl, from client/ctl/main.c."""
    src = open(path("client", "ctl", "main.c")).read()
    cmds = set(re.findall(r'\{"([a-z][a-z-]*)",\s*cmd_[a-z_]+,\s*[01]\}', src))
    globs = set(re.findall(r'\{"(--[a-z-]+)",\s*offsetof\(globals', src))
    need(len(cmds) >= 10 and "--local" in globs, "engramctl's tables not found in client/ctl/main.c")
    return cmds, globs


def check_engramctl_argv(argv, where, grammar):
    """argv[0] is engramctl: global options (each with a value), then a
    known command; --local only auto, off or require."""
    cmds, globs = grammar
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, val = argv[i].partition("=")
        need(name in globs, f"{where}: engramctl has no global option {name}")
        if not eq:
            need(i + 1 < len(argv), f"{where}: {name} needs a value")
            val = argv[i + 1]
            i += 1
        if name == "--local":
            need(val in ("auto", "off", "require"), f"{where}: --local {val!r}")
        i += 1
    need(i < len(argv), f"{where}: engramctl without a command")
    need(argv[i] in cmds, f"{where}: engramctl has no command {argv[i]!r}")


def engramctl_calls(text):
    """The engramctl command lines of a shell script, as argv lists (up to
    the first ; & | < > or the end of the line; backslash-newlines joined)."""
    import shlex
    calls = []
    for line in text.replace("\\\n", " ").split("\n"):
        s = line.strip()
        if s.startswith("#") or "engramctl" not in s:
            continue
        lex = shlex.shlex(s[s.index("engramctl"):], posix=True, punctuation_chars=";&|<>")
        lex.whitespace_split = True
        argv = []
        for tok in lex:
            if tok and set(tok) <= set(";&|<>"):
                break
            argv.append(tok)
        calls.append(argv)
    return calls


def argv_lists(node):
    """Every list of strings anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        for v in node.values():
            yield from argv_lists(v)
    elif isinstance(node, list):
        if node and all(isinstance(x, (str, int)) for x in node):
            yield [str(x) for x in node]
        for v in node:
            yield from argv_lists(v)


def all_engramctl(doc, where, grammar):
    """Checks every engramctl call of a document: exec/CMD lists and the
    lines of scripts. Returns how many it found."""
    n = 0
    for lst in argv_lists(doc):
        if lst[0] == "CMD":
            lst = lst[1:]
        if lst and lst[0].endswith("/engramctl"):
            check_engramctl_argv(["engramctl"] + lst[1:], where, grammar)
            n += 1
        for s in lst:
            if "\n" in s or s.startswith("engramctl "):
                for argv in engramctl_calls(s):
                    check_engramctl_argv(argv, where, grammar)
                    n += 1
    return n


NL = path("deploy", "k8s", "node-local")
nl = {}  # (kind, name) -> document of deploy/k8s/node-local


def nl_docs(kind):
    return [d for (k, _), d in nl.items() if k == kind]


def pod_of(doc):
    return doc["spec"]["template"]["spec"]


def all_containers(pod):
    return (pod.get("initContainers") or []) + (pod.get("containers") or [])


def is_server(ctr):
    return bool(ctr.get("command")) and str(ctr["command"][0]).endswith("/engram-server")


def mounts_at(ctr, mount_path):
    return [m for m in ctr.get("volumeMounts") or [] if m["mountPath"] == mount_path]


def pod_volumes(pod):
    return {v["name"]: v for v in pod.get("volumes") or []}


def sec(pod, ctr, key):
    """A securityContext field: the container's, else the pod's."""
    c = ctr.get("securityContext") or {}
    return c[key] if key in c else (pod.get("securityContext") or {}).get(key)


def groups_of(pod, ctr, with_fs_group):
    """The gids the container's processes run with. fsGroup only where the
    volume in question honours it (not a hostPath)."""
    g = {sec(pod, ctr, "runAsGroup")} | set((pod.get("securityContext") or {})
                                            .get("supplementalGroups") or [])
    if with_fs_group:
        g.add((pod.get("securityContext") or {}).get("fsGroup"))
    return {int(x) for x in g if x is not None}


def shm_server(pod, where):
    """(server container, its args, --shm-dir, the mount there, the volume)."""
    servers = [c for c in all_containers(pod) if is_server(c)]
    need(len(servers) == 1, f"{where}: {len(servers)} engram-server containers, want 1")
    srv = servers[0]
    args = [str(a) for a in srv.get("args") or []]
    shm = flag(args, "--shm-dir")
    need(shm and shm.startswith("/"), f"{where}: no absolute --shm-dir")
    ms = mounts_at(srv, shm)
    need(len(ms) == 1, f"{where}: --shm-dir {shm} is not the mountPath of one of its volumes")
    need(not ms[0].get("readOnly"), f"{where}: the server's shm mount is read-only (it writes the files)")
    vol = pod_volumes(pod).get(ms[0]["name"])
    need(vol, f"{where}: volume {ms[0]['name']} not declared")
    return srv, args, shm, ms[0], vol


def mem_limit_covers_budget(srv, args, where):
    lim = ((srv.get("resources") or {}).get("limits") or {}).get("memory")
    need(lim, f"{where}: the server has no memory limit")
    budget = server_bytes(flag(args, "--resident-budget") or "0")
    need(budget > 0, f"{where}: set --resident-budget (the files' size depends on it)")
    need(k8s_bytes(lim) > budget,
         f"{where}: memory limit {lim} does not cover --resident-budget {budget} "
         "(the files' tmpfs pages are charged to the server)")
    return budget


@check("node-local k8s: every deploy/k8s/node-local/*.yaml parses, in deploy/k8s's namespace")
def _():
    files = sorted(f for f in os.listdir(NL) if f.endswith((".yaml", ".yml")))
    need(files, "no YAML files")
    ns = {d["metadata"].get("namespace") for (k, _), d in k8s.items() if k != "Namespace"}
    for f in files:
        docs = load_yaml_docs(os.path.join(NL, f))
        need(docs, f"{f} is empty")
        for d in docs:
            for k in ("apiVersion", "kind", "metadata"):
                need(k in d, f"{f}: a document lacks {k}")
            need(d["metadata"].get("name"), f"{f}: {d['kind']} without a name")
            need({d["metadata"].get("namespace")} == ns,
                 f"{f}: {d['kind']} {d['metadata']['name']} not in namespace {ns}")
            nl[(d["kind"], d["metadata"]["name"])] = d
    need(len(nl_docs("DaemonSet")) == 1, "want one DaemonSet")
    need(len(nl_docs("Service")) == 1, "want one Service")
    need(len(nl_docs("Deployment")) >= 2, "want a worker Deployment and a sidecar Deployment")


@check("engram-server flags: every server command line names only options it accepts")
def _():
    opts = server_options()
    n = 0
    for name, svc in server_services.items():
        check_server_argv(svc["command"], f"docker-compose.yml {name}", opts)
        n += 1
    sts_args = one("StatefulSet")["spec"]["template"]["spec"]["containers"][0].get("args") or []
    check_server_argv(sts_args, "statefulset.yaml", opts)  # after docker-entrypoint.sh's own
    n += 1
    for (kind, name), d in nl.items():
        if "template" in d.get("spec", {}):
            for c in all_containers(pod_of(d)):
                if is_server(c):
                    check_server_argv(c.get("args") or [], f"node-local {kind} {name}", opts)
                    n += 1
    with open(path("deploy", "compose", "node-local.yml")) as f:
        for name, svc in (yaml.safe_load(f).get("services") or {}).items():
            if "--shm-dir" in [str(a) for a in svc.get("command") or []]:
                check_server_argv(svc["command"], f"node-local.yml {name}", opts)
                n += 1
    with open(path("deploy", "systemd", "engram-server.service")) as f:
        exe = [l.split("=", 1)[1].split() for l in f if l.startswith("ExecStart=")]
    need(exe, "no ExecStart")
    check_server_argv(exe[-1][1:], "engram-server.service", opts)
    n += 1
    with open(path("deploy", "systemd", "engram.env")) as f:
        for l in f:
            if l.startswith("ENGRAM_OPTS="):
                check_server_argv(l.split("=", 1)[1].split(), "engram.env", opts)
    need(n >= 10, f"only {n} server command lines found")


@check("engramctl calls: known commands and global options, --local auto|off|require")
def _():
    grammar = engramctl_grammar()
    n = sum(all_engramctl(d, f"node-local {k} {name}", grammar) for (k, name), d in nl.items())
    n += sum(all_engramctl(d, f"deploy/k8s {k} {name}", grammar) for (k, name), d in k8s.items())
    for f in ("docker-compose.yml", os.path.join("deploy", "compose", "node-local.yml")):
        with open(path(f)) as fh:
            n += all_engramctl(yaml.safe_load(fh), f, grammar)
    need(n >= 20, f"only {n} engramctl calls found: the parser lost them")


@check("node-local k8s: DaemonSet server's --shm-dir is its hostPath tmpfs mount, files grouped for readers")
def _():
    ds = nl_docs("DaemonSet")[0]
    pod = pod_of(ds)
    srv, args, shm, _, vol = shm_server(pod, "DaemonSet")
    hp = vol.get("hostPath")
    need(hp, "the DaemonSet's shm volume is not a hostPath (pods of other workloads cannot share it)")
    need(hp.get("type") in ("Directory", "DirectoryOrCreate"), f"hostPath type {hp.get('type')}")
    # DirectoryOrCreate anywhere but under /dev/shm could put the tables on
    # the node's disk, unless an init container refuses a non-tmpfs.
    preps = [c for c in pod.get("initContainers") or []
             if any(m["name"] == vol["name"] for m in c.get("volumeMounts") or [])]
    need(hp["path"].startswith("/dev/shm/") or
         any("tmpfs" in " ".join(map(str, c.get("args") or [])) for c in preps),
         f"hostPath {hp['path']} is not under /dev/shm and nothing checks it is a tmpfs")
    mem_limit_covers_budget(srv, args, "DaemonSet")
    gid = flag(args, "--shm-group")
    need(gid and gid.isdigit(), "--shm-group must be a numeric gid (readers' pods name it by number)")
    need(int(gid) in groups_of(pod, srv, with_fs_group=False),
         f"the server is not in group {gid} (supplementalGroups/runAsGroup; "
         "fsGroup does not apply to a hostPath), so it cannot give its files that group")
    # The kubelet makes a DirectoryOrCreate hostPath root-owned: something
    # must give it to the server's user and the readers' group.
    uid = sec(pod, srv, "runAsUser")
    owned = False
    for c in preps:
        script = " ".join(map(str, (c.get("command") or []) + (c.get("args") or [])))
        where = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == vol["name"]][0]
        for u, g, p in re.findall(r"chown\s+(\d+):(\d+)\s+(\S+)", script):
            if p.rstrip("/") == where.rstrip("/"):
                need((int(u), g) == (uid, gid),
                     f"{c['name']} chowns the shm dir to {u}:{g}, the server is {uid} with --shm-group {gid}")
                owned = True
                need(re.search(r"chmod\s+0?750\s+" + re.escape(where), script),
                     f"{c['name']} must make the shm dir 0750 (the server alone writes, its group alone reads)")
                caps = ((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
                need("CHOWN" in caps, f"{c['name']} chowns without CAP_CHOWN")
    need(owned, "no init container chowns the shm hostPath to the server")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    need(subset(ds["spec"]["selector"]["matchLabels"], labels), "selector does not match the pods")
    # The cluster's headless Service and PDB must not take these pods in.
    need(not subset(one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels),
         "the cluster's PDB selects the node-local pods")
    for (k, _), d in k8s.items():
        if k == "Service":
            need(not subset(d["spec"].get("selector") or {}, labels),
                 f"the cluster's Service {d['metadata']['name']} selects the node-local pods")


@check("node-local k8s: the Service keeps traffic on the node (internalTrafficPolicy: Local)")
def _():
    ds, svc = nl_docs("DaemonSet")[0], nl_docs("Service")[0]
    spec = svc["spec"]
    need(spec.get("internalTrafficPolicy") == "Local",
         "internalTrafficPolicy must be Local (a worker must reach its own node's server)")
    need(spec.get("clusterIP") != "None", "a headless Service ignores internalTrafficPolicy")
    need(spec.get("type", "ClusterIP") == "ClusterIP", f"type {spec.get('type')}")
    need(subset(spec["selector"], ds["spec"]["template"]["metadata"]["labels"]),
         "the Service does not select the DaemonSet's pods")
    srv = shm_server(pod_of(ds), "DaemonSet")[0]
    ports = spec["ports"]
    need(len(ports) == 1 and ports[0]["port"] == PORT, f"want one port {PORT}")
    need(container_port(srv, ports[0].get("targetPort", PORT)) == PORT, "targetPort")
    listen = flag([str(a) for a in srv.get("args") or []], "--listen") or ""
    need(listen == f"0.0.0.0:{PORT}", f"--listen {listen!r}: the Service needs the pod IP")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = srv.get(probe)
        need(p and container_port(srv, p["grpc"]["port"]) == PORT, f"{probe}")


@check("node-local k8s: workers mount the DaemonSet's hostPath at its --shm-dir, read-only, "
       "with the files' group, on the same nodes, via the node-local Service")
def _():
    ds, svc = nl_docs("DaemonSet")[0], nl_docs("Service")[0]
    dpod = pod_of(ds)
    srv, args, shm, _, vol = shm_server(dpod, "DaemonSet")
    gid = int(flag(args, "--shm-group"))
    address = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local:{PORT}"
    workers = [d for d in nl_docs("Deployment") if not any(map(is_server, all_containers(pod_of(d))))]
    need(workers, "no worker Deployment without a server of its own")
    for w in workers:
        name = w["metadata"]["name"]
        pod = pod_of(w)
        need(subset(dpod.get("nodeSelector") or {}, pod.get("nodeSelector") or {}) or
             not dpod.get("nodeSelector"),
             f"{name}: nodeSelector does not confine it to the DaemonSet's nodes")
        vols = pod_volumes(pod)
        for c in pod["containers"]:
            ms = mounts_at(c, shm)
            need(len(ms) == 1, f"{name}/{c['name']}: does not mount anything at {shm}")
            v = vols.get(ms[0]["name"]) or {}
            got = (v.get("hostPath") or {}).get("path")
            need(got == vol["hostPath"]["path"],
                 f"{name}/{c['name']}: mounts hostPath {got} at {shm}, "
                 f"the DaemonSet's is {vol['hostPath']['path']}")
            need(ms[0].get("readOnly") is True, f"{name}/{c['name']}: mount {shm} readOnly")
            need(gid in groups_of(pod, c, with_fs_group=False) or
                 sec(pod, c, "runAsUser") == sec(dpod, srv, "runAsUser"),
                 f"{name}/{c['name']}: neither in group {gid} (supplementalGroups) nor the server's user")
            text = json.dumps(c)
            need(address in text, f"{name}/{c['name']}: does not use the node-local Service {address}")


@check("node-local k8s: sidecar pod: server's --shm-dir on a sized memory emptyDir, "
       "workers mount it there read-only")
def _():
    sidecars = [d for d in nl_docs("Deployment") if any(map(is_server, all_containers(pod_of(d))))]
    need(sidecars, "no Deployment with a server sidecar")
    for d in sidecars:
        name = d["metadata"]["name"]
        pod = pod_of(d)
        srv, args, shm, _, vol = shm_server(pod, name)
        ed = vol.get("emptyDir")
        need(ed and ed.get("medium") == "Memory", f"{name}: shm volume is not an emptyDir of medium Memory")
        need(ed.get("sizeLimit"), f"{name}: the memory emptyDir has no sizeLimit "
             "(it would take up to the pod's memory limit)")
        budget = mem_limit_covers_budget(srv, args, name)
        need(k8s_bytes(ed["sizeLimit"]) >= budget,
             f"{name}: sizeLimit {ed['sizeLimit']} < --resident-budget: files would not fit")
        if srv in (pod.get("initContainers") or []):
            need(srv.get("restartPolicy") == "Always",
                 f"{name}: a server among initContainers must be a native sidecar (restartPolicy: Always)")
        gid = flag(args, "--shm-group")
        listen = flag(args, "--listen") or ""
        need(listen.endswith(f":{PORT}"), f"{name}: --listen {listen!r}")
        workers = [c for c in pod["containers"] if not is_server(c)]
        need(workers, f"{name}: no worker container beside the server")
        for c in workers:
            ms = mounts_at(c, shm)
            need(len(ms) == 1 and ms[0]["name"] == vol.get("name"),
                 f"{name}/{c['name']}: does not mount the shm emptyDir at {shm}")
            need(ms[0].get("readOnly") is True, f"{name}/{c['name']}: mount {shm} readOnly")
            if gid:
                need(int(gid) in groups_of(pod, c, with_fs_group=True) or
                     sec(pod, c, "runAsUser") == sec(pod, srv, "runAsUser"),
                     f"{name}/{c['name']}: cannot read files of group {gid}")
            need(f"127.0.0.1:{PORT}" in json.dumps(c) or listen.split(":")[0] in json.dumps(c),
                 f"{name}/{c['name']}: does not talk to the sidecar")
        if gid:
            need(int(gid) in groups_of(pod, srv, with_fs_group=True),
                 f"{name}: the server is not in group {gid}")


def inline_scripts(doc, compose_file):
    """(shell, script) of every `SHELL -c`/`-ec` command with its script in
    the next element, in a k8s container (command + args) or a compose
    service (entrypoint + command); compose's $$ is one $ to the shell."""
    found = []
    ctrs = []
    if compose_file:
        for svc in (doc.get("services") or {}).values():
            ep = svc.get("entrypoint") or []
            cmd = svc.get("command") or []
            if isinstance(ep, list) and isinstance(cmd, list):
                ctrs.append([str(x) for x in ep + cmd])
    elif "template" in doc.get("spec", {}):
        for c in all_containers(pod_of(doc)):
            ctrs.append([str(x) for x in (c.get("command") or []) + (c.get("args") or [])])
    for argv in ctrs:
        if len(argv) >= 3 and argv[0].endswith(("/sh", "/bash")) and re.fullmatch(r"-e?c", argv[1]):
            script = argv[2].replace("$$", "$") if compose_file else argv[2]
            found.append((argv[0], script))
    return found


@check("node-local: the inline shell scripts parse (sh -n)")
def _():
    n = 0
    docs = [(f"node-local {k} {name}", d, False) for (k, name), d in nl.items()]
    with open(path("deploy", "compose", "node-local.yml")) as f:
        docs.append(("node-local.yml", yaml.safe_load(f), True))
    for where, d, is_compose in docs:
        for shell, script in inline_scripts(d, is_compose):
            r = subprocess.run([shell, "-n", "-c", script], capture_output=True, text=True)
            need(r.returncode == 0, f"{where}: {shell} -n: {r.stderr.strip()}")
            n += 1
    need(n >= 6, f"only {n} scripts found")


def compose_mount(v):
    """(source, target, read_only) of a compose volume, short or long syntax."""
    if isinstance(v, dict):
        return v.get("source"), v["target"], bool(v.get("read_only"))
    parts = str(v).split(":")
    need(len(parts) in (2, 3), f"bad volume {v!r}")
    return parts[0], parts[1], len(parts) == 3 and "ro" in parts[2].split(",")


@check("node-local compose: server's --shm-dir is its tmpfs volume's mount; workers mount it there read-only")
def _():
    with open(path("deploy", "compose", "node-local.yml")) as f:
        c = yaml.safe_load(f)
    svcs, vols = c.get("services") or {}, c.get("volumes") or {}
    servers = {n: s for n, s in svcs.items() if "--shm-dir" in [str(a) for a in s.get("command") or []]}
    need(len(servers) == 1, f"{len(servers)} services with --shm-dir, want 1")
    sname, srv = next(iter(servers.items()))
    args = [str(a) for a in srv["command"]]
    shm = flag(args, "--shm-dir")
    mounts = [compose_mount(v) for v in srv.get("volumes") or []]
    at = [m for m in mounts if m[1] == shm]
    need(len(at) == 1, f"{sname}: --shm-dir {shm} is not a volume's mount point")
    src, _, ro = at[0]
    need(not ro, f"{sname}: shm mount is read-only (the server writes the files)")
    budget = server_bytes(flag(args, "--resident-budget") or "0")
    need(budget > 0, f"{sname}: set --resident-budget")
    gid = flag(args, "--shm-group")
    need(gid and gid in [str(g) for g in srv.get("group_add") or []],
         f"{sname}: --shm-group {gid} but not in group_add: it cannot give its files that group")
    if src.startswith("/"):
        need(src.startswith("/dev/shm/"), f"{sname}: bind {src} is not under /dev/shm (not a tmpfs)")
    else:
        need(src in vols, f"volume {src} not declared")
        o = (vols[src] or {}).get("driver_opts") or {}
        need(o.get("type") == "tmpfs", f"volume {src} is not a tmpfs")
        opts = dict(kv.split("=", 1) for kv in str(o.get("o", "")).split(",") if "=" in kv)
        need("size" in opts and docker_bytes(opts["size"]) >= budget,
             f"volume {src}: size {opts.get('size')} < --resident-budget")
        need(opts.get("uid") == "10001", "the tmpfs must belong to the image's user 10001")
        need(opts.get("gid") == gid, f"the tmpfs's group {opts.get('gid')} is not --shm-group {gid}")
        need(not int(opts.get("mode", "1777"), 8) & 0o002, "the tmpfs must not be world-writable")
    lim = ((srv.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    need(lim.get("memory") and docker_bytes(lim["memory"]) > budget,
         f"{sname}: memory limit must cover --resident-budget (the files are charged to it)")
    workers = {n: s for n, s in svcs.items() if n != sname and "--local" in json.dumps(s)}
    need(workers, "no worker service (one that runs with --local)")
    for n, s in workers.items():
        wm = [compose_mount(v) for v in s.get("volumes") or []]
        need([m for m in wm if m[1] == shm] == [(src, shm, True)],
             f"{n}: must mount {src} at {shm} read-only, mounts {wm}")
        need(gid in [str(g) for g in s.get("group_add") or []] or
             str(s.get("user", "10001")).split(":")[0] == "10001",
             f"{n}: cannot read files of group {gid}")
        need(f"{sname}:{PORT}" in json.dumps(s), f"{n}: does not talk to {sname}:{PORT}")
        need(s.get("image") == srv.get("image") or "build" in s, f"{n}: image")
    need(flag(args, "--listen") == f"0.0.0.0:{PORT}", f"{sname}: --listen")


@check("deploy/README.md: names the node-local files and has the section")
def _():
    text = open(path("deploy", "README.md")).read()
    need("## Node-local copies vs remote shards" in text, "no section 'Node-local copies vs remote shards'")
    need("(#node-local-copies-vs-remote-shards)" in text, "the section is not linked")
    for f in sorted(os.listdir(NL)) + ["compose/node-local.yml"]:
        need(f in text, f"deploy/README.md does not mention {f}")


# ---------------------------------------------------------------- systemd

@check("systemd: engram-server.service has the hardening keys")
def _():
    sections, cur = {}, None
    with open(path("deploy", "systemd", "engram-server.service")) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                cur = sections.setdefault(line.strip("[]"), {})
                continue
            k, _, v = line.partition("=")
            cur.setdefault(k.strip(), []).append(v.strip())
    svc = sections.get("Service")
    need(svc, "no [Service]")
    need("Unit" in sections and "Install" in sections, "[Unit] and [Install] needed")

    def last(k):
        need(k in svc, f"no {k}")
        return svc[k][-1]

    need(last("DynamicUser") == "yes" or svc.get("User", ["root"])[-1] not in ("root", "0", ""),
         "needs DynamicUser=yes or a non-root User=")
    need(last("StateDirectory") == "engram", "StateDirectory=engram")
    need(last("ProtectSystem") == "strict", "ProtectSystem=strict")
    for k in ("ProtectHome", "PrivateTmp", "NoNewPrivileges", "MemoryDenyWriteExecute"):
        need(last(k) == "yes", f"{k}=yes")
    need(last("CapabilityBoundingSet") == "", "CapabilityBoundingSet= must be empty")
    need(set(last("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"},
         "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX")
    need("@system-service" in svc.get("SystemCallFilter", [""])[0].split(),
         "SystemCallFilter=@system-service")
    need(int(last("LimitNOFILE")) >= 65536, "LimitNOFILE")
    need(last("KillSignal") == "SIGTERM", "KillSignal=SIGTERM")
    need(duration_s(last("TimeoutStopSec")) > SERVER_GRACE_S, "TimeoutStopSec > server grace")
    need(any(e.lstrip("-") == "/etc/engram/engram.env" for e in svc.get("EnvironmentFile", [])),
         "EnvironmentFile=/etc/engram/engram.env")
    exe = last("ExecStart").split()
    need(exe[0].endswith("/engram-server"), "ExecStart must run engram-server")
    need("--data" in exe and exe[exe.index("--data") + 1].startswith("/var/lib/engram"),
         "--data must be in the StateDirectory")


# ---------------------------------------------------------------- Dockerfile

def dockerfile_lines():
    """deploy/Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines, cont = [], ""
    with open(path("deploy", "Dockerfile")) as f:
        for raw in f:
            s = raw.rstrip("\n")
            if not cont and s.lstrip().startswith("#"):
                continue
            if s.endswith("\\"):
                cont += s[:-1] + " "
                continue
            s = (cont + s).strip()
            cont = ""
            if s:
                lines.append(s)
    return lines


def runtime_stage_packages():
    """Words of the last stage's `apt-get install` commands (packages and flags)."""
    lines = dockerfile_lines()
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    final = lines[lines.index(froms[-1]):]
    words = set()
    for l in final:
        if l.upper().startswith("RUN"):
            for cmd in re.split(r"&&|;", l[3:]):
                if re.search(r"\bapt-get\s+install\b", cmd):
                    words.update(w for w in cmd.split() if not w.startswith("-"))
    return words


@check("Dockerfile: two debian:12 stages, non-root USER, ENTRYPOINT engram-server")
def _():
    lines = dockerfile_lines()
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    need(len(froms) >= 2, f"{len(froms)} FROM stages, want a build and a runtime stage")
    for l in froms:
        need(re.match(r"FROM\s+debian:12(-slim)?(\s|$)", l, re.I), f"not Debian 12: {l}")
    final = lines[lines.index(froms[-1]):]
    build = lines[lines.index(froms[0]):lines.index(froms[1])]
    need(any("scripts/install-deps.sh" in l for l in build if l.upper().startswith("RUN")),
         "the build stage must run scripts/install-deps.sh")
    users = [l.split(None, 1)[1] for l in final if l.upper().startswith("USER ")]
    need(users and users[-1].split(":")[0] not in ("root", "0"), f"USER {users}")
    ep = [l.split(None, 1)[1] for l in final if l.upper().startswith("ENTRYPOINT ")]
    need(ep, "no ENTRYPOINT")
    argv = json.loads(ep[-1])
    need(argv[0].endswith("/engram-server"), f"ENTRYPOINT {argv}")
    need(any(l.upper().startswith("EXPOSE") and str(PORT) in l.split() for l in final), "EXPOSE 7070")
    need(any(l.upper().startswith("VOLUME") for l in final), "no VOLUME")
    copies = " ".join(l for l in final if l.upper().startswith("COPY"))
    need("engramctl" in copies and "engram-server" in copies, "engramctl and engram-server not copied")
    need(not any(re.search(r"-dev\b", l) for l in final if l.upper().startswith("RUN")),
         "runtime stage installs -dev packages")
    for l in final:
        m = re.match(r"COPY\s+(?!--from)(\S+)\s", l, re.I)
        if m:
            need(os.path.exists(path(m.group(1))), f"COPY source {m.group(1)} missing")


# Packages the runtime stage may leave out although a binary links one of
# their libraries: debian:12-slim always carries them, because an Essential
# or Priority: required package of the base image depends on them directly.
# Each claim is checked against this host's dpkg database (Debian 12).
IN_BASE_IMAGE = {
    "libc6": ("dpkg", "Pre-Depends of dpkg, which is Essential: yes"),
    "libgcc-s1": ("apt", "Depends of apt, which is Priority: required"),
    "libstdc++6": ("apt", "Depends of apt, which is Priority: required"),
}


def built_binary(flag_name, rel):
    """A built binary: from the command line, else from the CMake build tree
    that contains the working directory (ctest runs in it)."""
    given = arg(flag_name)
    if given:
        return given
    d = os.getcwd()
    while d != os.path.dirname(d):
        if os.path.exists(os.path.join(d, "CMakeCache.txt")):
            return os.path.join(d, rel)
        d = os.path.dirname(d)
    raise AssertionError(f"no {flag_name} given and {os.getcwd()} is not in a CMake build tree")


def needed_libraries(binary):
    """{soname: resolved path} of the binary's own NEEDED entries."""
    need(os.access(binary, os.X_OK), f"{binary} is not built")
    dyn = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True).stdout
    names = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn)
    need(names, f"{binary}: no NEEDED entries (a static binary needs no runtime packages)")
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    where = dict(re.findall(r"^\s*(\S+) => (/\S+)", ldd, re.M))
    missing = [n for n in names if n not in where]
    need(not missing, f"{binary}: ldd does not resolve {missing}")
    return {n: where[n] for n in names}


def owning_package(lib_path):
    """Debian package that ships a library; tries the path as given and its
    real path, since usrmerge registers files under /lib or /usr/lib."""
    for p in dict.fromkeys([lib_path, os.path.realpath(lib_path)]):
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":", 1)[0].strip()
    raise AssertionError(f"dpkg -S finds no package for {lib_path}")


def dpkg_fields(pkg, fields):
    fmt = "\t".join("${" + f + "}" for f in fields)
    out = subprocess.run(["dpkg-query", "-W", "-f=" + fmt, pkg], capture_output=True,
                         text=True, check=True).stdout
    return dict(zip(fields, out.split("\t")))


@check("Dockerfile: packages left to the base image are Essential/required dependencies")
def _():
    for pkg, (holder, why) in IN_BASE_IMAGE.items():
        f = dpkg_fields(holder, ["Essential", "Priority", "Pre-Depends", "Depends"])
        need(f["Essential"] == "yes" or f["Priority"] == "required",
             f"{pkg}: {holder} is neither Essential nor Priority: required ({why})")
        deps = {d.split()[0].split(":")[0] for d in
                re.split(r"[,|]", f["Pre-Depends"] + "," + f["Depends"]) if d.strip()}
        need(pkg in deps, f"{pkg}: not a dependency of {holder} ({why})")


@check("Dockerfile: runtime stage installs the package of every library the binaries link")
def _():
    installed = runtime_stage_packages()
    need("install" in installed, "the runtime stage runs no apt-get install")
    libs = {}
    for flag_name, rel in (("--server-bin", "server/engram-server"),
                           ("--engramctl", "client/engramctl")):
        libs.update(needed_libraries(built_binary(flag_name, rel)))
    # The image builds without sanitizers; an ASan/UBSan build links other
    # libraries (libasan, libubsan, gRPC's own dependencies directly), so
    # only a plain build's binaries speak for it. CI runs the plain build
    # too, where this check is made.
    if any(n.startswith(("libasan.so", "libubsan.so")) for n in libs):
        print("     (sanitizer build: the package check is made on the plain build)")
        return
    missing = []
    for soname, lib_path in sorted(libs.items()):
        pkg = owning_package(lib_path)
        arch_free = pkg.split(":")[0]
        if arch_free not in installed and arch_free not in IN_BASE_IMAGE:
            missing.append(f"{arch_free} ({soname})")
    need(not missing, "runtime stage does not install " + ", ".join(missing))


print(f"{len(passed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
