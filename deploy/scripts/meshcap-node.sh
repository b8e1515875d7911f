#!/bin/sh
# meshcap node setup, run by the meshcap-node DaemonSet (deploy/daemonset.yaml).
#
#   meshcap-node.sh install   write the plugin's kubeconfig (mode 0600), then chain meshcap-cni
#                             into the node's CNI config (`meshcap install`); the init container
#   meshcap-node.sh agent     run `meshcap agent` (fast path, repair, adoption of pods set up
#                             before the install, config watch) and, every REPAIR_INTERVAL
#                             seconds, refresh the kubeconfig when the service-account token
#                             rotates and re-run the
#                             (idempotent) install, in case the primary CNI rewrote its config
#   meshcap-node.sh kubeconfig   only write the kubeconfig (used by the tests)
#
# Everything is configurable through the environment so the script runs outside a pod too:
#   HOST_ROOT        where the node's filesystem is mounted               (/host)
#   SA_DIR           the pod's service-account mount  (/var/run/secrets/kubernetes.io/serviceaccount)
#   CNI_CONF_DIR     the node's CNI config dir, as the node sees it       (/etc/cni/net.d)
#   CNI_BIN_DIR      the node's CNI binary dir, as the node sees it       (/opt/cni/bin)
#   CNI_CACHE_DIR    the runtime's libcni cache dir, as the node sees it  (/var/lib/cni)
#   KUBECONFIG_NAME  the kubeconfig's file name in CNI_CONF_DIR           (meshcap-kubeconfig)
#   KUBERNETES_SERVICE_HOST / _PORT   the API server (set by the kubelet in every pod)
#   MESHCAP_MODE, MESHCAP_SELECTION, MESHCAP_EBPF, MESHCAP_EXCLUDE_NAMESPACES (space-separated;
#   default "kube-system meshcap-system": meshcap's own namespace must stay in it)
set -eu

HOST_ROOT=${HOST_ROOT:-/host}
SA_DIR=${SA_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}
CNI_CONF_DIR=${CNI_CONF_DIR:-/etc/cni/net.d}
CNI_BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
CNI_CACHE_DIR=${CNI_CACHE_DIR:-/var/lib/cni}
KUBECONFIG_NAME=${KUBECONFIG_NAME:-meshcap-kubeconfig}
REPAIR_INTERVAL=${REPAIR_INTERVAL:-30}

log() { echo "meshcap-node: $*" >&2; }

# The kubeconfig the plugin reads (kubernetes.kubeconfig). It embeds the service-account token
# and CA, like istio-cni's, because the plugin runs on the host where the pod's projected
# token path does not exist. Written to a temporary file with mode 0600 and renamed into
# place, so the plugin never reads a partial file and no other user can read the token.
write_kubeconfig() {
    : "${KUBERNETES_SERVICE_HOST:?must be set (the kubelet sets it in every pod)}"
    : "${KUBERNETES_SERVICE_PORT:?must be set}"
    host=$KUBERNETES_SERVICE_HOST
    case $host in *:*) host="[$host]" ;; esac
    token=$(cat "$SA_DIR/token")
    [ -n "$token" ] || { log "empty token in $SA_DIR/token"; return 1; }
    ca=$(base64 <"$SA_DIR/ca.crt" | tr -d '\n')
    dir=$HOST_ROOT$CNI_CONF_DIR
    mkdir -p "$dir"
    umask 077
    tmp=$(mktemp "$dir/.$KUBECONFIG_NAME.XXXXXX")
    cat >"$tmp" <<KUBECONFIG
# Written by meshcap-node (deploy/scripts/meshcap-node.sh); read by meshcap-cni. Do not edit.
apiVersion: v1
kind: Config
current-context: meshcap
clusters:
- name: local
  cluster:
    server: https://$host:$KUBERNETES_SERVICE_PORT
    certificate-authority-data: $ca
contexts:
- name: meshcap
  context:
    cluster: local
    user: meshcap-cni
users:
- name: meshcap-cni
  user:
    token: $token
KUBECONFIG
    chmod 0600 "$tmp"
    mv -f "$tmp" "$dir/$KUBECONFIG_NAME"
}

install_plugin() {
    set -- --cni-conf-dir "$HOST_ROOT$CNI_CONF_DIR" --cni-bin-dir "$HOST_ROOT$CNI_BIN_DIR" \
        --mode "${MESHCAP_MODE:-iptables}" --selection "${MESHCAP_SELECTION:-injected}" \
        --kubeconfig "$CNI_CONF_DIR/$KUBECONFIG_NAME"
    for ns in ${MESHCAP_EXCLUDE_NAMESPACES:-kube-system meshcap-system}; do
        set -- "$@" --exclude-namespace "$ns"
    done
    if [ "${MESHCAP_EBPF:-false}" = true ]; then set -- "$@" --ebpf; fi
    meshcap install "$@"
}

case "${1:-}" in
kubeconfig)
    write_kubeconfig
    ;;
install)
    # The kubeconfig goes first: the plugin must find it from its very first ADD.
    write_kubeconfig
    install_plugin
    ;;
agent)
    # The agent repairs pods from the plugin's records, adopts pods the runtime set up before
    # the install (from its libcni cache), keeps meshcap last in the node's CNI chain and
    # serves metrics; the fast path only when asked for.
    set -- --cni-conf-dir "$HOST_ROOT/etc/cni/net.d" --cni-bin-dir "$HOST_ROOT/opt/cni/bin" \
        --cni-cache-dir "$HOST_ROOT$CNI_CACHE_DIR" \
        --state-dir /var/run/meshcap/attachments --metrics-addr "${MESHCAP_METRICS_ADDR:-0.0.0.0:15099}"
    if [ "${MESHCAP_EBPF:-false}" != "true" ]; then
        set -- "$@" --no-fast-path
    fi
    meshcap agent "$@" &
    agent=$!
    trap 'kill -TERM "$agent" 2>/dev/null' TERM INT
    last=$(cat "$SA_DIR/token")
    while kill -0 "$agent" 2>/dev/null; do
        sleep "$REPAIR_INTERVAL" &
        wait $! || true
        now=$(cat "$SA_DIR/token" 2>/dev/null || echo "$last")
        if [ "$now" != "$last" ]; then
            write_kubeconfig && last=$now && log "kubeconfig refreshed after token rotation"
        fi
        install_plugin >/dev/null || log "re-install failed; will retry"
    done
    wait "$agent"
    ;;
*)
    echo "usage: $0 install|agent|kubeconfig" >&2
    exit 2
    ;;
esac
