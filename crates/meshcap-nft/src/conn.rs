//! The NETLINK_NETFILTER socket: send a batch and collect the kernel's verdict, run dumps and
//! single requests. A socket is opened per operation, in the network namespace of the calling
//! thread at that moment (netlink sockets are bound to the namespace they are created in).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use crate::sys::*;
use crate::wire::{attr_str, message, nft_type, parse_messages, AttrIter, Attrs, BatchInfo};
use crate::NftError;

/// How long one recv may wait. The kernel answers nf_tables requests synchronously, so only a
/// bug (a reply we wait for that never comes) can hit it; it turns a hang into an error.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// Dump datagrams are at most 32 KiB (netlink_dump caps its skb there); acks are tiny.
const RECV_BUF: usize = 64 * 1024;

pub struct Conn {
    op: &'static str,
    /// `None` only while `drop` hands the socket over.
    sock: Option<Socket>,
    seq: u32,
}

/// Set once this process has committed a batch that deletes anything; see [`Conn`]'s `Drop`.
static DELETION_COMMITTED: AtomicBool = AtomicBool::new(false);

/// The messages of a dump (payloads after `nlmsghdr`), and whether the kernel flagged the dump
/// as interrupted by a concurrent change (NLM_F_DUMP_INTR).
pub struct Dump {
    pub messages: Vec<Vec<u8>>,
    pub interrupted: bool,
}

/// The kernel's verdict on a batch.
pub enum BatchOutcome {
    Committed,
    /// (seq of the rejected message, or the BATCH_BEGIN seq for a commit failure; errno).
    Rejected(u32, Errno),
}

