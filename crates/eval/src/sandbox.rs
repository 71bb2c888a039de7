//! Running a model's code against an item's tests, in a subprocess that
//! cannot reach the network, use more than its memory and CPU limits, or run
//! past its wall-clock limit.
//!
//! Layers: a new network namespace (no interfaces, not even loopback) when
//! the OS allows it; a Python prelude that disables `socket` either way;
//! rlimits on address space, CPU seconds, file size and core dumps; its own
//! process group, killed whole at the deadline; an empty environment and a
//! scratch directory as the working directory.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PRELUDE: &str = "\
import socket as _sandbox_socket
def _sandbox_no_network(*_a, **_k):
    raise OSError('network access is disabled in the eval sandbox')
for _name in ('socket', 'create_connection', 'getaddrinfo', 'socketpair', 'fromfd'):
    setattr(_sandbox_socket, _name, _sandbox_no_network)
del _sandbox_socket, _name
";

#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The real interpreter (not a shim that needs its environment).
    pub python: PathBuf,
    pub wall: Duration,
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub passed: bool,
    /// Why it failed (exit status, limit hit, the end of stderr), or "ok".
    pub detail: String,
}

impl Sandbox {
    /// Finds `python3` and resolves it to its real executable.
    pub fn new(wall: Duration) -> anyhow::Result<Self> {
        let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output()?;
        anyhow::ensure!(out.status.success(), "python3 is needed to score code items");
        let python = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(Self { python, wall, cpu_seconds: wall.as_secs().max(1), memory_bytes: 1 << 30 })
    }

    /// Runs `program` (the answer's code followed by the item's tests); it
    /// passes if it exits 0 within the limits.
    pub fn run_python(&self, program: &str) -> RunOutcome {
        let fail = |detail: String| RunOutcome { passed: false, detail };
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => return fail(format!("sandbox: no scratch directory: {e}")),
        };
        let script = dir.path().join("main.py");
        let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let files = std::fs::write(&script, format!("{PRELUDE}\n{program}\n"))
            .and_then(|_| Ok((std::fs::File::create(&out_path)?, std::fs::File::create(&err_path)?)));
        let (stdout, stderr) = match files {
            Ok(f) => f,
            Err(e) => return fail(format!("sandbox: {e}")),
        };
        let (cpu, mem) = (self.cpu_seconds, self.memory_bytes);
        let mut cmd = Command::new(&self.python);
        cmd.arg("-I")
            .arg(&script)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // SAFETY: only async-signal-safe calls (setsid, setrlimit, unshare)
        // between fork and exec.
        #[expect(unsafe_code, reason = "pre_exec is how the sandbox sets limits in the child; see SAFETY")]
        unsafe {
            cmd.pre_exec(move || {
                libc::setsid();
                let limit = |resource, value: u64| {
                    let rl = libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
                    libc::setrlimit(resource, &rl);
                };
                limit(libc::RLIMIT_AS, mem);
                limit(libc::RLIMIT_CPU, cpu);
                limit(libc::RLIMIT_FSIZE, 16 << 20);
                limit(libc::RLIMIT_CORE, 0);
                // Without the privilege this fails, and the prelude alone
                // keeps Python's socket module disabled.
                libc::unshare(libc::CLONE_NEWNET);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return fail(format!("sandbox: cannot start {}: {e}", self.python.display())),
        };
        let deadline = Instant::now() + self.wall;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => break None,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return fail(format!("sandbox: {e}")),
            }
        };
        // The whole group: children the program started die with it.
        #[expect(unsafe_code, reason = "killpg has no safe wrapper; it only signals the child's process group")]
        unsafe {
            libc::killpg(child.id() as libc::pid_t, libc::SIGKILL)
        };
        let _ = child.wait();
        let tail = |path: &std::path::Path| {
            let mut s = String::new();
            let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut s));
            let s = s.trim();
            s.char_indices().rev().nth(400).map_or(s, |(i, _)| &s[i..]).to_string()
        };
        match status {
            None => fail(format!("timed out after {} ms", self.wall.as_millis())),
            Some(s) if s.success() => RunOutcome { passed: true, detail: "ok".into() },
            Some(s) => {
                use std::os::unix::process::ExitStatusExt;
                let why = match s.signal() {
                    Some(libc::SIGXCPU) | Some(libc::SIGKILL) => {
                        format!("killed by a limit (signal {})", s.signal().unwrap_or(0))
                    }
                    Some(sig) => format!("killed by signal {sig}"),
                    None => format!("exit status {}", s.code().unwrap_or(-1)),
                };
                fail(format!("{why}: {}", tail(&err_path)))
            }
        }
    }
}
