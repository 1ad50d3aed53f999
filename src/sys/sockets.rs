//! Sockets: integer options, and the control messages of received
//! datagrams (media ports and the sniffing socket read the same two).

use std::io;
use std::os::fd::RawFd;

use pbx_core::Timestamp;

/// `setsockopt` of an int-valued option.
pub fn set_int_option(fd: RawFd, level: i32, name: i32, v: libc::c_int) -> io::Result<()> {
    // SAFETY: a c_int option value of the right size for these options.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The receive timestamp (`SCM_TIMESTAMPNS`) and the socket's overflow
/// counter (`SO_RXQ_OVFL`) in the control messages of a received `msghdr`.
///
/// # Safety
/// `h` must be a header the kernel just filled by `recvmsg`/`recvmmsg`, its
/// control buffer still alive.
pub unsafe fn control_values(h: &libc::msghdr) -> (Option<Timestamp>, Option<u32>) {
    let (mut ts, mut ovfl) = (None, None);
    // SAFETY: the CMSG macros walk the control buffer the kernel filled,
    // bounded by msg_controllen; data is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t: libc::timespec = std::ptr::read_unaligned(data.cast());
                ts = Some(Timestamp::from_micros(
                    t.tv_sec * 1_000_000 + t.tv_nsec / 1000,
                ));
            } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL {
                ovfl = Some(std::ptr::read_unaligned(data.cast::<u32>()));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    (ts, ovfl)
}
