//! Pseudo-terminals of interactive commands: the worker opens the pair,
//! gives the slave to the command (its controlling terminal), and keeps the
//! master: output is read from it, input written to it, and its size set on
//! it. The master's foreground process group is where a client's signals go.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::{OpenptyResult, Winsize, openpty};
use rdev_shared::interactive::TtySize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The worker's side of a command's terminal; cheap to clone.
#[derive(Clone, Debug)]
pub struct PtyMaster(Arc<AsyncFd<OwnedFd>>);

/// Opens a terminal pair of `size`: the master (non-blocking, registered
/// with the runtime) and the slave for the command (close-on-exec: it is
/// passed on explicitly).
pub fn open(size: TtySize) -> io::Result<(PtyMaster, OwnedFd)> {
    let OpenptyResult { master, slave } =
        openpty(Some(&winsize(size)), None).map_err(io::Error::from)?;
    for fd in [&master, &slave] {
        fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    }
    let flags =
        OFlag::from_bits_truncate(fcntl(&master, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(&master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    // SAFETY: `master` is an open descriptor the AsyncFd owns from here on;
    // an OwnedFd's raw descriptor never changes while it lives.
    let master = unsafe { AsyncFd::register(master) }.map_err(io::Error::from)?;
    Ok((PtyMaster(Arc::new(master)), slave))
}

fn winsize(size: TtySize) -> Winsize {
    Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl PtyMaster {
    fn raw(&self) -> RawFd {
        self.0.get_ref().as_raw_fd()
    }

    /// Sets the terminal's size (the command gets SIGWINCH).
    pub fn resize(&self, size: TtySize) -> io::Result<()> {
        let ws = winsize(size);
        // SAFETY: TIOCSWINSZ reads one `winsize` from a valid pointer.
        if unsafe { nix::libc::ioctl(self.raw(), nix::libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The terminal's foreground process group (in the worker's PID
    /// namespace), where Ctrl-C would go.
    pub fn foreground_group(&self) -> io::Result<i32> {
        let mut pgrp: nix::libc::pid_t = 0;
        // SAFETY: TIOCGPGRP writes one pid_t to a valid pointer.
        if unsafe { nix::libc::ioctl(self.raw(), nix::libc::TIOCGPGRP, &mut pgrp) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(pgrp)
    }
}

impl AsyncRead for PtyMaster {
    /// Reads output. `EIO` means every slave descriptor is closed (the
    /// command's processes are gone): that is the end of the output.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
