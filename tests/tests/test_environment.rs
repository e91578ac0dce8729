//! The test command's promises: a private Redis for the tests, and CI
//! running exactly the README's test command.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use eagate_tests::{redis_addr, redis_url};

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn redis_command(stream: &mut TcpStream, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = [0u8; 512];
    let n = stream.read(&mut reply).unwrap();
    String::from_utf8_lossy(&reply[..n]).into_owned()
}

#[test]
fn the_test_command_provides_a_private_redis_that_answers() {
    let addr = redis_addr(&redis_url());
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(
        addr.port(),
        6379,
        "tests must not use the machine's shared Redis"
    );
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("the private Redis at {addr} does not answer: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(redis_command(&mut stream, &["PING"]), "+PONG\r\n");
    let key = format!("eagate:test:{}", std::process::id());
    assert_eq!(redis_command(&mut stream, &["SET", &key, "ok"]), "+OK\r\n");
    assert_eq!(redis_command(&mut stream, &["GET", &key]), "$2\r\nok\r\n");
    assert_eq!(redis_command(&mut stream, &["DEL", &key]), ":1\r\n");
}

#[test]
fn the_test_command_provides_a_private_redis_cluster_of_three_primaries() {
    let addr = redis_addr(&eagate_tests::redis_cluster_url());
    assert!(addr.ip().is_loopback(), "{addr}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("the private Redis Cluster at {addr} does not answer: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let info = redis_command(&mut stream, &["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_size:3"), "three primaries: {info}");
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let readme = repo_file("README.md");
    assert!(
        readme.contains("\nscripts/test.sh\n"),
        "README shows the test command on a line of its own"
    );
    let ci = repo_file(".ci/run");
    assert!(
        ci.lines().any(|line| line.trim() == "exec scripts/test.sh"),
        ".ci/run calls the README's test command"
    );
}