impl Conn {
    pub fn open(op: &'static str) -> Result<Self, NftError> {
        let io = |source| NftError::Socket { op, source };
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io)?;
        sock.bind_auto().map_err(io)?;
        let tv = TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0);
        setsockopt(&sock, sockopt::ReceiveTimeout, &tv).map_err(|e| io(e.into()))?;
        // Sequence numbers only need to be unique on this socket; start from the port id so
        // that strace output of concurrent callers is easy to tell apart.
        let mut addr = SocketAddr::new(0, 0);
        sock.get_address(&mut addr).map_err(io)?;
        Ok(Conn {
            op,
            sock: Some(sock),
            seq: addr.port_number(),
        })
    }

    fn sock(&self) -> &Socket {
        self.sock
            .as_ref()
            .expect("the socket is only taken in drop")
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Reserves `n` sequence numbers and returns the first.
    pub fn reserve_seqs(&mut self, n: u32) -> u32 {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(n);
        first
    }

    fn send(&self, buf: &[u8]) -> Result<(), NftError> {
        let sent = self
            .sock()
            .send(buf, 0)
            .map_err(|source| NftError::Socket {
                op: self.op,
                source,
            })?;
        if sent != buf.len() {
            return Err(NftError::Malformed {
                op: self.op,
                detail: format!("short send: {sent} of {} bytes", buf.len()),
            });
        }
        Ok(())
    }

    /// Receives one datagram.
    fn recv(&self) -> Result<Vec<u8>, NftError> {
        let mut buf = Vec::with_capacity(RECV_BUF);
        let n =
            self.sock().recv(&mut buf, nix::libc::MSG_TRUNC).map_err(
                |source| match Errno::from_raw(source.raw_os_error().unwrap_or(0)) {
                    Errno::EAGAIN => NftError::Timeout {
                        op: self.op,
                        timeout: RECV_TIMEOUT,
                    },
                    _ => NftError::Socket {
                        op: self.op,
                        source,
                    },
                },
            )?;
        if n > buf.len() {
            return Err(NftError::Malformed {
                op: self.op,
                detail: format!("datagram of {n} bytes truncated to {}", buf.len()),
            });
        }
        Ok(buf)
    }

    fn malformed(&self, detail: &str) -> NftError {
        NftError::Malformed {
            op: self.op,
            detail: detail.to_string(),
        }
    }

    /// Sends a finished batch and waits for the kernel's verdict.
    pub fn run_batch(&mut self, bytes: &[u8], info: &BatchInfo) -> Result<BatchOutcome, NftError> {
        let Some(last) = info.last_seq() else {
            return Ok(BatchOutcome::Committed);
        };
        let deletes = batch_deletes(bytes);
        self.send(bytes)?;
        let mut first_error: Option<(u32, Errno)> = None;
        loop {
            let buf = self.recv()?;
            let msgs = parse_messages(&buf).ok_or_else(|| self.malformed("bad netlink header"))?;
            for m in msgs {
                if m.msg_type != NLMSG_ERROR {
                    continue;
                }
                let code = m
                    .error_code()
                    .ok_or_else(|| self.malformed("short NLMSG_ERROR"))?;
                if code != 0 && first_error.is_none() {
                    first_error = Some((m.seq, Errno::from_raw(-code)));
                }
                // An error on BATCH_BEGIN (commit failure, EPERM, ENOMEM) may be all we get;
                // the answer for the last message comes after every other one.
                if m.seq == last || (m.seq == info.begin_seq && code != 0) {
                    return Ok(match first_error {
                        None => {
                            if deletes {
                                DELETION_COMMITTED.store(true, Ordering::Relaxed);
                            }
                            BatchOutcome::Committed
                        }
                        Some((seq, errno)) => BatchOutcome::Rejected(seq, errno),
                    });
                }
            }
        }
    }

    /// Sends one request with ACK and returns the payloads of the kernel's non-ack replies.
    /// A kernel error comes back as `Err(Ok(errno))` so callers can treat ENOENT specially.
    pub fn request(
        &mut self,
        msg: u16,
        family: u8,
        attrs: &Attrs,
    ) -> Result<Result<Vec<Vec<u8>>, Errno>, NftError> {
        let seq = self.next_seq();
        let m = message(
            nft_type(msg),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            family,
            0,
            attrs.bytes(),
        );
        self.send(&m)?;
        let mut replies = Vec::new();
        loop {
            let buf = self.recv()?;
            let msgs = parse_messages(&buf).ok_or_else(|| self.malformed("bad netlink header"))?;
            for m in msgs {
                if m.seq != seq {
                    continue;
                }
                if m.msg_type == NLMSG_ERROR {
                    let code = m
                        .error_code()
                        .ok_or_else(|| self.malformed("short NLMSG_ERROR"))?;
                    return Ok(if code == 0 {
                        Ok(replies)
                    } else {
                        Err(Errno::from_raw(-code))
                    });
                }
                replies.push(m.payload.to_vec());
            }
        }
    }

    /// Runs a dump to its end.
    pub fn dump(
        &mut self,
        msg: u16,
        family: u8,
        attrs: &Attrs,
    ) -> Result<Result<Dump, Errno>, NftError> {
        let seq = self.next_seq();
        let m = message(
            nft_type(msg),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            0,
            attrs.bytes(),
        );
        self.send(&m)?;
        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let buf = self.recv()?;
            let msgs = parse_messages(&buf).ok_or_else(|| self.malformed("bad netlink header"))?;
            for m in msgs {
                if m.seq != seq {
                    continue;
                }
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.msg_type {
                    NLMSG_DONE => {
                        return Ok(Ok(Dump {
                            messages: replies,
                            interrupted,
                        }))
                    }
                    NLMSG_ERROR => {
                        let code = m
                            .error_code()
                            .ok_or_else(|| self.malformed("short NLMSG_ERROR"))?;
                        if code != 0 {
                            return Ok(Err(Errno::from_raw(-code)));
                        }
                    }
                    _ if m.flags & NLM_F_MULTI != 0 || m.msg_type >> 8 == NFNL_SUBSYS_NFTABLES => {
                        replies.push(m.payload.to_vec());
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every table of every family in the namespace, as `(nfproto, name)`: one dump
    /// (`NFPROTO_UNSPEC`), one round trip. A pod's namespace holds few tables.
    pub fn tables(&mut self) -> Result<Vec<(u8, String)>, NftError> {
        let dump = self
            .dump(NFT_MSG_GETTABLE, NFPROTO_UNSPEC, &Attrs::new())?
            .map_err(|errno| NftError::Kernel {
                op: self.op,
                request: "NFT_MSG_GETTABLE",
                errno,
            })?;
        Ok(dump
            .messages
            .iter()
            .filter_map(|payload| {
                let family = *payload.first()?;
                AttrIter::new(payload.get(NFGENMSG_LEN..).unwrap_or(&[]))
                    .find(|(ty, _)| *ty == NFTA_TABLE_NAME)
                    .map(|(_, name)| (family, attr_str(name)))
            })
            .collect())
    }
}

/// Whether a batch holds a message that removes or replaces something: those leave work for
/// the kernel's destroy worker, which frees the old objects after an RCU grace period.
fn batch_deletes(bytes: &[u8]) -> bool {
    const DELETIONS: &[u16] = &[
        NFT_MSG_DELTABLE,
        NFT_MSG_DELCHAIN,
        NFT_MSG_DELRULE,
        NFT_MSG_DELSET,
        NFT_MSG_DELSETELEM,
        NFT_MSG_DELOBJ,
        NFT_MSG_DELFLOWTABLE,
    ];
    parse_messages(bytes).is_none_or(|msgs| {
        msgs.iter().any(|m| {
            m.msg_type >> 8 == NFNL_SUBSYS_NFTABLES
                && (DELETIONS.contains(&(m.msg_type & 0xff))
                    || NFT_MSG_DESTROY.contains(&(m.msg_type & 0xff))
                    || m.flags & NLM_F_REPLACE != 0)
        })
    })
}

/// Closing a `NETLINK_NETFILTER` socket makes the closing task wait for the namespace's
/// nf_tables destroy work (`nft_rcv_nl_event` flushes it on every release), and that work
/// sleeps for an RCU grace period before it frees what a commit deleted: 10-15 ms of pure
/// waiting per DEL, though the deleted rules left the packet path when the commit returned.
/// So once this process has committed a deletion, the last reference to each socket goes to
/// an io_uring's registered-file table instead; the ring's teardown runs on a kernel worker,
/// which then does that wait. The kernel still frees everything, one grace period later;
/// a later nf_tables change in the same namespace waits on the commit mutex meanwhile, as it
/// would have anyway. Where io_uring is unavailable (disabled by sysctl, old kernel) the
/// socket closes here and the caller waits, as before.
impl Drop for Conn {
    fn drop(&mut self) {
        let Some(sock) = self.sock.take() else {
            return;
        };
        if !DELETION_COMMITTED.load(Ordering::Relaxed) {
            return;
        }
        let Ok(ring) = io_uring::IoUring::new(1) else {
            return;
        };
        if ring.submitter().register_files(&[sock.as_raw_fd()]).is_ok() {
            // Our descriptor goes first, so the ring's reference is the last one.
            drop(sock);
        }
        drop(ring);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Attrs, Batch};

    fn batch(msgs: &[(u16, u16)]) -> Vec<u8> {
        let mut b = Batch::new(1);
        for &(msg, flags) in msgs {
            b.push(msg, flags, NFPROTO_IPV4, &Attrs::new(), String::new());
        }
        b.finish().0
    }

    #[test]
    fn only_batches_that_remove_something_leave_destroy_work() {
        const NEWTABLE: u16 = 0;
        const NEWCHAIN: u16 = 3;
        const NEWRULE: u16 = 6;
        const DELTABLE: u16 = 2;
        const DELRULE: u16 = 8;
        const DESTROYTABLE: u16 = 26;
        assert!(!batch_deletes(&batch(&[])));
        assert!(!batch_deletes(&batch(&[
            (NEWTABLE, NLM_F_CREATE),
            (NEWCHAIN, NLM_F_CREATE),
            (NEWRULE, NLM_F_CREATE | NLM_F_APPEND),
        ])));
        assert!(batch_deletes(&batch(&[(DELTABLE, 0)])));
        assert!(batch_deletes(&batch(&[
            (NEWTABLE, NLM_F_CREATE),
            (DELRULE, 0)
        ])));
        assert!(batch_deletes(&batch(&[(DESTROYTABLE, 0)])));
        assert!(batch_deletes(&batch(&[(NEWRULE, NLM_F_REPLACE)])));
        // Bytes it cannot parse count as a deletion: deferring a close is always safe.
        assert!(batch_deletes(&[1, 2, 3]));
    }
}
