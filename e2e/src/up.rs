//! `ambit up` on the default demo as a background process, for the tests of the commands
//! that read a running mesh (config, bench, explain) and of `ambit up` itself.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use ambit_cli::local::Binaries;

/// The `ambit` binary, built beside the tests.
pub fn ambit() -> Command {
    Command::new(Binaries::locate().expect("binaries built").ambit)
}

/// An `ambit up` in the background, stopped with SIGINT when dropped, even if the test fails.
pub struct RunningUp(Option<Child>);

impl RunningUp {
    /// Starts it and waits until its traffic flows (pods captured, certificates issued).
    pub fn start() -> Self {
        let mut child = ambit()
            .args(["up", "--duration", "10m", "--every", "60s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ambit up");
        let stderr = child.stderr.take().expect("piped");
        let up = RunningUp(Some(child));
        let mut seen = Vec::new();
        let mut lines = BufReader::new(stderr).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            let flowing = line.contains("traffic flowing");
            seen.push(line);
            if flowing {
                // Keep reading, or its next progress line would hit a closed pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return up;
            }
        }
        panic!("ambit up never got its traffic flowing: {seen:#?}");
    }

    /// An `ambit up` the test started itself (its own arguments, its output piped), interrupted
    /// and waited for when dropped all the same.
    pub fn adopt(child: Child) -> Self {
        RunningUp(Some(child))
    }

    /// SIGINT, then wait; true if it exited with success.
    pub fn stop(mut self) -> bool {
        self.interrupt().is_some_and(|s| s.success())
    }

    /// SIGINT (it drains and removes what it made), then wait for its exit; `None` once done.
    pub fn interrupt(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        child.wait().ok()
    }
}

impl Drop for RunningUp {
    fn drop(&mut self) {
        self.interrupt();
    }
}
