#!/usr/bin/env bash
# Provisions the meshcap Vagrant node and runs the cluster end-to-end test there. Called by
# vagrant/Vagrantfile, one step per provisioner, as root inside the VM:
#
#   provision.sh kernel    install the pinned kernel and make it GRUB's default (then reboot)
#   provision.sh cluster   containerd + kubeadm/kubelet/kubectl, a single-node control plane,
#                          flannel as the primary CNI
#   provision.sh meshcap   build meshcap from the synced checkout, chain it after flannel with
#                          `meshcap install`
#   provision.sh e2e       the cluster test: for every mode, sidecar-annotated pods created
#                          by the kubelet (CNI ADD), their rules checked while they run, the
#                          flows through them recorded, the pods deleted (CNI DEL) and the
#                          rules checked gone; then the flows compared across modes
#
# Debian packages come from Debian; kubelet/kubeadm/kubectl from the Kubernetes project's apt
# repository (pkgs.k8s.io); the Rust toolchain from rustup; crates from crates.io; the flannel
# manifest from its pinned release; container images from their registries.
set -euo pipefail

SRC=${MESHCAP_SRC:-/meshcap}
KERNEL_PACKAGE=${MESHCAP_KERNEL_PACKAGE:-linux-image-6.1.0-50-amd64}
K8S_MINOR=${MESHCAP_K8S_MINOR:-v1.31}
FLANNEL_VERSION=${MESHCAP_FLANNEL_VERSION:-v0.25.5}
E2E_MODES=${MESHCAP_E2E_MODES:-iptables nftables}
POD_CIDR=10.244.0.0/16
BUILD_DIR=/var/lib/meshcap-build
E2E_DIR=/var/lib/meshcap-e2e
NS=meshcap-e2e
IMAGE=docker.io/library/debian:bookworm-slim
export KUBECONFIG=/etc/kubernetes/admin.conf
export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "provision.sh[$STEP]: $*"; }
die() { echo "provision.sh[$STEP]: FAILED: $*" >&2; exit 1; }
apt_install() { apt-get install -y -q --no-install-recommends "$@" >/dev/null; }

