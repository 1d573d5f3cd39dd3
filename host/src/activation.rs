//! systemd socket activation: listening sockets handed over by the service manager, read the
//! way `sd_listen_fds_with_names(3)` reads them.
//!
//! The manager passes the sockets as fds 3, 4, … with `LISTEN_FDS` (how many), `LISTEN_PID`
//! (the process they are for: a child that inherits the variables must not take them) and
//! `LISTEN_FDNAMES` (colon-separated, from `FileDescriptorName=`). fibhost knows three names:
//! `http` (the public listener), `admin` and `stats`; a single socket with any other name, or
//! none, is the public one. Because the manager keeps the sockets open while fibhost restarts,
//! connections that arrive in between wait in the kernel's backlog instead of being refused.

#![expect(
    unsafe_code,
    reason = "taking fds the service manager passed, and removing its variables from the \
              environment, are unsafe by nature; each use says why it holds"
)]

use std::net::TcpListener;
use std::os::fd::{FromRawFd as _, RawFd};

use anyhow::{Context as _, Result, bail};

/// The first fd the service manager passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// The listening sockets the service manager handed over, by role. Empty when fibhost was not
/// socket-activated; a listener not handed over is bound from the config as usual.
#[derive(Debug, Default)]
pub struct Activated {
    /// `http`, or a single socket of any other name.
    pub public: Option<TcpListener>,
    /// `admin`: the admin listener.
    pub admin: Option<TcpListener>,
    /// `stats`: the uWSGI stats socket.
    pub stats: Option<TcpListener>,
}

impl Activated {
    /// Takes the sockets named in the environment and removes `LISTEN_FDS`, `LISTEN_PID` and
    /// `LISTEN_FDNAMES` from it, as `sd_listen_fds(1)` does. Each socket must be a listening
    /// TCP socket; it is made close-on-exec and non-blocking.
    ///
    /// # Safety
    ///
    /// Call it before any other thread exists (first thing in `main`): it changes the
    /// environment, and it takes ownership of the fds the variables name.
    pub unsafe fn take() -> Result<Activated> {
        let var = |name| std::env::var(name).ok();
        let (pid, fds, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // SAFETY: the caller guarantees no other thread reads or writes the environment.
            unsafe { std::env::remove_var(name) };
        }
        let roles = assign(
            pid.as_deref(),
            fds.as_deref(),
            names.as_deref(),
            std::process::id(),
        )?;
        // SAFETY: the manager passed these fds for this process (LISTEN_PID), and `assign`
        // names each at most once, so each is owned exactly once.
        let take = |fd| unsafe { listener(fd) };
        Ok(Activated {
            public: roles.public.map(take).transpose()?,
            admin: roles.admin.map(take).transpose()?,
            stats: roles.stats.map(take).transpose()?,
        })
    }

    /// Whether the service manager handed over any socket.
    pub fn is_empty(&self) -> bool {
        self.public.is_none() && self.admin.is_none() && self.stats.is_none()
    }
}

/// Owns `fd` as a listening TCP socket, close-on-exec and non-blocking.
///
/// # Safety
///
/// `fd` must be open and owned by nobody else.
unsafe fn listener(fd: RawFd) -> Result<TcpListener> {
    // Checked before ownership is taken: a closed fd must not be closed again on drop.
    // SAFETY: F_GETFD only reads the fd's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("socket activation: fd {fd} in `LISTEN_FDS` is not open");
    }
    // SAFETY: the fd is open and, by the caller's contract, ours alone.
    let socket = unsafe { socket2::Socket::from_raw_fd(fd) };
    let what = || format!("socket activation: fd {fd}");
    socket.set_cloexec(true).with_context(what)?;
    let tcp = socket.r#type().with_context(what)? == socket2::Type::STREAM
        && (socket.local_addr().with_context(what)?.as_socket()).is_some();
    if !tcp || !socket.is_listener().with_context(what)? {
        bail!(
            "socket activation: fd {fd} is not a listening TCP socket; fibhost serves TCP \
             (`ListenStream=` with an address or port in the .socket unit)"
        );
    }
    socket.set_nonblocking(true).with_context(what)?;
    Ok(socket.into())
}

/// Which fd has which role.
#[derive(Debug, Default, PartialEq, Eq)]
struct Roles {
    public: Option<RawFd>,
    admin: Option<RawFd>,
    stats: Option<RawFd>,
}

