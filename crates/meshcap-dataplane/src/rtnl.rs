//! A minimal synchronous rtnetlink client: one request, its answers, its acknowledgement.
//!
//! The socket belongs to the network namespace of the thread that creates it, so an [`Rtnl`]
//! must be opened inside [`crate::PodNetns::run`]; it may then be used there only.

use std::io;
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::DataplaneError;

pub(crate) struct Rtnl {
    socket: Socket,
    seq: u32,
    netns: PathBuf,
}

impl Rtnl {
    pub fn open(netns: &Path) -> Result<Self, DataplaneError> {
        let err = |op: &str, source| DataplaneError::Netlink {
            op: op.to_owned(),
            netns: netns.to_owned(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| err("socket", e))?;
        socket.bind_auto().map_err(|e| err("bind", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| err("connect", e))?;
        Ok(Rtnl {
            socket,
            seq: 0,
            netns: netns.to_owned(),
        })
    }

    pub fn error(&self, op: String, source: io::Error) -> DataplaneError {
        DataplaneError::Netlink {
            op,
            netns: self.netns.clone(),
            source,
        }
    }

    /// A dump request (`RTM_GET*` with `NLM_F_DUMP`): every object the kernel returns.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.request(msg, NLM_F_DUMP)
    }

    /// A change request acknowledged by the kernel; `flags` adds e.g. `NLM_F_CREATE|NLM_F_EXCL`.
    /// A kernel refusal comes back as an `io::Error` carrying the errno.
    pub fn change(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, NLM_F_ACK | flags).map(drop)
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let bytes = &data[offset..];
                let len = NetlinkBuffer::new_checked(bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
                    .length() as usize;
                if len == 0 {
                    break;
                }
                // Messages are padded to 4 bytes (NLMSG_ALIGN).
                offset += (len + 3) & !3;
                let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
                    Ok(msg) => msg,
                    Err(e) => {
                        // An object this library version cannot decode (a newer attribute
                        // layout) is not one meshcap created; skip it rather than fail.
                        tracing::debug!(error = %e, "skipping undecodable netlink message");
                        continue;
                    }
                };
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(err) => match err.code {
                        None if !dump => return Ok(answers),
                        None => {}
                        Some(code) => return Err(io::Error::from_raw_os_error(-code.get())),
                    },
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    _ => {}
                }
            }
        }
    }
}