# --- kernel ----------------------------------------------------------------------------------
step_kernel() {
    apt-get update -q >/dev/null
    apt-cache show "$KERNEL_PACKAGE" >/dev/null 2>&1 ||
        die "the pinned kernel $KERNEL_PACKAGE is not in the box's apt sources (set MESHCAP_KERNEL_PACKAGE to one that is: apt-cache search '^linux-image-[0-9].*-amd64$')"
    log "installing $KERNEL_PACKAGE"
    apt_install "$KERNEL_PACKAGE"
    local kver=${KERNEL_PACKAGE#linux-image-}
    # Boot exactly this kernel, whatever else the box carries: GRUB's default by menu entry id.
    update-grub >/dev/null 2>&1
    local sub entry
    sub=$(grep -o "gnulinux-advanced-[0-9a-f-]*" /boot/grub/grub.cfg | head -n 1)
    entry=$(grep -o "gnulinux-$kver-advanced-[0-9a-f-]*" /boot/grub/grub.cfg | head -n 1)
    if [ -z "$sub" ] || [ -z "$entry" ]; then
        die "no GRUB entry for $kver in /boot/grub/grub.cfg"
    fi
    sed -i "s/^GRUB_DEFAULT=.*/GRUB_DEFAULT=\"$sub>$entry\"/" /etc/default/grub
    update-grub >/dev/null 2>&1
    # Keep upgrades from moving the pin.
    apt-mark hold "$KERNEL_PACKAGE" >/dev/null
    echo "$kver" >/etc/meshcap-pinned-kernel
    log "GRUB default is now $kver (running $(uname -r)); rebooting into it"
}

# --- cluster ---------------------------------------------------------------------------------
require_pinned_kernel() {
    local want
    want=$(cat /etc/meshcap-pinned-kernel 2>/dev/null) || die "run the kernel step first"
    [ "$(uname -r)" = "$want" ] ||
        die "running kernel $(uname -r), pinned $want: did the reboot pick the pinned entry?"
    log "kernel $(uname -r) (pinned)"
}

step_cluster() {
    require_pinned_kernel
    if kubectl get nodes >/dev/null 2>&1; then
        log "the cluster is already up"
        return
    fi
    swapoff -a
    sed -i '/\sswap\s/ s/^[^#]/#&/' /etc/fstab
    printf 'overlay\nbr_netfilter\n' >/etc/modules-load.d/meshcap-k8s.conf
    modprobe overlay
    modprobe br_netfilter
    cat >/etc/sysctl.d/90-meshcap-k8s.conf <<'EOF'
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
EOF
    sysctl --system >/dev/null

    log "installing containerd and tools from Debian"
    apt-get update -q >/dev/null
    apt_install containerd containernetworking-plugins iptables nftables iproute2 conntrack \
        socat ethtool jq curl gpg ca-certificates util-linux
    mkdir -p /etc/containerd
    containerd config default >/etc/containerd/config.toml
    # kubeadm configures the kubelet for the systemd cgroup driver; containerd must match.
    sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
    systemctl restart containerd
    # containerd looks for CNI plugins in /opt/cni/bin; Debian installs the reference ones in
    # /usr/lib/cni (flannel delegates to bridge and host-local, and chains portmap).
    mkdir -p /opt/cni/bin /etc/cni/net.d
    for p in /usr/lib/cni/*; do ln -sf "$p" "/opt/cni/bin/$(basename "$p")"; done

    log "installing kubelet, kubeadm, kubectl $K8S_MINOR from pkgs.k8s.io"
    mkdir -p /etc/apt/keyrings
    curl -fsSL "https://pkgs.k8s.io/core:/stable:/$K8S_MINOR/deb/Release.key" |
        gpg --batch --yes --dearmor -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
    echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/$K8S_MINOR/deb/ /" \
        >/etc/apt/sources.list.d/kubernetes.list
    apt-get update -q >/dev/null
    apt_install kubelet kubeadm kubectl cri-tools
    apt-mark hold kubelet kubeadm kubectl >/dev/null
    printf 'runtime-endpoint: unix:///run/containerd/containerd.sock\n' >/etc/crictl.yaml

    log "kubeadm init (pod CIDR $POD_CIDR)"
    kubeadm init --pod-network-cidr="$POD_CIDR" --node-name meshcap-node \
        --cri-socket unix:///run/containerd/containerd.sock >/var/log/meshcap-kubeadm.log 2>&1 ||
        { tail -n 30 /var/log/meshcap-kubeadm.log >&2; die "kubeadm init"; }
    for home in /root /home/vagrant; do
        [ -d "$home" ] || continue
        mkdir -p "$home/.kube"
        cp /etc/kubernetes/admin.conf "$home/.kube/config"
        chown -R "$(stat -c %u:%g "$home")" "$home/.kube"
    done
    # One node: it runs the workloads too.
    kubectl taint nodes --all node-role.kubernetes.io/control-plane- >/dev/null 2>&1 || true

    log "flannel $FLANNEL_VERSION"
    kubectl apply -f "https://github.com/flannel-io/flannel/releases/download/$FLANNEL_VERSION/kube-flannel.yml" >/dev/null
    kubectl -n kube-flannel rollout status daemonset/kube-flannel-ds --timeout=300s
    kubectl wait node --all --for=condition=Ready --timeout=300s
    kubectl -n kube-system rollout status deployment/coredns --timeout=300s
    log "cluster ready: $(kubectl get nodes -o wide --no-headers)"
}

# --- meshcap ---------------------------------------------------------------------------------
cargo_env() {
    # shellcheck disable=SC1091
    [ -f /root/.cargo/env ] && . /root/.cargo/env
    command -v cargo >/dev/null
}

step_meshcap() {
    require_pinned_kernel
    apt_install build-essential pkg-config curl ca-certificates
    if ! cargo_env; then
        log "installing Rust (rustup, minimal profile, stable)"
        curl -fsSL https://sh.rustup.rs | sh -s -- -y -q --profile minimal --default-toolchain stable
        cargo_env || die "cargo not on PATH after rustup"
    fi
    log "building meshcap from $SRC into $BUILD_DIR"
    (cd "$SRC" && CARGO_TARGET_DIR=$BUILD_DIR cargo build -q --release \
        -p meshcap-cni -p meshcap -p meshcap-tests --bins) || die "cargo build"
    install -m 0755 "$BUILD_DIR/release/meshcap" /usr/local/bin/meshcap
    # The stand-in sidecar, mounted into the test pods (glibc build; the pods run Debian 12).
    install -D -m 0755 "$BUILD_DIR/release/standin" "$E2E_DIR/bin/standin"
    install_mode "${E2E_MODES%% *}"
}

# install_mode MODE: (re)chain meshcap-cni after flannel in MODE.
install_mode() {
    local mode=$1
    [ -f /etc/cni/net.d/10-flannel.conflist ] || die "flannel's conflist is missing"
    meshcap uninstall >/dev/null 2>&1 || true
    meshcap install --mode "$mode" --plugin-binary "$BUILD_DIR/release/meshcap-cni" \
        --kubeconfig /etc/kubernetes/admin.conf \
        --exclude-namespace kube-system --exclude-namespace kube-flannel
    jq -e --arg m "$mode" '.plugins[-1] | .type == "meshcap-cni" and .mode == $m' \
        /etc/cni/net.d/10-flannel.conflist >/dev/null ||
        die "meshcap-cni ($mode) is not last in /etc/cni/net.d/10-flannel.conflist"
}

# --- e2e -------------------------------------------------------------------------------------
# The test pods: `remote` (not meshed) serves TCP 80, 8080 and UDP 9999; `app` carries Istio's
# sidecar annotation, a stand-in sidecar as uid 1337 on 15001/15006 and an app on 8080;
# `plain` is not meshed. Every server writes one JSON line per connection (server, port,
# original destination, token) to /rec in its pod.
pod_manifests() {
    local standin="/standin/standin"
    cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: remote, namespace: $NS}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: bin, hostPath: {path: $E2E_DIR/bin}}
  - {name: rec, emptyDir: {}}
  containers:
  - name: remote
    image: $IMAGE
    command: [$standin, serve, --name, remote, --records, /rec/remote.jsonl, --ready, /rec/ready, --tcp, "80,8080", --udp, "9999"]
    volumeMounts: [{name: bin, mountPath: /standin, readOnly: true}, {name: rec, mountPath: /rec}]
    readinessProbe: {exec: {command: [test, -f, /rec/ready]}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata:
  name: app
  namespace: $NS
  annotations:
    sidecar.istio.io/status: '{"containers":["istio-proxy"]}'
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: bin, hostPath: {path: $E2E_DIR/bin}}
  - {name: rec, emptyDir: {}}
  containers:
  - name: istio-proxy
    image: $IMAGE
    securityContext: {runAsUser: 1337, runAsGroup: 1337}
    command: [$standin, serve, --name, sidecar, --records, /rec/sidecar.jsonl, --ready, /rec/sidecar.ready, --tcp, "15001,15006"]
    volumeMounts: [{name: bin, mountPath: /standin, readOnly: true}, {name: rec, mountPath: /rec}]
    readinessProbe: {exec: {command: [test, -f, /rec/sidecar.ready]}, periodSeconds: 1}
  - name: app
    image: $IMAGE
    command: [$standin, serve, --name, app, --records, /rec/app.jsonl, --ready, /rec/app.ready, --tcp, "8080"]
    volumeMounts: [{name: bin, mountPath: /standin, readOnly: true}, {name: rec, mountPath: /rec}]
    readinessProbe: {exec: {command: [test, -f, /rec/app.ready]}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: $NS}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: bin, hostPath: {path: $E2E_DIR/bin}}
  containers:
  - name: plain
    image: $IMAGE
    command: [sleep, infinity]
    volumeMounts: [{name: bin, mountPath: /standin, readOnly: true}]
EOF
}

# netns_of POD: the network namespace path of POD's sandbox, from the runtime.
netns_of() {
    local id
    id=$(crictl pods --namespace "$NS" --name "^$1\$" --state ready -q | head -n 1)
    [ -n "$id" ] || die "no ready sandbox for pod $1"
    crictl inspectp "$id" |
        jq -r '.info.runtimeSpec.linux.namespaces[] | select(.type == "network") | .path'
}

# has_rules NETNS: whether meshcap's redirect to 15001 is installed there (either backend).
has_rules() {
    nsenter --net="$1" sh -c 'iptables-save -t nat 2>/dev/null; nft list ruleset 2>/dev/null' |
        grep -Eq -- '--to-ports 15001|redirect to :15001'
}

# flow NAME POD CONTAINER PROTO ADDR: dial ADDR from POD/CONTAINER with token MODE-NAME and
# print "NAME client=RESULT seen=SERVER@PORT orig=ORIGINAL" with pod IPs replaced by names.
flow() {
    local name=$1 pod=$2 container=$3 proto=$4 addr=$5 token="$MODE-$1" report result seen
    report=$(kubectl -n "$NS" exec "$pod" -c "$container" -- /standin/standin client \
        --proto "$proto" --addr "$addr" --token "$token" --timeout-ms 3000 2>&1) || true
    result=$(echo "$report" | jq -r '.result' 2>/dev/null || echo "error")
    seen=$({
        kubectl -n "$NS" exec app -c app -- cat /rec/sidecar.jsonl /rec/app.jsonl 2>/dev/null
        kubectl -n "$NS" exec remote -- cat /rec/remote.jsonl 2>/dev/null
    } | jq -r --arg t "$token" 'select(.token == $t) | "\(.server)@\(.port) orig=\(.orig // "-")"' |
        head -n 1) || true
    [ -n "$seen" ] || seen="nobody"
    echo "$name client=$result seen=$seen" |
        sed -e "s/=$APP_IP:/=APP:/g" -e "s/=$REMOTE_IP:/=REMOTE:/g"
}

# The outcome every mode must give (docs/DESIGN.md "Observable behaviour").
expected_flows() {
    cat <<'EOF'
app-outbound client=ok seen=sidecar@15001 orig=REMOTE:80
app-outbound-udp client=ok seen=remote@9999 orig=-
app-localhost client=ok seen=app@8080 orig=127.0.0.1:8080
inbound client=ok seen=sidecar@15006 orig=APP:8080
proxy-outbound client=ok seen=remote@8080 orig=REMOTE:8080
unmeshed-outbound client=ok seen=remote@80 orig=REMOTE:80
EOF
}

run_mode() {
    MODE=$1
    log "=== mode $MODE"
    install_mode "$MODE"
    kubectl delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
    kubectl create namespace "$NS" >/dev/null
    # ADD: the kubelet creates the sandboxes; containerd runs flannel, then meshcap-cni.
    pod_manifests | kubectl apply -f - >/dev/null
    kubectl -n "$NS" wait pod --all --for=condition=Ready --timeout=300s >/dev/null ||
        { kubectl -n "$NS" describe pods >&2; die "$MODE: test pods not ready"; }
    APP_IP=$(kubectl -n "$NS" get pod app -o jsonpath='{.status.podIP}')
    REMOTE_IP=$(kubectl -n "$NS" get pod remote -o jsonpath='{.status.podIP}')

    local app_ns plain_ns keep
    app_ns=$(netns_of app)
    plain_ns=$(netns_of plain)
    has_rules "$app_ns" || { meshcap inspect --netns "$app_ns" >&2 || true; die "$MODE: no rules in the meshed pod after ADD"; }
    has_rules "$plain_ns" && die "$MODE: rules in the unmeshed pod"
    log "$MODE: rules present in app ($app_ns), none in plain"
    meshcap inspect --netns "$app_ns" >"$E2E_DIR/$MODE.inspect" 2>&1 || true

    {
        flow app-outbound app app tcp "$REMOTE_IP:80"
        flow app-outbound-udp app app udp "$REMOTE_IP:9999"
        flow app-localhost app app tcp "127.0.0.1:8080"
        flow inbound remote remote tcp "$APP_IP:8080"
        flow proxy-outbound app istio-proxy tcp "$REMOTE_IP:8080"
        flow unmeshed-outbound plain plain tcp "$REMOTE_IP:80"
    } >"$E2E_DIR/$MODE.flows"

    # DEL: keep the app's namespace alive with a bind mount, let the kubelet delete the pod,
    # and watch meshcap's rules leave the namespace when the runtime calls CNI DEL.
    keep=/run/netns/meshcap-e2e-keep-$MODE
    mkdir -p /run/netns
    touch "$keep"
    mount --bind "$app_ns" "$keep"
    kubectl -n "$NS" delete pod app --wait=true --timeout=120s >/dev/null
    local gone=false
    for _ in $(seq 1 60); do
        if ! has_rules "$keep"; then gone=true; break; fi
        sleep 1
    done
    umount "$keep"
    rm -f "$keep"
    $gone || die "$MODE: rules still in the app's namespace 60s after the pod was deleted"
    log "$MODE: rules gone from the app's namespace after the kubelet's DEL"
    kubectl delete namespace "$NS" --wait=true >/dev/null
}

step_e2e() {
    require_pinned_kernel
    [ -x /usr/local/bin/meshcap ] || die "run the meshcap step first"
    mkdir -p "$E2E_DIR"
    local start=$SECONDS failed=0 mode first=""
    expected_flows >"$E2E_DIR/expected.flows"
    for mode in $E2E_MODES; do
        run_mode "$mode"
        echo "--- $mode"
        cat "$E2E_DIR/$mode.flows"
        if ! diff -u "$E2E_DIR/expected.flows" "$E2E_DIR/$mode.flows"; then
            echo "FAIL $mode: flows differ from the expected outcomes (above)"
            failed=$((failed + 1))
        fi
        if [ -z "$first" ]; then
            first=$mode
        elif ! diff -u "$E2E_DIR/$first.flows" "$E2E_DIR/$mode.flows"; then
            echo "FAIL $mode: flows differ from $first mode (above)"
            failed=$((failed + 1))
        fi
    done
    install_mode "${E2E_MODES%% *}"
    local modes total
    modes=$(echo "$E2E_MODES" | wc -w)
    total=$((modes * 2))
    echo "kernel $(uname -r), kubelet $(kubelet --version | cut -d' ' -f2), modes: $E2E_MODES, $((SECONDS - start))s"
    echo "cluster-e2e: $((total - failed)) passed, $failed failed"
    [ "$failed" -eq 0 ]
}

STEP=${1:-}
[ "$(id -u)" -eq 0 ] || { echo "provision.sh: run as root" >&2; exit 1; }
case $STEP in
    kernel) step_kernel ;;
    cluster) step_cluster ;;
    meshcap) step_meshcap ;;
    e2e) step_e2e ;;
    *) echo "usage: provision.sh kernel|cluster|meshcap|e2e" >&2; exit 2 ;;
esac
