//! File-descriptor passing over Unix `SOCK_SEQPACKET` sockets (`SCM_RIGHTS`).
//!
//! One `sendmsg` is one record: a small metadata payload (JSON, at most [`MAX_META_BYTES`])
//! plus up to [`MAX_FDS`] descriptors. SEQPACKET keeps record boundaries, so descriptors can
//! never be attached to the wrong record, as they can on a stream socket. Received
//! descriptors are close-on-exec (`MSG_CMSG_CLOEXEC`), and a truncated record (`MSG_TRUNC`
//! or `MSG_CTRUNC`) is refused with its descriptors closed, never half-used.
//! The sender keeps ownership of what it sends: it closes its copy only after `send` says
//! the record left, so a failed hand-off can be retried elsewhere.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType};

/// Largest metadata payload of one record.
pub const MAX_META_BYTES: usize = 4096;
/// Most descriptors in one record.
pub const MAX_FDS: usize = 4;

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A connected pair of non-blocking, close-on-exec SEQPACKET sockets.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        socket::AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(errno)
}

/// A connected pair of non-blocking, close-on-exec stream sockets (for framed channels).
pub fn stream_pair() -> io::Result<(UnixStream, UnixStream)> {
    let (a, b) = UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((a, b))
}

/// Sends one record. `WouldBlock` means the peer's buffer is full; `BrokenPipe` or
/// `ConnectionRefused`/`ConnectionReset` that the peer is gone. Never raises SIGPIPE.
pub fn send(sock: BorrowedFd<'_>, meta: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if meta.is_empty() || meta.len() > MAX_META_BYTES || fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "fd record metadata or descriptor count out of range"));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs = if raw.is_empty() { vec![] } else { vec![ControlMessage::ScmRights(&raw)] };
    let iov = [IoSlice::new(meta)];
    let sent =
        socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL, None)
            .map_err(errno)?;
    if sent != meta.len() {
        // SEQPACKET sends a record whole or not at all; anything else is a kernel surprise.
        return Err(io::Error::other("short send on a SEQPACKET socket"));
    }
    Ok(())
}

/// One received record.
#[derive(Debug)]
pub struct Record {
    /// The metadata bytes.
    pub meta: Vec<u8>,
    /// The descriptors, owned by the receiver now.
    pub fds: Vec<OwnedFd>,
}

/// Receives one record: `Ok(None)` when the peer has closed, `WouldBlock` when there is
/// nothing to read.
pub fn recv(sock: BorrowedFd<'_>) -> io::Result<Option<Record>> {
    let mut buf = vec![0u8; MAX_META_BYTES];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (bytes, flags, raw) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(errno)?;
        let mut raw = Vec::new();
        for cmsg in msg.cmsgs().map_err(errno)? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                raw.extend(fds);
            }
        }
        (msg.bytes, msg.flags, raw)
    };
    // SAFETY: the kernel just installed these descriptors in our table for us (SCM_RIGHTS);
    // nothing else refers to them, so taking ownership is sound and closes them on drop.
    let fds: Vec<OwnedFd> = raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated fd record (descriptors closed)"));
    }
    if bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(bytes);
    Ok(Some(Record { meta: buf, fds }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_passed_socket_carries_data_and_arrives_close_on_exec() {
        let (a, b) = seqpacket_pair().unwrap();
        let (mut left, right) = UnixStream::pair().unwrap();
        send(a.as_fd(), br#"{"kind":"client"}"#, &[right.as_fd()]).unwrap();
        drop(right);
        let record = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!(record.meta, br#"{"kind":"client"}"#);
        assert_eq!(record.fds.len(), 1);
        let flags = nix::fcntl::fcntl(&record.fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0, "received descriptors must be close-on-exec");
        let mut got = UnixStream::from(record.fds.into_iter().next().unwrap());
        left.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        got.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn records_keep_their_boundaries_and_eof_is_none() {
        let (a, b) = seqpacket_pair().unwrap();
        for i in 0..5 {
            send(a.as_fd(), format!("record-{i}").as_bytes(), &[]).unwrap();
        }
        for i in 0..5 {
            let r = recv(b.as_fd()).unwrap().unwrap();
            assert_eq!(r.meta, format!("record-{i}").as_bytes());
        }
        assert_eq!(recv(b.as_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert!(recv(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn sending_to_a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = seqpacket_pair().unwrap();
        drop(b);
        let (_x, y) = UnixStream::pair().unwrap();
        assert!(send(a.as_fd(), b"x", &[y.as_fd()]).is_err());
    }

    #[test]
    fn oversized_metadata_is_refused_before_sending() {
        let (a, _b) = seqpacket_pair().unwrap();
        let big = vec![b'x'; MAX_META_BYTES + 1];
        assert_eq!(send(a.as_fd(), &big, &[]).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
