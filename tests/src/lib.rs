//! Helpers for eagate's end-to-end tests, which run against real processes
//! and real services started by the test command (`scripts/test.sh`).

use std::net::SocketAddr;

/// The environment variable through which the test command hands the URL of
/// its private Redis to the tests.
pub const REDIS_URL_VAR: &str = "EAGATE_TEST_REDIS_URL";

/// The URL of the private Redis that `scripts/test.sh` started.
///
/// # Panics
///
/// When the variable is unset: a test that needs Redis fails rather than
/// skipping, so a missing service can never pass for a green run.
pub fn redis_url() -> String {
    std::env::var(REDIS_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{REDIS_URL_VAR} is not set: this test needs the private Redis that \
             scripts/test.sh starts; run the suite with scripts/test.sh"
        )
    })
}

/// The environment variable through which the test command hands the URL of
/// one node of its private Redis Cluster (three primaries) to the tests.
pub const REDIS_CLUSTER_URL_VAR: &str = "EAGATE_TEST_REDIS_CLUSTER_URL";

/// The URL of a node of the private Redis Cluster that `scripts/test.sh`
/// started (`scripts/redis-cluster.sh`).
///
/// # Panics
///
/// When the variable is unset: the test fails rather than skips.
pub fn redis_cluster_url() -> String {
    std::env::var(REDIS_CLUSTER_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{REDIS_CLUSTER_URL_VAR} is not set: this test needs the private Redis \
             Cluster that scripts/test.sh starts; run the suite with scripts/test.sh"
        )
    })
}

/// The `host:port` of a `redis://host:port/…` URL.
///
/// # Panics
///
/// When the URL is not of that form.
pub fn redis_addr(url: &str) -> SocketAddr {
    let rest = url
        .strip_prefix("redis://")
        .unwrap_or_else(|| panic!("not a redis:// URL: {url}"));
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .parse()
        .unwrap_or_else(|e| panic!("redis URL {url} has no host:port ({e})"))
}

pub mod browser;
pub mod lossy;
pub mod netns;
pub mod process;

/// A Redis Cluster of three primaries of one test's own
/// (`scripts/redis-cluster.sh`), stopped when dropped: for tests that reach
/// into every node (flushing scripts, say).
#[derive(Debug)]
pub struct PrivateRedisCluster {
    dir: tempfile::TempDir,
    /// The URL of one of its nodes.
    pub url: String,
}

impl PrivateRedisCluster {
    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-cluster.sh")
    }

    /// Starts it and waits until every slot is served.
    ///
    /// # Panics
    ///
    /// When it cannot be started: the test fails rather than skips.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let output = std::process::Command::new(Self::script())
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("scripts/redis-cluster.sh runs");
        assert!(
            output.status.success(),
            "starting a Redis Cluster failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let url = String::from_utf8(output.stdout)
            .expect("a URL")
            .trim()
            .to_owned();
        Self { dir, url }
    }

    /// The `host:port` of every node.
    pub fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("the cluster's directory")
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                let port = name.strip_prefix("node-")?.strip_suffix(".pid")?.to_owned();
                Some(format!("127.0.0.1:{port}"))
            })
            .collect();
        nodes.sort();
        nodes
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// A tmpfs of a given size mounted over a directory, for tests of a full
/// disk; unmounted when dropped. Mounting needs root, as the test command
/// has.
#[derive(Debug)]
pub struct SmallDisk<'a> {
    at: &'a std::path::Path,
}

impl<'a> SmallDisk<'a> {
    /// Mounts a tmpfs of `size` (`3m`, say) at `at`.
    ///
    /// # Panics
    ///
    /// When it cannot be mounted (not root): the test fails, not skips.
    pub fn mount(at: &'a std::path::Path, size: &str) -> Self {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount runs");
        assert!(
            mounted.success(),
            "mounting a tmpfs failed: this test needs root (the test command runs as root)"
        );
        Self { at }
    }

    /// Gives the disk `size` in all: space returns.
    ///
    /// # Panics
    ///
    /// When the remount fails.
    pub fn grow(&self, size: &str) {
        let grown = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.at)
            .status()
            .expect("mount runs");
        assert!(
            grown.success(),
            "growing the tmpfs at {}",
            self.at.display()
        );
    }
}

impl Drop for SmallDisk<'_> {
    fn drop(&mut self) {
        // A store's background threads may hold a file for a moment after
        // it shut down; a mount is never left behind (lazily, at the last).
        for _ in 0..50 {
            let unmounted = std::process::Command::new("umount")
                .arg(self.at)
                .stderr(std::process::Stdio::null())
                .status();
            if unmounted.is_ok_and(|status| status.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.at)
            .status();
    }
}

/// A Redis of one test's own, on a free loopback port, stopped (killed)
/// when dropped: for tests that take Redis away under a gateway.
#[derive(Debug)]
pub struct PrivateRedis {
    child: Option<std::process::Child>,
    /// Its URL.
    pub url: String,
    port: u16,
    durable: bool,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    /// Starts `redis-server` (installed by the test command), keeping
    /// nothing on disk, and waits until it answers.
    ///
    /// # Panics
    ///
    /// When it cannot be started: the test fails rather than skips.
    pub fn start() -> Self {
        Self::start_keeping(false)
    }

    /// [`PrivateRedis::start`], with every write in its append-only file
    /// before it is answered (`appendfsync always`, as a deployment that
    /// must lose no acknowledged report runs it): a kill and
    /// [`PrivateRedis::restart`] keep everything it acknowledged.
    pub fn start_durable() -> Self {
        Self::start_keeping(true)
    }

    fn start_keeping(durable: bool) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self {
            child: None,
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            durable,
            dir,
        };
        redis.restart();
        redis
    }

    /// Starts it again on its port and data (after [`PrivateRedis::stop`]),
    /// and waits until it listens.
    ///
    /// # Panics
    ///
    /// When it is running, or does not listen within 10 s.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        let keeping: &[&str] = if self.durable {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(keeping)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen on port {}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Freezes it (SIGSTOP): connections stay open and nothing answers,
    /// as with a Redis stalled on its disk or a network that drops
    /// everything silently.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen Redis go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let child = self.child.as_ref().expect("it runs");
        let sent = std::process::Command::new("kill")
            .args([which, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill {which} failed");
    }

    /// Kills it now (SIGKILL: no goodbye to its clients, nothing saved but
    /// what its append-only file already holds).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A frozen one dies all the same.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
