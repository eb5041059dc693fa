//! Running and spawning processes that die with the test process.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not
//! the process. Test functions run on short-lived threads, so long-lived
//! children (registry, sshd, nginx) are forked by one spawner thread that lives
//! as long as the process: see [`spawn_persistent`]. Short commands are run to
//! completion on the calling thread with [`run`], which also sets the death
//! signal (so a killed test run leaves no docker CLI or capstan behind).

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Ask the kernel to send `sig` to the child when its parent thread dies.
pub fn die_with_parent(cmd: &mut Command, sig: libc::c_int) {
    // SAFETY: prctl and getppid are async-signal-safe.
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may already be gone (race between fork and prctl).
            if libc::getppid() != parent {
                libc::raise(sig);
            }
            Ok(())
        });
    }
}

/// The output of a finished command.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code; `128 + signal` when killed by a signal; -1 if unknown.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0 && !self.timed_out
    }
}

pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => -1,
    }
}

/// Describe a command for error messages: `program arg arg ...`.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run a command to completion with a time limit; stdin gets `input` (or
/// nothing). The child gets SIGKILL if this thread dies.
pub fn run(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> io::Result<Output> {
    die_with_parent(cmd, libc::SIGKILL);
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let Some(data) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(5));
    };
    // Grandchildren may hold the pipes open: don't wait for them forever.
    let stdout = join_with_limit(out_t, Duration::from_secs(5));
    let stderr = join_with_limit(err_t, Duration::from_secs(5));
    Ok(Output {
        status: exit_code(status),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        timed_out,
    })
}

fn join_with_limit(t: thread::JoinHandle<Vec<u8>>, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    while !t.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    if t.is_finished() {
        t.join().unwrap_or_default()
    } else {
        Vec::new()
    }
}

/// Run a command and return its stdout; panic with everything known on failure.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    run_ok_input(cmd, None, timeout)
}

pub fn run_ok_input(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> String {
    let what = describe(cmd);
    match run(cmd, input, timeout) {
        Ok(o) if o.success() => o.stdout,
        Ok(o) => panic!(
            "command failed{}: {what}\nexit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            if o.timed_out { format!(" (timed out after {timeout:?})") } else { String::new() },
            o.status,
            o.stdout.trim_end(),
            o.stderr.trim_end()
        ),
        Err(e) => panic!("cannot run {what}: {e}"),
    }
}

/// Shorthand: `Command::new(program).args(args)`.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawn a long-lived child from a thread that lives as long as the process,
/// with `PR_SET_PDEATHSIG = sig`: the child dies when the test process does.
/// Stdio must be set up by the caller (e.g. to a log file).
pub fn spawn_persistent(mut command: Command, sig: libc::c_int) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        thread::Builder::new()
            .name("support-spawner".into())
            .spawn(move || {
                // Never returns while the process runs: the receiver lives in a
                // static sender's counterpart, which is never dropped.
                for (mut c, reply) in rx {
                    let _ = reply.send(c.spawn());
                }
                // Keep the thread (and so the children's parent) alive anyway.
                loop {
                    thread::park();
                }
            })
            .expect("spawn the support-spawner thread");
        Mutex::new(tx)
    });
    die_with_parent(&mut command, sig);
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock().unwrap_or_else(|e| e.into_inner()).send((command, reply_tx)).map_err(|_| io::Error::other("support-spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| io::Error::other("support-spawner thread is gone"))?
}

/// A child that is killed (and reaped) when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub what: String,
}

impl ChildGuard {
    pub fn new(child: Child, what: impl Into<String>) -> ChildGuard {
        ChildGuard { child, what: what.into() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(description)` if the child has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(format!("{} exited with {}", self.what, st)),
            Ok(None) => None,
            Err(e) => Some(format!("{}: {e}", self.what)),
        }
    }

    /// Polls `ready` every `every` until it holds: `Err(Some(why))` if the child
    /// exits first, `Err(None)` if `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration, every: Duration, mut ready: impl FnMut() -> bool) -> Result<(), Option<String>> {
        let mut exited = None;
        let ok = super::wait_for(timeout, every, || {
            if let Some(e) = self.exited() {
                exited = Some(e);
                return Some(false);
            }
            ready().then_some(true)
        });
        match ok {
            Some(true) => Ok(()),
            _ => Err(exited),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: plain kill(2) on our own child's pid (not yet reaped).
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

/// Is a process with this pid alive (and not a zombie)?
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // state is the field after the ")" that closes the command name
            let state = s.rsplit_once(')').map(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some(Some('Z')) | Some(Some('X')))
        }
        Err(_) => false,
    }
}
