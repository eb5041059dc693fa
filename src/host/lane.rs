//! One kept shell per host for capstan's own short commands. Each command is
//! written to the shell's input as one line and its answer read back framed
//! (exit code, then its stdout and stderr by length), in order. A command then
//! costs one round trip instead of the three of a channel of its own (open,
//! exec, exit), and commands sent together share that round trip.
//!
//! Every value still reaches a command as a quoted argument (`shlex`), and a
//! command's input as a `printf` format of octal escapes: any bytes, no tool
//! beyond the shell. What may take long, or must not wait behind another
//! command (hooks, the user's drain commands, the lease's renewal, the link's liveness check),
//! runs on a channel of its own (`Shell::run_apart`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex as StdMutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::host::CmdOutput;

/// Why a command got no answer from the lane: the shell ended, or never started.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the kept shell ended: {0}")]
pub struct LaneError(pub String);

type Answer = oneshot::Sender<Result<CmdOutput, LaneError>>;

#[derive(Default)]
struct Waiting {
    /// In the order the commands were written: the shell answers in that order.
    queue: VecDeque<Answer>,
    dead: Option<LaneError>,
}

impl Waiting {
    fn end(&mut self, why: LaneError) {
        for a in self.queue.drain(..) {
            let _ = a.send(Err(why.clone()));
        }
        self.dead.get_or_insert(why);
    }
}

/// A line for the shell, and where its answer goes (none for the setup line).
type Line = (Vec<u8>, Option<Answer>);

pub struct Lane {
    to_writer: mpsc::UnboundedSender<Line>,
    waiting: Arc<StdMutex<Waiting>>,
    reader: JoinHandle<()>,
}

/// First line the shell reads: a private directory for each command's output
/// (removed when the shell ends, also by a hang-up).
const SETUP: &str = concat!(
    r#"T="${TMPDIR:-/tmp}/capstan-lane.$$"; rm -rf "$T"; mkdir -m 700 "$T" || exit 1; "#,
    r#"trap 'rm -rf "$T"' EXIT; trap 'exit 1' HUP TERM INT"#,
    "\n"
);

impl Lane {
    /// Drives a shell through its input and output; `keep` (the remote child) lives as
    /// long as the shell is read.
    pub fn start<W, R, K>(input: W, output: R, keep: K) -> Lane
    where
        W: AsyncWrite + Send + Unpin + 'static,
        R: AsyncRead + Send + Unpin + 'static,
        K: Send + 'static,
    {
        let marker = format!("capstan-frame-{:016x}", rand::random::<u64>());
        let waiting = Arc::new(StdMutex::new(Waiting::default()));
        let (to_writer, from_callers) = mpsc::unbounded_channel();
        tokio::spawn(write_commands(input, from_callers, waiting.clone()));
        let reader = tokio::spawn(read_answers(output, marker.clone(), waiting.clone(), keep));
        let lane = Lane { to_writer, waiting, reader };
        // The marker goes with every command; the setup line, which has no answer, before them all.
        let _ = lane.to_writer.send((format!("M={marker}; {SETUP}").into_bytes(), None));
        lane
    }

    /// False once the shell ended: a command then needs a channel of its own.
    pub fn alive(&self) -> bool {
        self.waiting.lock().map(|w| w.dead.is_none()).unwrap_or(false)
    }

    /// Runs `argv` (each element quoted) with `stdin` as its input, to its end.
    pub async fn run(&self, argv: &[&str], stdin: Option<&[u8]>) -> Result<CmdOutput, LaneError> {
        let line = command_line(argv, stdin)?;
        let (tx, rx) = oneshot::channel();
        self.to_writer.send((line, Some(tx))).map_err(|_| LaneError("it is closed".into()))?;
        rx.await.map_err(|_| LaneError("no answer".into()))?
    }

    /// Ends the shell (its input closes) and waits a moment for it to go.
    pub async fn close(self) {
        drop(self.to_writer);
        let mut reader = self.reader;
        if tokio::time::timeout(std::time::Duration::from_secs(1), &mut reader).await.is_err() {
            reader.abort();
            let _ = reader.await;
        }
    }
}

