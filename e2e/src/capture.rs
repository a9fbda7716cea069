//! Watching what crosses a link: an AF_PACKET socket inside a namespace, the way tcpdump
//! does it, so the suite can tell encrypted mesh traffic from plaintext without installing
//! anything.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use ambit_testbed::Netns;
use socket2::{Domain, Protocol, Socket, Type};

const ETH_P_ALL: u16 = 0x0003;

/// Every frame seen on all interfaces of `netns` while `during` runs (plus a short tail).
pub fn frames_during<T>(
    netns: &Netns,
    during: impl FnOnce() -> T,
) -> anyhow::Result<(Vec<Vec<u8>>, T)> {
    let socket = netns.run(|| {
        Socket::new(
            Domain::PACKET,
            Type::RAW,
            Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
        )
    })??;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = vec![MaybeUninit::<u8>::uninit(); 65_536];
            let mut tail_until: Option<Instant> = None;
            loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let until = *tail_until
                        .get_or_insert_with(|| Instant::now() + Duration::from_millis(300));
                    if Instant::now() > until {
                        break;
                    }
                }
                match socket.recv(&mut buf) {
                    Ok(n) => frames.push(
                        buf[..n]
                            .iter()
                            // SAFETY: recv initialised the first n bytes.
                            .map(|b| unsafe { b.assume_init() })
                            .collect(),
                    ),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            frames
        })
    };
    let value = during();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let frames = reader
        .join()
        .map_err(|_| anyhow::anyhow!("capture thread panicked"))?;
    Ok((frames, value))
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether any frame is TCP to or from `port` (IPv4 or IPv6, Ethernet framing).
pub fn has_tcp_port(frames: &[Vec<u8>], port: u16) -> bool {
    frames
        .iter()
        .any(|f| tcp_ports(f).is_some_and(|(s, d)| s == port || d == port))
}

fn tcp_ports(frame: &[u8]) -> Option<(u16, u16)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let (proto, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
            (*frame.get(14 + 9)?, 14 + ihl)
        }
        0x86dd => (*frame.get(14 + 6)?, 14 + 40),
        _ => return None,
    };
    if proto != 6 {
        return None;
    }
    let s = u16::from_be_bytes([*frame.get(l4)?, *frame.get(l4 + 1)?]);
    let d = u16::from_be_bytes([*frame.get(l4 + 2)?, *frame.get(l4 + 3)?]);
    Some((s, d))
}