/// Reads the activation variables (`our_pid` is this process's id): no sockets unless both
/// `LISTEN_PID` and `LISTEN_FDS` are set and `LISTEN_PID` is us (as `sd_listen_fds` decides).
fn assign(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Roles> {
    let (Some(pid), Some(count)) = (listen_pid, listen_fds) else {
        return Ok(Roles::default());
    };
    let pid: u32 = (pid.trim().parse())
        .with_context(|| format!("socket activation: `LISTEN_PID` is `{pid}`, not a pid"))?;
    if pid != our_pid {
        return Ok(Roles::default());
    }
    let count: RawFd = (count.trim().parse().ok())
        .filter(|n| (0..=1024).contains(n))
        .with_context(|| {
            format!("socket activation: `LISTEN_FDS` is `{count}`, not a number of fds")
        })?;
    let names: Vec<&str> = match names {
        Some(names) => names.split(':').collect(),
        None => vec![""; count as usize],
    };
    if names.len() != count as usize {
        bail!(
            "socket activation: `LISTEN_FDNAMES` names {} sockets but `LISTEN_FDS` passes {count}",
            names.len()
        );
    }
    let mut roles = Roles::default();
    for (fd, name) in (FIRST_FD..).zip(&names) {
        let slot = match *name {
            "http" => &mut roles.public,
            "admin" => &mut roles.admin,
            "stats" => &mut roles.stats,
            _ if count == 1 => &mut roles.public,
            other => bail!(
                "socket activation: fd {fd} is named `{other}`; with several sockets, name \
                 each `http`, `admin` or `stats` (`FileDescriptorName=` in the .socket unit)"
            ),
        };
        if slot.replace(fd).is_some() {
            bail!("socket activation: two sockets are named `{name}`");
        }
    }
    Ok(roles)
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u32 = 4242;

    fn roles(public: Option<RawFd>, admin: Option<RawFd>, stats: Option<RawFd>) -> Roles {
        Roles {
            public,
            admin,
            stats,
        }
    }

    #[test]
    fn sockets_are_taken_only_when_passed_to_this_process() {
        let none = Roles::default();
        assert_eq!(assign(None, None, None, US).unwrap(), none);
        assert_eq!(assign(None, Some("1"), None, US).unwrap(), none);
        assert_eq!(assign(Some("4242"), None, None, US).unwrap(), none);
        // A parent's variables, inherited by a child: not ours.
        assert_eq!(assign(Some("4243"), Some("1"), None, US).unwrap(), none);
        assert_eq!(assign(Some("4242"), Some("0"), None, US).unwrap(), none);
        assert_eq!(
            assign(Some("4242"), Some("1"), None, US).unwrap(),
            roles(Some(3), None, None)
        );
    }

    #[test]
    fn names_tell_the_sockets_apart_in_any_order() {
        let got = assign(Some("4242"), Some("3"), Some("admin:http:stats"), US).unwrap();
        assert_eq!(got, roles(Some(4), Some(3), Some(5)));
        let got = assign(Some("4242"), Some("2"), Some("stats:admin"), US).unwrap();
        assert_eq!(got, roles(None, Some(4), Some(3)));
        // A single socket is the public one whatever systemd named it (the unit's name by
        // default), unless it is named for another role.
        for name in ["fibhost.socket", "unknown", "", "http"] {
            let got = assign(Some("4242"), Some("1"), Some(name), US).unwrap();
            assert_eq!(got, roles(Some(3), None, None), "{name:?}");
        }
        let got = assign(Some("4242"), Some("1"), Some("admin"), US).unwrap();
        assert_eq!(got, roles(None, Some(3), None));
    }

    #[test]
    fn bad_variables_are_errors_that_name_the_fix() {
        let err = |pid, fds, names| format!("{:#}", assign(pid, fds, names, US).unwrap_err());
        assert!(err(Some("x"), Some("1"), None).contains("`LISTEN_PID` is `x`"));
        assert!(err(Some("4242"), Some("-1"), None).contains("`LISTEN_FDS` is `-1`"));
        assert!(err(Some("4242"), Some("two"), None).contains("`LISTEN_FDS` is `two`"));
        assert!(err(Some("4242"), Some("2"), Some("http")).contains("names 1 sockets"));
        assert!(err(Some("4242"), Some("2"), None).contains("fd 3 is named ``"));
        let unknown = err(Some("4242"), Some("2"), Some("http:web"));
        assert!(unknown.contains("fd 4 is named `web`"), "{unknown}");
        assert!(unknown.contains("FileDescriptorName="), "{unknown}");
        let twice = err(Some("4242"), Some("2"), Some("http:http"));
        assert!(twice.contains("two sockets are named `http`"), "{twice}");
    }
}
