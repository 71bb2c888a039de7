//! What the tests that run the real binary share.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Starts the binary with `args` and returns it with the base URL it prints.
pub fn start(args: &[&str]) -> (Child, String) {
    let mut child =
        Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start switchyard");
    let stdout = child.stdout.take().expect("piped");
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("http://"))
        .expect("it prints its address");
    let url = line.split("http://").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("an address");
    (child, format!("http://{url}"))
}
