//! The systemd notify protocol (`sd_notify(3)`), without libsystemd and
//! without unsafe code: readiness, reloads, shutdown, watchdog pings and a
//! one-line status, each sent as one datagram to `$NOTIFY_SOCKET`.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every method does nothing, so the
//! daemon calls them unconditionally. Sending never fails the caller: the
//! first failure is logged with `tracing::warn!`, later ones only at debug
//! level, and the daemon carries on.
//!
//! The environment is read, never changed (removing variables needs unsafe
//! code in edition 2024). Children spawned with `sh -c` therefore inherit
//! [`ENV_VARS`]; with `NotifyAccess=main` systemd ignores anything they send,
//! and `WATCHDOG_PID` keeps a well-behaved child from adopting our watchdog,
//! but the spawn sites can also drop them with `Command::env_remove`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The variables systemd sets for the notify protocol; children have no use for them.
pub const ENV_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// How long one send may block when the service manager is slow to read.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// A handle on the service manager's notify socket; a no-op when there is none.
///
/// Cheap to share: every method takes `&self` (wrap it in an `Arc` to hand it to tasks).
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    warned: AtomicBool,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier systemd asked for through `NOTIFY_SOCKET`: an absolute
    /// path, or an abstract socket when it starts with `@`. Unset or empty:
    /// a no-op notifier. Anything unusable is logged and also gives a no-op.
    pub fn from_env() -> Notifier {
        Notifier::from_var(std::env::var_os("NOTIFY_SOCKET").as_deref())
    }

    /// A notifier sending to the datagram socket bound at `path` (tests,
    /// and running under a supervisor other than systemd).
    pub fn to_path(path: impl AsRef<Path>) -> Notifier {
        let path = path.as_ref();
        match SocketAddr::from_pathname(path) {
            Ok(addr) => Notifier::to_addr(addr),
            Err(err) => {
                tracing::warn!(socket = %path.display(), error = %err, "cannot use the notify socket; not notifying");
                Notifier::disabled()
            }
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None, warned: AtomicBool::new(false) }
    }

    /// Whether there is a socket to send to.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Start-up finished, or a reload finished (`READY=1`).
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A reload begins (`RELOADING=1`); follow it with [`Notifier::ready`]
    /// when the new configuration is in force.
    ///
    /// Also sends `MONOTONIC_USEC=` (`CLOCK_MONOTONIC` in microseconds), which
    /// systemd ≥ 253 needs to match the message to the reload it started for
    /// `Type=notify-reload`. When that clock cannot be read (see
    /// [`monotonic_usec`]) the field is left out: `Type=notify` with an
    /// `ExecReload=` that sends `SIGHUP`, as in `contrib/systemd`, works without it.
    pub fn reloading(&self) {
        match monotonic_usec() {
            Some(usec) => self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}")),
            None => self.send("RELOADING=1"),
        }
    }

    /// Shutdown begins (`STOPPING=1`).
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// The watchdog ping (`WATCHDOG=1`); send it about every half [`watchdog_interval`].
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// A one-line status for `systemctl status` (`STATUS=…`). Line breaks
    /// would end the field, and NUL bytes make systemd drop the whole
    /// message, so both become spaces.
    pub fn status(&self, text: &str) {
        let line: String = text.chars().map(|c| if matches!(c, '\n' | '\r' | '\0') { ' ' } else { c }).collect();
        self.send(&format!("STATUS={line}"));
    }

    fn from_var(value: Option<&OsStr>) -> Notifier {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Notifier::disabled();
        };
        let bytes = value.as_bytes();
        if bytes.starts_with(b"/") {
            return Notifier::to_path(Path::new(value));
        }
        if let Some(name) = bytes.strip_prefix(b"@") {
            return match abstract_addr(name) {
                Ok(addr) => Notifier::to_addr(addr),
                Err(err) => {
                    tracing::warn!(socket = %value.display(), error = %err, "cannot use the notify socket; not notifying");
                    Notifier::disabled()
                }
            };
        }
        tracing::warn!(
            socket = %value.display(),
            "NOTIFY_SOCKET is neither an absolute path nor an abstract socket (@name); not notifying"
        );
        Notifier::disabled()
    }

    fn to_addr(addr: SocketAddr) -> Notifier {
        let socket = UnixDatagram::unbound().and_then(|socket| {
            socket.set_write_timeout(Some(SEND_TIMEOUT))?;
            Ok(socket)
        });
        match socket {
            Ok(socket) => Notifier { target: Some(Target { socket, addr }), warned: AtomicBool::new(false) },
            Err(err) => {
                tracing::warn!(error = %err, "cannot create a socket for the notify protocol; not notifying");
                Notifier::disabled()
            }
        }
    }

    fn send(&self, message: &str) {
        let Some(target) = &self.target else { return };
        if let Err(err) = target.socket.send_to_addr(message.as_bytes(), &target.addr) {
            if self.warned.swap(true, Ordering::Relaxed) {
                tracing::debug!(error = %err, message, "notify message not sent");
            } else {
                tracing::warn!(
                    error = %err,
                    message,
                    "cannot notify the service manager (further failures are logged at debug level)"
                );
            }
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> std::io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "abstract sockets exist only on Linux"))
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), from
/// `WATCHDOG_USEC`; `None` when the watchdog is off or meant for another
/// process (`WATCHDOG_PID` set to a pid other than ours). Ping at half of it.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var_os("WATCHDOG_USEC");
    let pid = std::env::var_os("WATCHDOG_PID");
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] without the environment: the values of
/// `WATCHDOG_USEC` and `WATCHDOG_PID` and our own pid. Follows
/// `sd_watchdog_enabled(3)`: the interval must be a positive, finite number
/// of microseconds, and a `WATCHDOG_PID` that is not a number means no watchdog.
pub fn parse_watchdog(usec: Option<&OsStr>, pid: Option<&OsStr>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        let pid: u32 = pid.to_str()?.parse().ok()?;
        if pid != our_pid {
            return None;
        }
    }
    let usec: u64 = usec?.to_str()?.parse().ok()?;
    (usec != 0 && usec != u64::MAX).then(|| Duration::from_micros(usec))
}

