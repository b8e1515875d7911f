#!/usr/bin/env bash
# Captures what the real `nft` sends for each rule form meshcap emits, as fixtures for
# crates/meshcap-nft-types/tests/captured.rs: the rule, `nft --debug=netlink`'s expression lines, and
# the attributes of the NFT_MSG_NEWRULE message as hex, decoded from `nft --debug=mnl`.
# (Adjacent port matches are left out: nft merges `udp dport 53 udp sport 53` into one 4-byte
# load, a form meshcap never emits.)
# Run as root with nft installed; writes crates/meshcap-nft-types/tests/fixtures/captured.txt.
# Each capture runs in a scratch network namespace that is removed afterwards.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$REPO/crates/meshcap-nft-types/tests/fixtures/captured.txt"
NS="nftcapture-$$"

# name|family|chain setup (type hook priority)|rule
CASES=(
  "l4proto_return|ip|nat output -100|meta l4proto tcp return"
  "dport_ne_redirect|ip|nat output -100|meta l4proto tcp tcp dport != 53 tcp dport != 15008 redirect to :15001 comment \"outbound to the sidecar\""
  "dport_range_return|ip|nat output -100|meta l4proto tcp tcp dport 4190-4191 return"
  "udp_dport_accept|ip|nat output -100|meta l4proto udp udp dport 53 accept"
  "udp_sport_ct_zone|ip|filter output -300|meta l4proto udp udp sport 53 ct zone set 1"
  "saddr_oifname_return|ip|nat output -100|ip saddr 127.0.0.6/32 oifname \"lo\" return"
  "daddr_masked_drop|ip|nat output -100|ip daddr != 10.0.0.0/12 drop"
  "owner_jump|ip|nat output -100|iifname \"lo\" meta skuid != 1337 meta skgid 1337 jump target"
  "owner_range_return|ip|nat output -100|meta skuid 1000-2000 return"
  "ct_state_marks|ip|filter prerouting -150|meta l4proto tcp ct state established,related meta mark 0x539 ct mark 0x539 jump target"
  "ct_state_invalid_drop|ip|filter prerouting -150|ct state invalid drop"
  "tproxy_v4|ip|filter prerouting -150|meta l4proto tcp tproxy to :15006 meta mark set 0x539 accept"
  "tproxy_v6|ip6|filter prerouting -150|meta l4proto tcp tproxy to :15006 meta mark set 0x539 accept"
  "v6_addresses|ip6|nat output -100|ip6 saddr ::6/128 ip6 daddr != fd00::/8 return"
  "save_mark|ip|filter prerouting -150|ct mark set meta mark"
  "restore_mark|ip|filter prerouting -150|meta mark set ct mark"
  "set_mark|ip|filter prerouting -150|meta mark set 0x53a"
  "ct_zone|ip|filter output -300|oifname \"lo\" ct zone set 1"
)

cleanup() { ip netns del "$NS" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$NS"
nsnft() { ip netns exec "$NS" nft "$@"; }

# The attributes of the NFT_MSG_NEWRULE message (type 2566 = NFNL_SUBSYS_NFTABLES << 8 | 6)
# in libmnl's dump, as hex: header rows give {len, flags, type}, data rows four bytes each.
newrule_hex() {
  sed 's/\x1b\[[0-9;]*m//g' | awk '
    function le16(v) { return sprintf("%02x%02x", v % 256, int(v / 256)) }
    /\| message length \|/ { inmsg = 1; type = ""; next }
    inmsg && /\|  type \| flags  \|/ { split($0, f, "|"); type = f[2] + 0; next }
    inmsg && /extra header/ { attrs = (type == 2566); next }
    attrs && /\|len \|flags\| type\|/ {
      split($0, f, "|"); len = f[2] + 0; fl = f[3]; ty = f[4] + 0
      if (substr(fl, 1, 1) == "N") ty += 32768
      if (substr(fl, 2, 1) == "B") ty += 16384
      hex = hex le16(len) le16(ty); next
    }
    attrs && /\|      data      \|/ { split($0, f, "|"); d = f[2]; gsub(/ /, "", d); hex = hex d; next }
    /^----------------/ { if (attrs && hex != "") { print hex; exit } }
  '
}

{
  echo "# What nft $(nft --version | awk '{print $2}') sends for the rule forms meshcap emits, on Linux $(uname -r)."
  echo "# Written by scripts/capture-nft-fixtures.sh; do not edit. Per case: the rule, the"
  echo "# expressions as nft --debug=netlink prints them, and the NFT_MSG_NEWRULE attributes"
  echo "# (table, chain, NFTA_RULE_EXPRESSIONS, userdata) as hex, decoded from nft --debug=mnl."
  for case in "${CASES[@]}"; do
    IFS='|' read -r name family setup rule <<<"$case"
    read -r ctype hook prio <<<"$setup"
    nsnft flush ruleset
    nsnft add table "$family" meshcap
    nsnft add chain "$family" meshcap target
    nsnft add chain "$family" meshcap c "{ type $ctype hook $hook priority $prio; }"
    debug=$(nsnft --debug=netlink -f - <<<"add rule $family meshcap c $rule" | sed -n 's/^  \(\[ .* \]\)$/\1/p')
    hex=$(nsnft --debug=mnl -f - <<<"add rule $family meshcap c $rule" | newrule_hex)
    [ -n "$debug" ] && [ -n "$hex" ] || { echo "capture of $name failed" >&2; exit 1; }
    echo
    echo "case $name"
    echo "family $family"
    echo "rule $rule"
    while IFS= read -r line; do echo "expr $line"; done <<<"$debug"
    echo "newrule $hex"
  done
} >"$OUT"
echo "wrote $OUT"
