//! Packet filters in pcap syntax compiled to classic BPF by libpcap, loaded
//! at run time (used by the sniffing socket, and by the config check so a
//! bad filter is reported at its key).

use std::ffi::CString;

/// Names tried, in order, when libpcap is loaded for a filter.
const LIBPCAP_NAMES: &[&str] = &["libpcap.so.0.8", "libpcap.so.1", "libpcap.so"];

/// Compile a filter in pcap syntax (as tcpdump takes it) for the packets the
/// capture socket delivers: raw IP (IPv4 or IPv6) from the network header on.
/// The error is libpcap's message.
///
/// libpcap is loaded at run time (`dlopen`), only here: the binary does not
/// link it, a capture without a filter never needs it, and a missing
/// library is an error that names the package to install.
pub fn compile_filter(expr: &str) -> Result<Vec<libc::sock_filter>, String> {
    compile_filter_with(LIBPCAP_NAMES, expr)
}

/// [`compile_filter`] with the library names to try.
fn compile_filter_with(names: &[&str], expr: &str) -> Result<Vec<libc::sock_filter>, String> {
    use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

    #[repr(C)]
    struct BpfProgram {
        bf_len: c_uint,
        bf_insns: *mut libc::sock_filter,
    }
    type OpenDead = unsafe extern "C" fn(c_int, c_int) -> *mut c_void;
    type Compile =
        unsafe extern "C" fn(*mut c_void, *mut BpfProgram, *const c_char, c_int, u32) -> c_int;
    type GetErr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
    type FreeCode = unsafe extern "C" fn(*mut BpfProgram);
    type Close = unsafe extern "C" fn(*mut c_void);

    // DLT_RAW as libpcap numbers it on Linux (12; LINKTYPE_RAW, 101, is the
    // file format's number, which pcap_open_dead refuses).
    const DLT_RAW: c_int = 12;
    const PCAP_NETMASK_UNKNOWN: u32 = 0xffff_ffff;
    // Old libpcap versions compile with global state.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    let mut last = String::new();
    let lib = names
        .iter()
        // SAFETY: loading libpcap runs its initialisers only, which have no
        // effect on this process beyond the library itself.
        .find_map(|n| match unsafe { libloading::Library::new(n) } {
            Ok(l) => Some(l),
            Err(e) => {
                last = e.to_string();
                None
            }
        })
        .ok_or_else(|| {
            format!(
                "a capture filter needs libpcap at run time, which is not installed \
                 (Debian/Ubuntu: apt-get install libpcap0.8; RHEL/Fedora: dnf install libpcap); \
                 without sources.sniff.filter the capture needs no libpcap ({last})"
            )
        })?;
    let c_expr = CString::new(expr).map_err(|_| "the filter contains a NUL byte".to_string())?;
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the symbols have these C signatures (pcap/pcap.h, libpcap
    // 1.x); every handle is closed and every program freed below, and the
    // library outlives all of them.
    unsafe {
        let sym = |name: &[u8]| -> Result<*mut c_void, String> {
            lib.get::<*mut c_void>(name).map(|s| *s).map_err(|e| {
                format!(
                    "libpcap lacks {}: {e}",
                    String::from_utf8_lossy(&name[..name.len() - 1])
                )
            })
        };
        let open_dead: OpenDead = std::mem::transmute(sym(b"pcap_open_dead\0")?);
        let compile: Compile = std::mem::transmute(sym(b"pcap_compile\0")?);
        let geterr: GetErr = std::mem::transmute(sym(b"pcap_geterr\0")?);
        let freecode: FreeCode = std::mem::transmute(sym(b"pcap_freecode\0")?);
        let close: Close = std::mem::transmute(sym(b"pcap_close\0")?);
        let p = open_dead(DLT_RAW, 65_535);
        if p.is_null() {
            return Err("libpcap: pcap_open_dead failed".into());
        }
        let mut prog = BpfProgram {
            bf_len: 0,
            bf_insns: std::ptr::null_mut(),
        };
        let result = if compile(p, &mut prog, c_expr.as_ptr(), 1, PCAP_NETMASK_UNKNOWN) != 0 {
            let e = geterr(p);
            Err(if e.is_null() {
                "libpcap could not compile the filter".to_string()
            } else {
                CStr::from_ptr(e).to_string_lossy().into_owned()
            })
        } else {
            let insns = if prog.bf_insns.is_null() || prog.bf_len == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(prog.bf_insns, prog.bf_len as usize).to_vec()
            };
            freecode(&mut prog);
            if insns.is_empty() {
                Err("libpcap compiled an empty program".to_string())
            } else {
                Ok(insns)
            }
        };
        close(p);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_libpcap_is_named_with_its_package() {
        let e = compile_filter_with(&["libpcap-not-here.so.9"], "udp port 5060").unwrap_err();
        assert!(e.contains("libpcap0.8"), "{e}");
        assert!(e.contains("sources.sniff.filter"), "{e}");
    }

    #[test]
    fn filters_compile_through_the_loaded_libpcap() {
        if unsafe { libloading::Library::new("libpcap.so.0.8") }.is_err() {
            eprintln!("skipped: no libpcap.so.0.8 (apt-get install libpcap0.8)");
            return;
        }
        let prog = compile_filter("udp port 5060 or udp portrange 10000-20000").unwrap();
        // Raw IP: the program starts by reading the IP version nibble, and
        // ends with accept/drop returns.
        assert!(prog.len() > 5, "{} instructions", prog.len());
        assert!(prog.iter().any(|i| i.code == 0x06), "no return instruction");
        let e = compile_filter("udp port").unwrap_err();
        assert!(e.contains("syntax error"), "{e}");
        assert!(compile_filter("ether host 01:02:03:04:05:06").is_err());
        assert!(compile_filter("udp\0port").is_err());
    }
}
