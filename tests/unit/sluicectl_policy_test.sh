#!/usr/bin/env bash
# sluicectl policy check / explain / diff / status as a user runs them: exit codes and what they print.
#   sluicectl_policy_test.sh <sluicectl> <repo root>
set -uo pipefail
ctl=$1
root=$2
ex=$root/policies/examples/rag-two-tenants
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0

expect() {  # expect <name> <want exit> <regex on stdout+stderr> -- command...
    local name=$1 want=$2 re=$3
    shift 4
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    if [[ $rc -ne $want ]] || ! grep -Eq -- "$re" <<<"$out"; then
        echo "FAIL $name: exit $rc (want $want), output:"
        echo "$out"
        fails=$((fails + 1))
    else
        echo "ok   $name"
    fi
}

expect "check examples" 0 "0 errors" -- "$ctl" policy check "$ex/policies" --registry "$ex/registry"
printf 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n  - from:\n    - source: {ipBlocks: [10.0.0.0/33]}\n' >"$tmp/bad.yaml"
expect "check positioned error" 1 "bad.yaml:7:[0-9]+: error: .*10.0.0.0/33" -- "$ctl" policy check "$tmp/bad.yaml"
expect "check yaml syntax" 1 "broken.yaml:[0-9]+:[0-9]+: error: YAML syntax" -- \
    "$ctl" policy check "$root/tests/fuzz/corpus/policy/broken.yaml"
expect "explain allow" 0 "ztunnel: ALLOW.*" -- "$ctl" policy explain --from tenant-a/frontend \
    --to tenant-a/retriever --port 8080 --policies "$ex/policies" --registry "$ex/registry"
expect "explain boundary deny" 1 "kernel egress .*DENY.*IsolationBoundary tenant-b" -- \
    "$ctl" policy explain --from tenant-b/frontend --to tenant-a/retriever --port 8080 \
    --policies "$ex/policies" --registry "$ex/registry"
expect "explain unresolved" 2 "no such pod" -- "$ctl" policy explain --from tenant-a/frontend \
    --to tenant-a/nope --port 80 --policies "$ex/policies" --registry "$ex/registry"
expect "explain to an address the pod lacks" 2 "--to-ip 198.51.100.9: not an address of" -- \
    "$ctl" policy explain --from tenant-a/frontend --to tenant-a/retriever --port 8080 \
    --to-ip 198.51.100.9 --policies "$ex/policies" --registry "$ex/registry"
cp -r "$ex/policies" "$tmp/new"
sed -i 's/ports: \["6333"\]/ports: ["6334"]/' "$tmp/new/20-tenant-a.yaml"
expect "diff" 1 "~ AuthorizationPolicy tenant-a/vector-db" -- \
    "$ctl" policy diff "$ex/policies" "$tmp/new" --registry "$ex/registry"
expect "diff same" 0 "" -- "$ctl" policy diff "$ex/policies" "$ex/policies"
# policy status reads the agent's run dir (the netns test covers what a running agent writes).
expect "status without an agent" 2 "no policy status at $tmp/run/policy-status.json" -- \
    "$ctl" policy status --run-dir "$tmp/run"
mkdir -p "$tmp/run"
echo '{"generation": 3, "appliedGeneration": 3, "applyError": "", "policyDir": "/p", "objects": 2,
 "kernelPolicyEntries": 5, "ipcacheEntries": 4, "lastSuccessTime": "2026-11-26T21:00:00.000000Z",
 "reloads": {"success": 3, "unchanged": 0, "failure": 1},
 "lastReload": {"result": "failure", "time": "2026-11-26T21:00:01.000000Z", "warnings": [],
  "errors": [{"text": "/p/a.yaml:4:9: error: expected a list"}]}}' >"$tmp/run/policy-status.json"
expect "status after a failed reload" 1 "/p/a.yaml:4:9: error: expected a list" -- \
    "$ctl" policy status --run-dir "$tmp/run"
SLUICE_RUN_DIR=$tmp/run expect "status from SLUICE_RUN_DIR" 1 "generation 3 stays in force" -- \
    "$ctl" policy status
exit $((fails > 0))
