#!/usr/bin/env bash
# Installs every Debian 12 package that sluice's build, tests, demo and benchmark need.
# Idempotent: when everything is present it only checks, so it is cheap to call from every script.
set -euo pipefail

PACKAGES=(
    # toolchain
    build-essential cmake ninja-build pkg-config git clang llvm clang-format
    # libFuzzer runtime for scripts/fuzz-policies.sh (clang++ -fsanitize=fuzzer)
    libclang-rt-14-dev
    # eBPF
    libbpf-dev bpftool libelf-dev zlib1g-dev
    # libraries of the design card
    libboost-dev libboost-system-dev libssl-dev libspdlog-dev libfmt-dev prometheus-cpp-dev
    libgtest-dev libgmock-dev libyaml-cpp-dev libnghttp2-dev nlohmann-json3-dev libcli11-dev
    libcivetweb-dev
    # waypoint: JSON on the per-request path (SAX usage reader, request bodies); header-only
    rapidjson-dev
    # testbed, demo and tests
    iproute2 iptables containernetworking-plugins procps util-linux iputils-ping curl python3
    # certificates for the waypoint TLS listener tests (the openssl CLI)
    openssl
    # waypoint: node (with npm; the nodesource build here bundles it) generates the Unicode
    # table and runs the npm tiktoken package (rank files, exactness reference)
    nodejs
    # benchmark peers and tools
    nginx-light wrk iperf3 nghttp2-client haproxy tshark
    # PNG plots of the benchmark results (bench/plot.py, run with /usr/bin/python3)
    python3-matplotlib
    # instructions per operation (bench/waypoint/json_instructions.sh)
    valgrind
    # independent HBONE peer in the interop test
    python3-h2
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

# npm part: the tokenizer's rank files and reference package (npm tiktoken), into the build tree.
fetch_tokenizer_data() {
    if command -v npm >/dev/null; then
        "$(dirname "$0")/fetch-tokenizer-data.sh"
    fi
}

if ((${#missing[@]} == 0)); then
    fetch_tokenizer_data
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing packages: ${missing[*]}" >&2
    echo "install-deps: run as root (sudo $0) to install them" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer no without a prompt.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
fetch_tokenizer_data
