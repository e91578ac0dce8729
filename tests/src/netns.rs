//! A device's own network: a network namespace joined to this one by a
//! veth pair, whose UDP packets the kernel drops at random both ways
//! (nftables in the namespace), made by a test and removed when dropped.
//! Nothing outside the namespace is touched: the rules live in it, and the
//! only interface left in the test's own namespace is its end of the pair,
//! removed with it. Needs root, as the test command has.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A namespace whose UDP traffic loses a share of its packets each way.
#[derive(Debug)]
pub struct LossyNamespace {
    name: String,
    /// This (the test's) namespace's address on the pair.
    pub host: Ipv4Addr,
    /// The namespace's own address on the pair.
    pub inside: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("ip runs (scripts/test.sh installs iproute2)");
    assert!(status.success(), "ip {args:?} failed (the test needs root)");
}

impl LossyNamespace {
    /// Makes the namespace, its veth pair (a /30 of 10.231.0.0/16 of its
    /// own) and its rule dropping `loss_per_mille` of the UDP packets it
    /// sends and of those it receives.
    ///
    /// # Panics
    ///
    /// When any of it cannot be made: the test fails rather than skips.
    pub fn create(loss_per_mille: u32) -> Self {
        static MADE: AtomicU32 = AtomicU32::new(0);
        // Unique among concurrent test processes: the pid, and a count.
        let n = (std::process::id() % 1_000) * 16 + MADE.fetch_add(1, Ordering::Relaxed) % 16;
        let name = format!("eg{n}");
        let [hi, lo] = u16::try_from(n * 4).expect("under 64k").to_be_bytes();
        let host = Ipv4Addr::new(10, 231, hi, lo + 1);
        let inside = Ipv4Addr::new(10, 231, hi, lo + 2);
        let (outer, inner) = (format!("{name}a"), format!("{name}b"));
        ip(&["netns", "add", &name]);
        let namespace = Self { name, host, inside };
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &namespace.name]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        let within = ["-n", namespace.name.as_str()];
        ip(&[
            &within[..],
            &["addr", "add", &format!("{inside}/30"), "dev", &inner],
        ]
        .concat());
        ip(&[&within[..], &["link", "set", &inner, "up"]].concat());
        ip(&[&within[..], &["link", "set", "lo", "up"]].concat());
        let rules = format!(
            "table inet lossy {{
               chain sent {{ type filter hook output priority 0; meta l4proto udp numgen random mod 1000 < {loss_per_mille} counter drop; }}
               chain received {{ type filter hook input priority 0; meta l4proto udp numgen random mod 1000 < {loss_per_mille} counter drop; }}
             }}"
        );
        let mut nft = namespace
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft runs (scripts/test.sh installs nftables)");
        std::io::Write::write_all(&mut nft.stdin.take().expect("piped"), rules.as_bytes())
            .expect("nft reads its rules");
        assert!(
            nft.wait().expect("nft ends").success(),
            "nft refused the rules"
        );
        namespace
    }

    /// `program`, to be run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// How many packets the kernel dropped so far: (sent, received).
    pub fn dropped(&self) -> (u64, u64) {
        let listed = self
            .command("nft")
            .args(["list", "table", "inet", "lossy"])
            .output()
            .expect("nft runs");
        let text = String::from_utf8_lossy(&listed.stdout);
        let packets_in = |chain: &str| -> u64 {
            text.split(&format!("chain {chain} "))
                .nth(1)
                .and_then(|rest| rest.split("counter packets ").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no counter of chain {chain} in {text}"))
        };
        (packets_in("sent"), packets_in("received"))
    }
}

impl Drop for LossyNamespace {
    fn drop(&mut self) {
        // Removing the namespace removes its end of the pair, and so both.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "delete", &format!("{}a", self.name)])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