/// One line for the shell: the command in a subshell, its output kept aside, then
/// a frame header (`$M code stdout-bytes stderr-bytes`) and both outputs.
fn command_line(argv: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, LaneError> {
    let cmd = shlex::try_join(argv.iter().copied()).map_err(|e| LaneError(format!("the command cannot be quoted: {e}")))?;
    let cmd = match stdin {
        Some(data) => format!("printf '{}' | {cmd}", printf_format(data)),
        None => cmd,
    };
    Ok(format!(
        concat!(
            r#"( {} ) </dev/null >"$T/o" 2>"$T/e"; r=$?; "#,
            r#"printf '%s %s %s %s\n' "$M" "$r" "$(wc -c <"$T/o")" "$(wc -c <"$T/e")"; cat "$T/o" "$T/e""#,
            "\n"
        ),
        cmd
    )
    .into_bytes())
}

/// `data` as a `printf` format that prints it back byte for byte: printable ASCII as
/// itself, everything else (and `\`, `%`, `'`, `-`) as a three-digit octal escape.
fn printf_format(data: &[u8]) -> String {
    let mut f = String::with_capacity(data.len() * 2);
    for &b in data {
        match b {
            0x20..=0x7e if !matches!(b, b'\\' | b'%' | b'\'' | b'-') => f.push(b as char),
            _ => f.push_str(&format!("\\{b:03o}")),
        }
    }
    f
}

async fn write_commands<W: AsyncWrite + Unpin>(mut input: W, mut from: mpsc::UnboundedReceiver<Line>, waiting: Arc<StdMutex<Waiting>>) {
    while let Some((line, answer)) = from.recv().await {
        {
            let Ok(mut w) = waiting.lock() else { return };
            match (answer, &w.dead) {
                (Some(a), Some(why)) => {
                    let _ = a.send(Err(why.clone()));
                    continue;
                }
                (Some(a), None) => w.queue.push_back(a),
                (None, _) => {}
            }
        }
        if let Err(e) = async {
            input.write_all(&line).await?;
            input.flush().await
        }
        .await
        {
            if let Ok(mut w) = waiting.lock() {
                w.end(LaneError(format!("writing to it: {e}")));
            }
            return;
        }
    }
    // Every sender is gone: the input closes and the shell ends.
    let _ = input.shutdown().await;
}

async fn read_answers<R: AsyncRead + Unpin, K>(output: R, marker: String, waiting: Arc<StdMutex<Waiting>>, keep: K) {
    let mut r = BufReader::new(output);
    let mut header = Vec::new();
    let why = loop {
        header.clear();
        match r.read_until(b'\n', &mut header).await {
            Ok(0) => break "it ended".to_string(),
            Err(e) => break format!("reading from it: {e}"),
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&header);
        let mut words = text.split_whitespace();
        if words.next() != Some(marker.as_str()) {
            // Nothing else writes to the shell's output; a stray line is skipped.
            tracing::debug!("kept shell: a line outside any frame: {}", text.trim_end());
            continue;
        }
        let nums: Vec<i64> = words.filter_map(|w| w.parse().ok()).collect();
        let [status, out_len, err_len] = nums[..] else { break format!("a frame header it did not fill in: {}", text.trim_end()) };
        let mut body = vec![0u8; (out_len.max(0) + err_len.max(0)) as usize];
        if let Err(e) = r.read_exact(&mut body).await {
            break format!("reading from it: {e}");
        }
        let stderr = body.split_off(out_len.max(0) as usize);
        let out =
            CmdOutput { status: status as i32, stdout: String::from_utf8_lossy(&body).into_owned(), stderr: String::from_utf8_lossy(&stderr).into_owned() };
        let next = waiting.lock().ok().and_then(|mut w| w.queue.pop_front());
        if let Some(answer) = next {
            // The caller may have stopped waiting; the answer then goes nowhere.
            let _ = answer.send(Ok(out));
        }
    };
    if let Ok(mut w) = waiting.lock() {
        w.end(LaneError(why));
    }
    drop(keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lane over a local `sh`: the same shell language a host runs. Its pid, to end it.
    fn local() -> (Lane, u32) {
        let mut child = tokio::process::Command::new("sh")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let (input, output) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        (Lane::start(input, output, child), pid)
    }

    #[tokio::test]
    async fn a_command_gives_its_exit_code_stdout_and_stderr() {
        let (lane, _) = local();
        let out = lane.run(&["sh", "-c", "echo out; echo err >&2; exit 3", "capstan-test"], None).await.unwrap();
        assert_eq!(out, CmdOutput { status: 3, stdout: "out\n".into(), stderr: "err\n".into() });
        lane.close().await;
    }

    #[tokio::test]
    async fn arguments_and_input_arrive_byte_for_byte() {
        let (lane, _) = local();
        let arg = "it's $HOME; `x` \"y\" -n %s \\";
        let out = lane.run(&["printf", "%s", arg], None).await.unwrap();
        assert_eq!(out.stdout, arg);
        let data: Vec<u8> = (0..=255u8).chain(b"-x%d\\'\n".iter().copied()).collect();
        let out = lane.run(&["od", "-An", "-v", "-tu1"], Some(&data)).await.unwrap();
        let got: Vec<u8> = out.stdout.split_whitespace().map(|n| n.parse().unwrap()).collect();
        assert_eq!(got, data);
        lane.close().await;
    }

    #[tokio::test]
    async fn commands_sent_together_are_answered_each_its_own() {
        let (lane, _) = local();
        let lane = Arc::new(lane);
        let runs = (0..20).map(|i| {
            let lane = lane.clone();
            async move { (i, lane.run(&["sh", "-c", "sleep 0.0$1; echo $1", "capstan-test", &i.to_string()], None).await.unwrap()) }
        });
        for (i, out) in futures_util::future::join_all(runs).await {
            assert_eq!(out.stdout.trim(), i.to_string());
        }
    }

    #[tokio::test]
    async fn a_large_output_without_a_last_newline_comes_back_whole() {
        let (lane, _) = local();
        let out = lane.run(&["sh", "-c", "i=0; while [ $i -lt 20000 ]; do echo line $i; i=$((i+1)); done; printf end", "capstan-test"], None).await.unwrap();
        assert_eq!(out.stdout.lines().count(), 20001);
        assert!(out.stdout.ends_with("line 19999\nend"));
        assert_eq!(lane.run(&["echo", "next"], None).await.unwrap().stdout, "next\n");
    }

    #[tokio::test]
    async fn a_shell_that_ends_fails_what_waits_and_what_comes_after() {
        let (lane, pid) = local();
        assert!(lane.run(&["true"], None).await.unwrap().ok());
        let waits = lane.run(&["sleep", "5"], None);
        let kill = async {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        };
        let (gone, _) = tokio::join!(waits, kill);
        assert!(gone.is_err(), "{gone:?}");
        assert!(!lane.alive());
        assert!(lane.run(&["true"], None).await.is_err());
    }
}
