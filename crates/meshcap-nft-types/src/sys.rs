//! Kernel uapi numbers for nfnetlink and nf_tables, in one place.
//!
//! Taken from include/uapi/linux/netlink.h, include/uapi/linux/netfilter/nfnetlink.h,
//! include/uapi/linux/netfilter/nf_tables.h and include/uapi/linux/netfilter.h. These are
//! stable ABI: the kernel only ever appends to these enums. Only what meshcap sends or reads is
//! listed. Unless noted, nf_tables integer attributes are big-endian u32 on the wire.

// --- netlink.h ---------------------------------------------------------------------------
/// Netlink protocol of nfnetlink sockets.
pub const NETLINK_NETFILTER: isize = 12;
pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
/// Set by the kernel on dump messages when the dumped state changed during the dump.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_ROOT | NLM_F_MATCH`.
pub const NLM_F_DUMP: u16 = 0x300;
/// With NEWRULE and a handle: replace that rule.
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_CREATE: u16 = 0x400;
/// With NEWTABLE: fail with EEXIST instead of reusing an existing table.
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_APPEND: u16 = 0x800;
/// Marks a nested attribute (the kernel accepts nf_tables nests without it; libnftnl sets it).
pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_TYPE_MASK: u16 = 0x3fff;

// --- nfnetlink.h -------------------------------------------------------------------------
/// `NLMSG_MIN_TYPE`: opens a transaction; its nfgenmsg `res_id` names the subsystem.
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NLMSG_MIN_TYPE + 1`: commits the transaction.
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNETLINK_V0: u8 = 0;
/// Size of `struct nfgenmsg { u8 nfgen_family; u8 version; __be16 res_id; }`.
pub const NFGENMSG_LEN: usize = 4;

// --- netfilter.h -------------------------------------------------------------------------
pub const NFPROTO_UNSPEC: u8 = 0;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;
/// `NF_INET_PRE_ROUTING`.
pub const NF_INET_PRE_ROUTING: u32 = 0;
/// `NF_INET_LOCAL_OUT`.
pub const NF_INET_LOCAL_OUT: u32 = 3;
pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;

// --- nf_tables.h: enum nf_tables_msg_types -----------------------------------------------
pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_GETCHAIN: u16 = 4;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_GETRULE: u16 = 7;
pub const NFT_MSG_DELCHAIN: u16 = 5;
pub const NFT_MSG_DELRULE: u16 = 8;
pub const NFT_MSG_DELSET: u16 = 11;
pub const NFT_MSG_DELSETELEM: u16 = 14;
pub const NFT_MSG_NEWGEN: u16 = 15;
pub const NFT_MSG_GETGEN: u16 = 16;
pub const NFT_MSG_DELOBJ: u16 = 20;
pub const NFT_MSG_DELFLOWTABLE: u16 = 24;
/// `NFT_MSG_DESTROYTABLE` .. `NFT_MSG_DESTROYFLOWTABLE` (Linux 6.3): deletes that ignore
/// ENOENT.
pub const NFT_MSG_DESTROY: std::ops::RangeInclusive<u16> = 26..=32;

// enum nft_table_attributes
pub const NFTA_TABLE_NAME: u16 = 1;
/// Big-endian u32: dormant, owner, persist.
pub const NFTA_TABLE_FLAGS: u16 = 2;
/// libnftnl's userdata TLVs (Linux 5.10 and later); `nft` keeps a table's comment there.
pub const NFTA_TABLE_USERDATA: u16 = 6;

// enum nft_chain_attributes
pub const NFTA_CHAIN_TABLE: u16 = 1;
pub const NFTA_CHAIN_NAME: u16 = 3;
/// Nested `NFTA_HOOK_*`.
pub const NFTA_CHAIN_HOOK: u16 = 4;
pub const NFTA_CHAIN_POLICY: u16 = 5;
/// NUL-terminated chain type name: "filter", "nat", "route".
pub const NFTA_CHAIN_TYPE: u16 = 7;
/// Nested `NFTA_COUNTER_*` of a base chain created with counters.
pub const NFTA_CHAIN_COUNTERS: u16 = 8;
pub const NFTA_CHAIN_FLAGS: u16 = 10;
pub const NFTA_CHAIN_USERDATA: u16 = 12;

// enum nft_hook_attributes
pub const NFTA_HOOK_HOOKNUM: u16 = 1;
/// Signed, big-endian.
pub const NFTA_HOOK_PRIORITY: u16 = 2;

// enum nft_rule_attributes
pub const NFTA_RULE_TABLE: u16 = 1;
pub const NFTA_RULE_CHAIN: u16 = 2;
/// u64 big-endian.
pub const NFTA_RULE_HANDLE: u16 = 3;
/// Nested list of `NFTA_LIST_ELEM`, each one expression.
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
/// Nested `NFTA_RULE_COMPAT_*`: the layer-4 protocol xtables' compat extensions are checked
/// against. Sent by iptables-nft, never dumped.
pub const NFTA_RULE_COMPAT: u16 = 5;
pub const NFTA_RULE_COMPAT_PROTO: u16 = 1;
pub const NFTA_RULE_COMPAT_FLAGS: u16 = 2;
/// `NFT_RULE_COMPAT_F_INV`: the protocol match is negated (`! -p tcp`).
pub const NFT_RULE_COMPAT_F_INV: u32 = 1 << 1;
/// Opaque bytes (at most NFT_USERDATA_MAXLEN = 256) the kernel stores and dumps back.
pub const NFTA_RULE_USERDATA: u16 = 7;

// enum nft_counter_attributes (big-endian u64 each)
pub const NFTA_COUNTER_BYTES: u16 = 1;
pub const NFTA_COUNTER_PACKETS: u16 = 2;

// enum nft_list_attributes
pub const NFTA_LIST_ELEM: u16 = 1;

// enum nft_expression_attributes
pub const NFTA_EXPR_NAME: u16 = 1;
pub const NFTA_EXPR_DATA: u16 = 2;

// enum nft_immediate_attributes
pub const NFTA_IMMEDIATE_DREG: u16 = 1;
pub const NFTA_IMMEDIATE_DATA: u16 = 2;

// enum nft_data_attributes
pub const NFTA_DATA_VALUE: u16 = 1;
pub const NFTA_DATA_VERDICT: u16 = 2;

// enum nft_verdict_attributes
pub const NFTA_VERDICT_CODE: u16 = 1;
pub const NFTA_VERDICT_CHAIN: u16 = 2;

// enum nft_verdicts (negative, next to NF_DROP/NF_ACCEPT)
pub const NFT_CONTINUE: i32 = -1;
pub const NFT_BREAK: i32 = -2;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;
pub const NFT_RETURN: i32 = -5;

// enum nft_registers: NFT_REG_VERDICT holds verdicts; NFT_REG_1 is the first 16-byte data
// register, which is what nft itself uses for every load/compare.
pub const NFT_REG_VERDICT: u32 = 0;
pub const NFT_REG_1: u32 = 1;

// enum nft_cmp_attributes / nft_cmp_ops
pub const NFTA_CMP_SREG: u16 = 1;
pub const NFTA_CMP_OP: u16 = 2;
pub const NFTA_CMP_DATA: u16 = 3;
pub const NFT_CMP_EQ: u32 = 0;
pub const NFT_CMP_NEQ: u32 = 1;
pub const NFT_CMP_LT: u32 = 2;
pub const NFT_CMP_LTE: u32 = 3;
pub const NFT_CMP_GT: u32 = 4;
pub const NFT_CMP_GTE: u32 = 5;

// enum nft_bitwise_attributes (the default NFTA_BITWISE_OP is NFT_BITWISE_BOOL: & mask ^ xor)
pub const NFTA_BITWISE_SREG: u16 = 1;
pub const NFTA_BITWISE_DREG: u16 = 2;
pub const NFTA_BITWISE_LEN: u16 = 3;
pub const NFTA_BITWISE_MASK: u16 = 4;
pub const NFTA_BITWISE_XOR: u16 = 5;
/// Kernels since 5.6 dump it; absent means NFT_BITWISE_BOOL.
pub const NFTA_BITWISE_OP: u16 = 6;
pub const NFT_BITWISE_BOOL: u32 = 0;

// enum nft_payload_attributes / nft_payload_bases
pub const NFTA_PAYLOAD_DREG: u16 = 1;
pub const NFTA_PAYLOAD_BASE: u16 = 2;
pub const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub const NFTA_PAYLOAD_LEN: u16 = 4;
/// Present when the expression writes the packet instead of loading from it.
pub const NFTA_PAYLOAD_SREG: u16 = 5;
pub const NFT_PAYLOAD_LL_HEADER: u32 = 0;
pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

// enum nft_meta_attributes / nft_meta_keys
pub const NFTA_META_DREG: u16 = 1;
pub const NFTA_META_KEY: u16 = 2;
pub const NFTA_META_SREG: u16 = 3;
pub const NFT_META_MARK: u32 = 3;
/// IFNAMSIZ-byte, NUL-padded interface name.
pub const NFT_META_IIFNAME: u32 = 6;
pub const NFT_META_OIFNAME: u32 = 7;
pub const NFT_META_SKUID: u32 = 10;
pub const NFT_META_SKGID: u32 = 11;
pub const NFT_META_L4PROTO: u32 = 16;

// enum nft_ct_attributes / nft_ct_keys
pub const NFTA_CT_DREG: u16 = 1;
pub const NFTA_CT_KEY: u16 = 2;
pub const NFTA_CT_DIRECTION: u16 = 3;
pub const NFTA_CT_SREG: u16 = 4;
/// Bitmask of NF_CT_STATE_BIT(ctinfo): established = 2, related = 4 (nf_conntrack_common.h).
pub const NFT_CT_STATE: u32 = 0;
pub const NFT_CT_MARK: u32 = 3;
/// u16, host order.
pub const NFT_CT_ZONE: u32 = 17;
pub const CT_STATE_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
/// NF_CT_STATE_INVALID_BIT.
pub const CT_STATE_INVALID: u32 = 0x1;
/// The `ct state` bits nft names, in the order it prints them (`NF_CT_STATE_*_BIT`).
pub const CT_STATE_NAMES: [(u32, &str); 5] = [
    (0x1, "invalid"),
    (0x2, "established"),
    (0x4, "related"),
    (0x8, "new"),
    (0x40, "untracked"),
];

// enum nft_redir_attributes
pub const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
/// The kernel dumps it (equal to the minimum when none was sent).
pub const NFTA_REDIR_REG_PROTO_MAX: u16 = 2;
pub const NFTA_REDIR_FLAGS: u16 = 3;
/// `NF_NAT_RANGE_PROTO_SPECIFIED` (nf_nat.h): the port register is meaningful.
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;

// enum nft_byteorder_attributes, enum nft_byteorder_ops
pub const NFTA_BYTEORDER_SREG: u16 = 1;
pub const NFTA_BYTEORDER_DREG: u16 = 2;
pub const NFTA_BYTEORDER_OP: u16 = 3;
pub const NFTA_BYTEORDER_LEN: u16 = 4;
pub const NFTA_BYTEORDER_SIZE: u16 = 5;
pub const NFT_BYTEORDER_NTOH: u32 = 0;
pub const NFT_BYTEORDER_HTON: u32 = 1;

// enum nft_tproxy_attributes
pub const NFTA_TPROXY_FAMILY: u16 = 1;
pub const NFTA_TPROXY_REG_ADDR: u16 = 2;
pub const NFTA_TPROXY_REG_PORT: u16 = 3;

// enum nft_gen_attributes
pub const NFTA_GEN_ID: u16 = 1;

// --- libnftnl udata.h (what `nft` reads from NFTA_RULE_USERDATA) ---------------------------
/// TLV type of a rule comment: `{u8 type, u8 len, value[len]}`, value NUL-terminated.
pub const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
/// A table's comment in its userdata (`NFTNL_UDATA_TABLE_COMMENT`): the same TLV as a rule's.
pub const NFTNL_UDATA_TABLE_COMMENT: u8 = 0;

/// `IFNAMSIZ`: interface-name compares are over this many NUL-padded bytes.
pub const IFNAMSIZ: usize = 16;
