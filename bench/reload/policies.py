#!/usr/bin/env python3
"""Policies and registry for bench/reload (stdlib only).

  policies.py registry DIR             1000 extra workloads (50 namespaces x 20 pods on nodes
                                       node0..node9) as v1 Pod documents, so the compiled
                                       generations have real kernel entries on the testbed's
                                       node0/node1 and on eight nodes that are not there
  policies.py publish DIR GEN          one kubelet-style ConfigMap swap of generation GEN into DIR
  policies.py reload-loop DIR FIRST COUNT GAP LOG STOP STATUS...
                                       COUNT swaps (generations FIRST..): each waits until every
                                       agent STATUS file (policy-status.json) shows the previous
                                       one in the maps, then GAP s more; LOG gets "generation
                                       rename_unix_time in_force_unix_time" per swap; STOP is
                                       created at the end (the load generator's --stop-file)

Every generation has 10 010 rules: 1000 AuthorizationPolicies (one per extra workload, 10 rules:
principals, namespaces, notNamespaces, ipBlocks) whose ports rotate with the generation, so
every generation changes every one of them, plus the bench's own traffic rules, which never
change in meaning: web/server ALLOWs namespace `load` on 8080 (and a DENY on unrelated ipBlocks
that moves with the generation, so the server's own map entries change on each swap too).
"""
import json
import os
import random
import shutil
import sys
import time

NAMESPACES, PODS, RULES, NODES = 50, 20, 10, 10
PORTS = [80, 443, 5432, 6333, 8000, 8080, 9090, 9100]


def registry(out_dir):
    for n in range(NAMESPACES):
        for p in range(PODS):
            host = n * PODS + p
            name, ns = f"w{p}", f"ghost{n}"
            doc = (f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
                   f"  uid: ghost-{host}\n  labels: {{app: {name}}}\n"
                   f"spec:\n  nodeName: node{host % NODES}\n  serviceAccountName: sa{p}\n"
                   f"status:\n  phase: Running\n  podIP: 198.19.{64 + host // 250}.{host % 250 + 2}\n")
            tmp = os.path.join(out_dir, f".pod.{ns}.{name}.yaml.tmp")
            with open(tmp, "w") as f:
                f.write(doc)
            os.rename(tmp, os.path.join(out_dir, f"pod.{ns}.{name}.yaml"))


def generation(gen):
    docs = [f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-load, namespace: web}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{namespaces: [load]}}}}], to: [{{operation: {{ports: ["8080"]}}}}]}}]
""", f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-abusers, namespace: web}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: DENY
  rules:
""" + "".join(f"""    - from: [{{source: {{ipBlocks: ["198.19.{200 + (gen + r) % 50}.0/24"]}}}}]
      to: [{{operation: {{ports: ["{9000 + (gen + r) % 100}"]}}}}]
""" for r in range(RULES))]
    rng = random.Random(42)  # the same policies every generation; only their ports move
    for n in range(NAMESPACES):
        for p in range(PODS):
            action = "DENY" if rng.randrange(10) == 0 else "ALLOW"
            rules = []
            for r in range(RULES):
                kind = rng.randrange(4)
                if kind == 0:
                    src = f'principals: ["cluster.local/ns/ghost{rng.randrange(NAMESPACES)}/sa/sa{rng.randrange(PODS)}"]'
                elif kind == 1:
                    src = f"namespaces: [ghost{rng.randrange(NAMESPACES)}]"
                elif kind == 2:
                    src = f'ipBlocks: ["198.19.{160 + rng.randrange(32)}.0/24"]'
                else:
                    src = f"notNamespaces: [ghost{rng.randrange(NAMESPACES)}]"
                port = PORTS[(rng.randrange(len(PORTS)) + gen) % len(PORTS)]
                rules.append(f'    - {{from: [{{source: {{{src}}}}}], to: [{{operation: {{ports: ["{port}"]}}}}]}}\n')
            docs.append(f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: w{p}-policy, namespace: ghost{n}}}
spec:
  selector: {{matchLabels: {{app: w{p}}}}}
  action: {action}
  rules:
""" + "".join(rules))
    return "---\n".join(docs)


def publish(out_dir, gen):
    """kubelet's atomic update: new timestamped dir, ..data_tmp symlink renamed over ..data."""
    ts = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{gen}"
    os.mkdir(os.path.join(out_dir, ts))
    with open(os.path.join(out_dir, ts, "policies.yaml"), "w") as f:
        f.write(generation(gen))
    data, tmp = os.path.join(out_dir, "..data"), os.path.join(out_dir, "..data_tmp")
    old = os.readlink(data) if os.path.islink(data) else None
    os.symlink(ts, tmp)
    os.rename(tmp, data)
    renamed = time.time()
    link = os.path.join(out_dir, "policies.yaml")
    if not os.path.islink(link):
        os.symlink("..data/policies.yaml", link)
    if old:
        shutil.rmtree(os.path.join(out_dir, old))
    return renamed


def main():
    cmd = sys.argv[1]
    if cmd == "registry":
        registry(sys.argv[2])
    elif cmd == "publish":
        publish(sys.argv[2], int(sys.argv[3]))
    elif cmd == "reload-loop":
        out_dir, first, count, gap, log, stop = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6], sys.argv[7]
        status_files = sys.argv[8:]

        def applied():
            out = []
            for path in status_files:
                try:
                    with open(path) as f:
                        out.append(json.load(f)["appliedGeneration"])
                except (OSError, ValueError, KeyError):
                    out.append(-1)
            return out

        with open(log, "w") as f:
            for i in range(count):
                before = applied()
                renamed = publish(out_dir, first + i)
                deadline, in_force = time.monotonic() + 60, None
                while time.monotonic() < deadline:
                    if all(a > b for a, b in zip(applied(), before)):
                        in_force = time.time()
                        break
                    time.sleep(0.01)
                f.write(f"{first + i} {renamed:.6f} {in_force or 0:.6f}\n")
                f.flush()
                if in_force is None:
                    break  # the agents never applied it: the report says so
                time.sleep(gap)
        open(stop, "w").close()
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
