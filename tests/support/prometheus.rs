//! Debian's Prometheus (`cargo xtask test` installs the `prometheus` package), run by a test on
//! 127.0.0.1 with the deployed alerting rules, and asked through its HTTP API: the real
//! consumer of `leaktrace serve`'s metrics.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{Running, WAIT};

/// The alerting rules the deployment installs beside prometheus.yml.
pub fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/leaktrace-rules.yml")
}

/// What the `leaktrace` job scrapes.
pub enum Scrape {
    /// A `leaktrace serve --metrics ADDR`.
    Address(SocketAddr),
    /// Prometheus's own /metrics: a target that is up as soon as Prometheus is.
    Itself,
}

/// A Prometheus server of this test: its own port and storage, scraping one target every
/// second and evaluating the rules every second. Killed, and its storage removed, when dropped.
pub struct Prometheus {
    server: Running,
    pub address: SocketAddr,
    storage: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus on a free port of 127.0.0.1 and waits until it is ready.
    pub fn start(scrape: Scrape) -> Prometheus {
        let address = free_address();
        let target = match scrape {
            Scrape::Address(target) => target,
            Scrape::Itself => address,
        };
        let storage = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "prometheus-{}-{}",
            std::process::id(),
            address.port()
        ));
        let _ = fs::remove_dir_all(&storage);
        fs::create_dir_all(&storage).unwrap();
        let config = storage.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: leaktrace\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n",
                rules = rules_file().display()
            ),
        )
        .unwrap();
        let server = Running::start(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    storage.join("data").display()
                ))
                .arg(format!("--web.listen-address={address}")),
        );
        let mut prometheus = Prometheus {
            server,
            address,
            storage,
        };
        prometheus.wait_ready();
        prometheus
    }

    /// Waits for /-/ready to answer 200; Prometheus exiting first fails the test with its log.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.server.child.try_wait().unwrap() {
                panic!(
                    "prometheus exited ({status}) before it was ready: {:?}",
                    self.server.stderr.rest()
                );
            }
            if get(self.address, "/-/ready").is_some_and(|(status, _)| status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after {WAIT:?}: {:?}",
                self.server.stderr.received()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `data.result` of an instant query: an array of `{"metric": {…}, "value": [t, "v"]}`.
    pub fn query(&self, promql: &str) -> Value {
        let path = format!("/api/v1/query?query={}", url_encoded(promql));
        let (status, body) = get(self.address, &path)
            .unwrap_or_else(|| panic!("prometheus at {} does not answer", self.address));
        let response: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{promql}: not JSON ({e}): {body}"));
        assert!(
            status == 200 && response["status"] == "success",
            "{promql}: HTTP {status}: {body}"
        );
        response["data"]["result"].clone()
    }

    /// Queries every 200 ms until the result satisfies `wanted`, and returns it; fails the test
    /// with the last result after [`WAIT`].
    pub fn wait_for(&self, promql: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let result = self.query(promql);
            if wanted(&result) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} still {result} after {WAIT:?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
        let _ = fs::remove_dir_all(&self.storage);
    }
}

/// The number of each sample of a query's result (Prometheus sends them as strings).
pub fn sample_values(result: &Value) -> Vec<f64> {
    result
        .as_array()
        .unwrap_or_else(|| panic!("not a vector: {result}"))
        .iter()
        .map(|sample| {
            sample["value"][1]
                .as_str()
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("no value in {sample}"))
        })
        .collect()
}

/// A port of 127.0.0.1 that nothing listens on now.
fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
}

/// An HTTP/1.0 GET: the status and the body, or `None` if nothing answers at `address`.
fn get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// `text` as a URL query value: every byte but the unreserved ones percent-encoded.
fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
