//! Backend-neutral rules: the intermediate form between the redirect model and the backends.
//!
//! The vocabulary is the subset of netfilter that Istio-style capture needs, named after the
//! iptables concepts (tables, built-in and user chains, matches, targets) because that is how
//! operators read capture rules. The iptables renderer prints it as `iptables-restore` input;
//! the nftables renderer maps each table onto chains of one meshcap-owned nftables table per
//! address family. Both backends therefore install exactly the same decisions.

use std::fmt;

use ipnet::IpNet;

/// Address family of one rule set. meshcap renders IPv4 and IPv6 separately, as
/// `iptables`/`ip6tables` (and `ip`/`ip6` nftables tables) do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The loopback address the rules treat as "explicitly local" (Istio's HostIPv4LoopbackCidr).
    pub fn loopback(self) -> IpNet {
        match self {
            Family::V4 => "127.0.0.1/32".parse().expect("valid literal"),
            Family::V6 => "::1/128".parse().expect("valid literal"),
        }
    }

    /// The source address the sidecar binds for inbound passthrough connections.
    pub fn inbound_passthrough_source(self) -> IpNet {
        match self {
            Family::V4 => "127.0.0.6/32".parse().expect("valid literal"),
            Family::V6 => "::6/128".parse().expect("valid literal"),
        }
    }

    pub fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// The netfilter table a chain lives in. In nftables mode each maps to base chains of the
/// matching type and priority (`nat` at dstnat/-100, `mangle` at -150, `raw` at -300).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Raw,
    Mangle,
    Nat,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Raw => "raw",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
        }
    }
}

/// The netfilter hooks meshcap attaches to. Only these two are needed: inbound capture happens
/// before routing, outbound capture on locally generated packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Prerouting,
    Output,
}

impl Hook {
    /// The iptables built-in chain for this hook.
    pub fn builtin_chain(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::Output => "OUTPUT",
        }
    }
}

/// A layer-4 protocol match (`-p`, `meta l4proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// IANA protocol number, as `meta l4proto` compares it.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// One condition of a rule. A rule matches when all of its conditions hold.
///
/// Port matches require a preceding [`Match::Protocol`] in the same rule (as `--dport` needs
/// `-p` in iptables); the model always emits them that way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// `-p tcp` / `meta l4proto tcp`.
    Protocol(Proto),
    /// `--dport P` (one port) or `-m multiport --dports A,B` (several). With `negate` the packet
    /// must match none of `ports`; without it, one port only is allowed (the model never needs
    /// a positive port set, and nftables would need an anonymous set for it).
    DestPort { ports: Vec<u16>, negate: bool },
    /// `--dport A:B` / `th dport A-B`: an inclusive range (never a single port).
    DestPortRange { first: u16, last: u16 },
    /// `--sport P`.
    SourcePort { port: u16 },
    /// `-s NET` / `ip saddr NET`.
    Source { net: IpNet, negate: bool },
    /// `-d NET` / `ip daddr NET`.
    Destination { net: IpNet, negate: bool },
    /// `-i NAME` / `iifname "NAME"`.
    InInterface { name: String },
    /// `-o NAME` / `oifname "NAME"`.
    OutInterface { name: String },
    /// `-m owner --uid-owner U` / `meta skuid U`. Only a packet whose socket has an owner (a
    /// file) matches, negated or not: negated, `-m owner --uid-owner 0-4294967294 -m owner !
    /// --uid-owner U` / `meta skuid != U`, so packets the kernel sends without a socket or from
    /// its own sockets (RSTs, ICMP errors) get the same verdict in both backends.
    UidOwner { uid: u32, negate: bool },
    /// `-m owner --uid-owner A-B` / `meta skuid A-B` (nft converts the host-order uid to
    /// network order to compare it): an inclusive range, `first < last`.
    UidOwnerRange { first: u32, last: u32 },
    /// `-m owner --gid-owner G` / `meta skgid G`; an owner is required as for [`Match::UidOwner`].
    GidOwner { gid: u32, negate: bool },
    /// `-m mark --mark V` / `meta mark V` (full 32-bit mask).
    Mark { value: u32, negate: bool },
    /// `-m connmark --mark V` / `ct mark V`.
    ConnMark { value: u32 },
    /// `-m conntrack --ctstate RELATED,ESTABLISHED` / `ct state established,related`.
    CtStateRelatedEstablished,
    /// `-m conntrack --ctstate INVALID` / `ct state invalid`.
    CtStateInvalid,
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// `-j CHAIN` / `jump CHAIN`.
    Jump(String),
    /// `-j RETURN` / `return`.
    Return,
    /// `-j ACCEPT` / `accept`.
    Accept,
    /// `-j DROP` / `drop`.
    Drop,
    /// `-j REDIRECT --to-ports P` / `redirect to :P` (nat only).
    Redirect { port: u16 },
    /// `-j TPROXY --on-port P --tproxy-mark M/0xffffffff` / `tproxy to :P meta mark set M accept`
    /// (mangle PREROUTING only). A failed socket lookup drops the packet in both backends.
    Tproxy { port: u16, mark: u32 },
    /// `-j MARK --set-mark M` / `meta mark set M`.
    SetMark(u32),
    /// `-j CONNMARK --save-mark` / `ct mark set meta mark`.
    SaveMark,
    /// `-j CONNMARK --restore-mark` / `meta mark set ct mark`.
    RestoreMark,
    /// `-j CT --zone Z` / `ct zone set Z` (raw only).
    CtZone(u16),
}