/// `CLOCK_MONOTONIC` in microseconds, if it can be read without unsafe code.
///
/// The standard library offers no way to read the clock's value, but on
/// Linux `Instant` is that clock and its `Debug` output shows the raw
/// reading (`Instant { tv_sec: 1234, tv_nsec: 5678 }`). That output is not a
/// stable interface, so anything unexpected gives `None` (and the unit test
/// notices when a new toolchain changes it).
pub fn monotonic_usec() -> Option<u64> {
    if cfg!(target_os = "linux") { parse_instant_debug(&format!("{:?}", std::time::Instant::now())) } else { None }
}

fn parse_instant_debug(text: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let start = text.find(name)? + name.len();
        let digits = &text[start..];
        let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
        digits[..end].parse().ok()
    };
    let (secs, nanos) = (field("tv_sec: ")?, field("tv_nsec: ")?);
    if nanos >= 1_000_000_000 {
        return None;
    }
    secs.checked_mul(1_000_000)?.checked_add(nanos / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (dir, path, socket)
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buffer = [0u8; 4096];
        let n = socket.recv(&mut buffer).unwrap();
        String::from_utf8(buffer[..n].to_vec()).unwrap()
    }

    fn assert_nothing_pending(socket: &UnixDatagram) {
        socket.set_nonblocking(true).unwrap();
        let mut buffer = [0u8; 16];
        let err = socket.recv(&mut buffer).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }

    #[test]
    fn sends_each_message_as_one_datagram() {
        let (_dir, path, socket) = listener();
        let notifier = Notifier::to_path(&path);
        assert!(notifier.is_enabled());
        notifier.ready();
        assert_eq!(receive(&socket), "READY=1");
        notifier.stopping();
        assert_eq!(receive(&socket), "STOPPING=1");
        notifier.watchdog();
        assert_eq!(receive(&socket), "WATCHDOG=1");
        notifier.status("3 jobs scheduled; next: digest at 06:30");
        assert_eq!(receive(&socket), "STATUS=3 jobs scheduled; next: digest at 06:30");
        assert_nothing_pending(&socket);
    }

    #[test]
    fn status_is_one_line() {
        let (_dir, path, socket) = listener();
        Notifier::to_path(&path).status("first\nsecond\r\nthird\0fourth");
        assert_eq!(receive(&socket), "STATUS=first second  third fourth");
    }

    #[test]
    fn reloading_carries_the_monotonic_time() {
        let (_dir, path, socket) = listener();
        let before = monotonic_usec().expect("CLOCK_MONOTONIC is readable on Linux");
        Notifier::to_path(&path).reloading();
        let after = monotonic_usec().unwrap();
        let message = receive(&socket);
        let (first, second) = message.split_once('\n').expect("two fields");
        assert_eq!(first, "RELOADING=1");
        let usec: u64 = second.strip_prefix("MONOTONIC_USEC=").expect("MONOTONIC_USEC field").parse().unwrap();
        assert!(before <= usec && usec <= after, "{before} <= {usec} <= {after}");
    }

    #[test]
    fn monotonic_usec_follows_instant() {
        let start = std::time::Instant::now();
        let first = monotonic_usec().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let second = monotonic_usec().unwrap();
        let elapsed = u64::try_from(start.elapsed().as_micros()).unwrap();
        assert!(second - first >= 20_000, "{first} .. {second}");
        assert!(second - first <= elapsed + 2, "{} > {elapsed}", second - first);
    }

    #[test]
    fn parses_the_debug_form_of_instant() {
        assert_eq!(parse_instant_debug("Instant { tv_sec: 12, tv_nsec: 345678901 }"), Some(12_345_678));
        assert_eq!(parse_instant_debug("Instant { tv_sec: 0, tv_nsec: 999 }"), Some(0));
        assert_eq!(parse_instant_debug("Instant { tv_sec: 1, tv_nsec: 1000000000 }"), None);
        assert_eq!(parse_instant_debug("Instant { t: 17 }"), None);
        assert_eq!(parse_instant_debug("Instant(17ns)"), None);
    }

    #[test]
    fn abstract_socket_from_the_variable() {
        let name = format!("orchestrator-sdnotify-test-{}", std::process::id());
        let socket = UnixDatagram::bind_addr(&abstract_addr(name.as_bytes()).unwrap()).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let notifier = Notifier::from_var(Some(OsStr::new(&format!("@{name}"))));
        assert!(notifier.is_enabled());
        notifier.ready();
        assert_eq!(receive(&socket), "READY=1");
    }

    #[test]
    fn path_from_the_variable() {
        let (_dir, path, socket) = listener();
        let notifier = Notifier::from_var(Some(path.as_os_str()));
        notifier.watchdog();
        assert_eq!(receive(&socket), "WATCHDOG=1");
    }

    #[test]
    fn no_socket_means_no_op() {
        for value in [None, Some(""), Some("relative/notify.sock"), Some("vsock:2:1234")] {
            let notifier = Notifier::from_var(value.map(OsStr::new));
            assert!(!notifier.is_enabled(), "{value:?}");
            notifier.ready();
            notifier.reloading();
            notifier.status("anything");
            notifier.watchdog();
            notifier.stopping();
            assert!(!notifier.warned.load(Ordering::Relaxed));
        }
    }

    #[test]
    fn send_failures_do_not_reach_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::to_path(dir.path().join("nobody-listens.sock"));
        assert!(notifier.is_enabled());
        assert!(!notifier.warned.load(Ordering::Relaxed));
        notifier.ready();
        assert!(notifier.warned.load(Ordering::Relaxed), "the first failure is warned about");
        notifier.ready();
        notifier.stopping();
    }

    #[test]
    fn watchdog_interval_parsing() {
        let parse =
            |usec: Option<&str>, pid: Option<&str>| parse_watchdog(usec.map(OsStr::new), pid.map(OsStr::new), 42);
        assert_eq!(parse(Some("300000000"), None), Some(Duration::from_secs(300)));
        assert_eq!(parse(Some("1500"), Some("42")), Some(Duration::from_micros(1500)));
        assert_eq!(parse(Some("300000000"), Some("43")), None, "meant for another process");
        assert_eq!(parse(Some("300000000"), Some("")), None);
        assert_eq!(parse(Some("300000000"), Some("forty-two")), None);
        assert_eq!(parse(None, Some("42")), None);
        assert_eq!(parse(None, None), None);
        assert_eq!(parse(Some("0"), None), None, "zero means off");
        assert_eq!(parse(Some(&u64::MAX.to_string()), None), None, "infinity means off");
        assert_eq!(parse(Some("-5"), None), None);
        assert_eq!(parse(Some("5s"), None), None);
    }
}
