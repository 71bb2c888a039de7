//! What the tests that run the real binary share.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Starts the binary with `args` and returns it with the base URL it prints.
pub fn start(args: &[&str]) -> (Child, String) {
    start_logged(args, None)
}

/// As [`start`], the server's log (stderr) written to `log` if given: for
/// a test that shows what the server said when it fails.
pub fn start_logged(args: &[&str], log: Option<&std::path::Path>) -> (Child, String) {
    let stderr = log.map_or_else(Stdio::null, |p| std::fs::File::create(p).expect("create the server's log").into());
    let mut child =
        Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(stderr).spawn().expect("start switchyard");
    let stdout = child.stdout.take().expect("piped");
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("http://"))
        .expect("it prints its address");
    let url = line.split("http://").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("an address");
    (child, format!("http://{url}"))
}