/// One rule: all `matches` hold, then `target` applies.
///
/// `purpose` says why the rule exists (which mesh behaviour or setting it implements), in a
/// few words; the backends store it with the rule (`-m comment`, the nft rule comment) so a
/// node answers "why is this rule here". It is ASCII without quotes or backslashes and at
/// most [`PURPOSE_MAX_LEN`] bytes, so every backend stores it verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub target: Target,
    pub purpose: &'static str,
}

/// Longest [`Rule::purpose`]: well inside nft's 128-byte comment limit and iptables' 255.
pub const PURPOSE_MAX_LEN: usize = 96;

impl Rule {
    /// A rule without a stated purpose (tests and ad-hoc rules; the model always states one).
    pub fn new(matches: Vec<Match>, target: Target) -> Self {
        Rule {
            matches,
            target,
            purpose: "",
        }
    }

    /// The same rule, saying why it exists.
    pub fn because(mut self, purpose: &'static str) -> Self {
        self.purpose = purpose;
        self
    }
}

/// Whether `purpose` can be stored verbatim by every backend (see [`Rule::purpose`]).
pub fn is_valid_purpose(purpose: &str) -> bool {
    purpose.len() <= PURPOSE_MAX_LEN
        && purpose
            .bytes()
            .all(|b| (b.is_ascii_graphic() || b == b' ') && !matches!(b, b'"' | b'\\' | b'\''))
}

/// A chain meshcap owns; every name starts with `MESHCAP_`.
///
/// A chain with `hook: Some(..)` is an entry point: in iptables mode it is reached by a single
/// `-A PREROUTING -j MESHCAP_PREROUTING` (or `OUTPUT`) jump appended to the built-in chain, in
/// nftables mode it is a base chain of meshcap's table at that hook. meshcap never puts any other
/// rule into a built-in chain, so everything it installed can be found (and removed) by name,
/// and a `RETURN` in an entry chain never skips rules that other components appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

/// All chains meshcap installs in one netfilter table of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRules {
    pub table: Table,
    pub chains: Vec<Chain>,
}

impl TableRules {
    /// The built-in chains (hooks) meshcap adds rules to, in a stable order.
    pub fn hooked(&self) -> impl Iterator<Item = &Chain> {
        self.chains.iter().filter(|c| c.hook.is_some())
    }

    /// meshcap's own chains.
    pub fn own(&self) -> impl Iterator<Item = &Chain> {
        self.chains.iter().filter(|c| c.hook.is_none())
    }
}

/// Policy routing that TPROXY needs: packets carrying `mark` look up `table`, which holds a
/// `local` default route via `lo` so the kernel delivers them to the transparent listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRoute {
    pub family: Family,
    pub mark: u32,
    pub table: u32,
}

/// Everything meshcap installs for one family of one pod. Tables appear in a fixed order
/// (raw, mangle, nat) and only when they carry rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub family: Family,
    pub tables: Vec<TableRules>,
    pub policy_route: Option<PolicyRoute>,
    /// The proxy hands inbound connections to the app from the inbound passthrough source
    /// ([`Family::inbound_passthrough_source`]), so an IPv6 ruleset needs `::6` on `lo`
    /// (Istio's and Kuma's proxies do; Linkerd's does not, and linkerd-cni adds no address).
    pub passthrough_source: bool,
}

impl Ruleset {
    pub fn table(&self, table: Table) -> Option<&TableRules> {
        self.tables.iter().find(|t| t.table == table)
    }

    pub fn rule_count(&self) -> usize {
        self.tables
            .iter()
            .flat_map(|t| &t.chains)
            .map(|c| c.rules.len())
            .sum()
    }
}

/// Prefix of every chain meshcap owns in iptables mode, and name of its nftables tables.
pub const CHAIN_PREFIX: &str = "MESHCAP_";
/// Name of the nftables table meshcap owns, one per family (`ip meshcap`, `ip6 meshcap`).
pub const NFT_TABLE: &str = "meshcap";

/// The format of the rules this build installs, marked on them so that a later release (and
/// CHECK, `meshcap inspect` and the agent's repair) can tell which release's rules a pod holds.
/// 1: the first release (no marker); 2: every rule states its purpose, and the rules carry
/// [`format_marker`]: in iptables mode as a comment on each jump from a built-in chain into
/// meshcap's (`iptables-save` and `-restore` keep it), in nftables mode as the comment of
/// meshcap's table (its userdata, Linux 5.10 and later). Rules of another format are not this
/// release's: CHECK reports them as drift and the agent's repair replaces them in place.
pub const RULES_FORMAT: u32 = 2;

const MARKER_PREFIX: &str = "meshcap rules format ";

/// The marker of [`RULES_FORMAT`]: `meshcap rules format 2`.
pub fn format_marker() -> String {
    format!("{MARKER_PREFIX}{RULES_FORMAT}")
}

/// The format a marker names (`meshcap rules format N`), `None` for any other text.
pub fn parse_format_marker(text: &str) -> Option<u32> {
    let n = text.strip_prefix(MARKER_PREFIX)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0') {
        return None;
    }
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_marker_reads_back() {
        assert_eq!(format_marker(), "meshcap rules format 2");
        assert_eq!(parse_format_marker(&format_marker()), Some(RULES_FORMAT));
        assert_eq!(parse_format_marker("meshcap rules format 17"), Some(17));
        for other in [
            "",
            "meshcap rules format ",
            "meshcap rules format 02",
            "meshcap rules format 2 ",
            "meshcap rules format -1",
            "outbound capture",
            "meshcap rules format 99999999999",
        ] {
            assert_eq!(parse_format_marker(other), None, "{other:?}");
        }
    }
}
