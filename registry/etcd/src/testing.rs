//! A real etcd cluster for tests: members started from Debian's `etcd` binary on free loopback
//! ports, each with a temporary data directory, and stopped by PID.
//!
//! Every member is started with `--pre-vote` (etcd 3.4 lacks it by default: a member cut off
//! and healed would force a new election). Members are killed with the test process even if it
//! aborts: each is spawned with `PR_SET_PDEATHSIG`, from a thread that lives as long as the
//! process, so a shared cluster ([`EtcdCluster::shared`]) never outlives its tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a cluster may take to elect a leader.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// One member's addresses and process.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    process: Option<Child>,
}

/// A local etcd cluster, stopped when dropped.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until they have a leader.
    ///
    /// # Panics
    /// If `etcd` is not installed or the cluster does not come up: a test cannot go on.
    pub fn start(size: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("creating a directory for etcd");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("m{i}")),
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "shoal-test-{}-{}",
            std::process::id(),
            dir.path().display().to_string().len()
        );
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            token,
            _dir: dir,
        };
        for i in 0..size {
            cluster.start_member(i);
        }
        cluster.wait_ready();
        cluster
    }

    /// A three-member cluster shared by every test of this process, started by the first,
    /// stopped and deleted when the process exits.
    pub fn shared() -> &'static EtcdCluster {
        SHARED.get_or_init(|| {
            let cluster = EtcdCluster::start(3);
            at_exit_stop_shared();
            cluster
        })
    }

    /// Every member's client address, `127.0.0.1:port`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Kills member `i` with SIGKILL and waits for it to go.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.members[i].process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts member `i` again on its data directory, after [`EtcdCluster::kill`].
    pub fn restart(&mut self, i: usize) {
        self.start_member(i);
    }

    /// The member that leads the cluster now, if one does.
    pub fn leader(&self) -> Option<usize> {
        self.endpoints().iter().position(|endpoint| {
            let Some(status) = http(endpoint, "POST", "/v3/maintenance/status", "{}") else {
                return false;
            };
            let body = status.split("\r\n\r\n").nth(1).unwrap_or_default();
            let Ok(status) = serde_json::from_str::<serde_json::Value>(body) else {
                return false;
            };
            status["leader"].as_str().is_some() && status["leader"] == status["header"]["member_id"]
        })
    }

    /// The PID of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].process.as_ref().map(Child::id)
    }

    fn start_member(&mut self, i: usize) {
        let member = &self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let log = std::fs::File::create(self._dir.path().join(format!("{}.log", member.name)))
            .expect("creating an etcd log");
        let mut command = Command::new("etcd");
        command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .arg("--pre-vote")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let process = spawn_tied_to_process(command);
        self.members[i].process = Some(process);
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        while !self.endpoints().iter().all(|endpoint| healthy(endpoint)) {
            assert!(
                started.elapsed() < READY_WITHIN,
                "etcd members on {:?} had no leader within {READY_WITHIN:?}",
                self.endpoints()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether the member at `endpoint` answers its `/health` (which needs a leader) with true.
fn healthy(endpoint: &str) -> bool {
    http(endpoint, "GET", "/health", "")
        .is_some_and(|response| response.contains(r#""health":"true""#))
}

/// One HTTP/1.1 request to etcd's JSON gateway, and the whole response.
fn http(endpoint: &str, method: &str, path: &str, body: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(endpoint).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// The cluster [`EtcdCluster::shared`] returns.
static SHARED: OnceLock<EtcdCluster> = OnceLock::new();

/// Has the shared cluster stopped, and its directory deleted, when the process exits (a
/// static is never dropped; a test binary returns from `main` or calls `exit`, and either runs
/// `atexit` handlers).
#[allow(unsafe_code)]
fn at_exit_stop_shared() {
    extern "C" fn stop_shared() {
        let Some(cluster) = SHARED.get() else { return };
        for member in &cluster.members {
            if let Some(process) = &member.process {
                let pid = libc::pid_t::try_from(process.id()).unwrap_or(0);
                // SAFETY: kill and waitpid on a child of this process, by its PID.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
        }
        let _ = std::fs::remove_dir_all(cluster._dir.path());
    }
    // SAFETY: registers a function that takes no arguments and does not unwind.
    unsafe {
        libc::atexit(stop_shared);
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding a loopback port")
        .port()
}

/// Spawns `command` from a thread that lives as long as the process, with SIGKILL as its
/// parent-death signal: the kernel sends it when the spawning thread exits, that is when the
/// process does.
fn spawn_tied_to_process(mut command: Command) -> Child {
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<Spawn>>> = OnceLock::new();
    type Spawn = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    let spawner = SPAWNER.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel::<Spawn>();
        std::thread::Builder::new()
            .name("etcd-spawner".into())
            .spawn(move || {
                for (mut command, reply) in receiver {
                    let _ = reply.send(command.spawn());
                }
                // The channel is in a static: the loop ends only with the process.
            })
            .expect("spawning the etcd spawner thread");
        Mutex::new(sender)
    });
    set_parent_death_signal(&mut command);
    let (reply, result) = std::sync::mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, reply))
        .expect("the spawner thread lives as long as the process");
    result
        .recv()
        .expect("the spawner answers")
        .expect("starting etcd (is Debian's etcd-server installed?)")
}

#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe, and the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
