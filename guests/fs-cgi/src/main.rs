//! A CGI guest that probes the filesystem and reports what it was allowed to do, as JSON.
//!
//! The host is expected to grant no preopened directories, so every probe should report `error: ...`.
//! The guest only reports; the test decides what is acceptable.

use std::io::Write as _;

use serde_json::json;

fn main() {
    let report = json!({
        "read_dir_root": describe(read_dir("/")),
        "read_dir_cwd": describe(read_dir(".")),
        "read_passwd": describe(read_len("/etc/passwd")),
        "read_hostname": describe(read_len("/etc/hostname")),
        "write_tmp": describe(write_probe("/tmp/shoal-fs-probe")),
        "write_cwd": describe(write_probe("probe.txt")),
    });
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "Content-Type: application/json\n\n{report}").expect("writing the response");
    stdout.flush().expect("flushing the response");
}

fn describe(outcome: std::io::Result<String>) -> String {
    match outcome {
        Ok(detail) => format!("ok: {detail}"),
        Err(error) => format!("error: {error}"),
    }
}

fn read_dir(path: &str) -> std::io::Result<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(names.join(", "))
}

fn read_len(path: &str) -> std::io::Result<String> {
    let contents = std::fs::read_to_string(path)?;
    Ok(format!("{} bytes", contents.len()))
}

fn write_probe(path: &str) -> std::io::Result<String> {
    std::fs::write(path, "written by the fs-cgi guest\n")?;
    Ok(format!("wrote {path}"))
}
