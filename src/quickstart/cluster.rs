//! A throwaway PostgreSQL cluster: found binaries, `initdb` into a
//! directory of its own, started on a loopback port, and on
//! [`Cluster::stop`] (or drop) stopped and removed, leaving nothing.
//!
//! initdb refuses to run as root, so as root every server command runs as
//! the `postgres` user (`runuser`), which owns the directory.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::QuickstartError;

/// Directories distributions install PostgreSQL's server binaries in,
/// searched newest version first.
const DISTRIBUTION_DIRS: &[&str] = &["/usr/lib/postgresql", "/usr/pgsql-", "/usr/local/pgsql"];

/// The server binaries this needs.
const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// What to print when there are none.
pub const INSTALL_HINT: &str = "install PostgreSQL's server binaries (Debian/Ubuntu: `sudo apt-get install postgresql`; Fedora/RHEL: `sudo dnf install postgresql-server`; macOS: `brew install postgresql`), or pass --pg-bin DIR";

/// Where PostgreSQL's server binaries are: `explicit`, else the
/// distributions' directories (newest version first), else a directory of
/// `search_path` (the caller's `PATH`).
pub(super) fn find_binaries(
    explicit: Option<&Path>,
    search_path: Option<&OsStr>,
) -> Result<PathBuf, QuickstartError> {
    if let Some(dir) = explicit {
        return if has_programs(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(QuickstartError::NoPostgres(format!(
                "{} has no {}",
                dir.display(),
                PROGRAMS.join(", ")
            )))
        };
    }
    let mut found: Vec<PathBuf> = distribution_bins();
    found.sort_by_key(|dir| std::cmp::Reverse(version_of(dir)));
    if let Some(path) = search_path {
        found.extend(std::env::split_paths(path));
    }
    found
        .into_iter()
        .find(|dir| has_programs(dir))
        .ok_or_else(|| QuickstartError::NoPostgres("no initdb, pg_ctl and postgres found".into()))
}

fn distribution_bins() -> Vec<PathBuf> {
    let mut bins = Vec::new();
    for root in DISTRIBUTION_DIRS {
        let root = Path::new(root);
        // `/usr/pgsql-16/bin` style: the prefix's siblings.
        let (parent, prefix) = match root.file_name().and_then(OsStr::to_str) {
            Some(name) if name.ends_with('-') => (root.parent(), Some(name)),
            _ => (Some(root), None),
        };
        let Some(Ok(entries)) = parent.map(std::fs::read_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let matches = match prefix {
                Some(prefix) => name.to_string_lossy().starts_with(prefix),
                None => true,
            };
            if matches {
                bins.push(entry.path().join("bin"));
            }
        }
        if prefix.is_none() {
            bins.push(root.join("bin"));
        }
    }
    bins
}

/// The version number in a path like `/usr/lib/postgresql/15/bin`.
fn version_of(dir: &Path) -> u32 {
    dir.components()
        .filter_map(|part| {
            let text = part.as_os_str().to_string_lossy();
            let digits: String = text
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .next_back()
        .unwrap_or(0)
}

fn has_programs(dir: &Path) -> bool {
    PROGRAMS.iter().all(|program| dir.join(program).is_file())
}

/// A running throwaway cluster.
pub(super) struct Cluster {
    bin: PathBuf,
    /// Everything of the cluster: data, socket, log, password file.
    pub(super) dir: PathBuf,
    pub(super) port: u16,
    /// The superuser `postgres`'s password (random).
    pub(super) superuser_password: String,
    as_postgres: bool,
    running: bool,
}

impl Cluster {
    /// Makes a cluster in a new directory under `parent` and starts it on
    /// a free loopback port.
    pub(super) fn start(bin: PathBuf, parent: &Path) -> Result<Cluster, QuickstartError> {
        let as_postgres = rustix::process::geteuid().is_root();
        let superuser_password = random_secret()?;
        let dir = parent.join(format!(
            "poolplane-quickstart-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        // Its owner's alone: it holds the superuser's password (until
        // initdb has read it) and the demo roles' password files.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|err| QuickstartError::io("creating", &dir, err))?;
        let mut cluster = Cluster {
            bin,
            dir,
            port: 0,
            superuser_password,
            as_postgres,
            running: false,
        };
        cluster.init()?;
        cluster.port = free_port()?;
        cluster.pg_ctl_start()?;
        Ok(cluster)
    }

    fn init(&self) -> Result<(), QuickstartError> {
        let pwfile = self.dir.join("superuser-password");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pwfile)
            .and_then(|mut file| file.write_all(self.superuser_password.as_bytes()))
            .map_err(|err| QuickstartError::io("writing", &pwfile, err))?;
        if self.as_postgres {
            let (uid, gid) = postgres_ids()?;
            for path in [&self.dir, &pwfile] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|err| QuickstartError::io("giving postgres", path, err))?;
            }
        }
        let mut initdb = self.command("initdb");
        initdb
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "-N"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let initialized = self.run("initdb", initdb);
        // Read once by initdb; the password lives on only in this process.
        let _ = std::fs::remove_file(&pwfile);
        initialized
    }

    fn pg_ctl_start(&mut self) -> Result<(), QuickstartError> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"]);
        self.run("pg_ctl start", pg_ctl)?;
        self.running = true;
        Ok(())
    }

    /// The server's version (`15.18`), from `postgres --version`.
    pub(super) fn version(&self) -> String {
        Command::new(self.bin.join("postgres"))
            .arg("--version")
            .output()
            .ok()
            .and_then(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "?".into())
    }

    /// Stops the server (fast: sessions end, nothing is kept) and removes
    /// the directory.
    pub(super) fn stop(mut self) -> Result<(), QuickstartError> {
        self.stop_and_remove()
    }

    fn stop_and_remove(&mut self) -> Result<(), QuickstartError> {
        if self.running {
            let mut pg_ctl = self.command("pg_ctl");
            pg_ctl
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "fast", "-w", "-t", "60", "stop"]);
            let stopped = self.run("pg_ctl stop", pg_ctl);
            // A server that stopped by itself (a Ctrl-C in the terminal
            // reaches it too) has no pid file left: nothing to stop.
            if self.dir.join("data/postmaster.pid").exists() {
                stopped?;
            }
            self.running = false;
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .map_err(|err| QuickstartError::io("removing", &self.dir, err))?;
        }
        Ok(())
    }

    /// One of the server's programs, run as the cluster's owner.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        command.stdin(Stdio::null()).stdout(Stdio::null());
        command
    }

    fn run(&self, what: &str, mut command: Command) -> Result<(), QuickstartError> {
        let output = command
            .stderr(Stdio::piped())
            .output()
            .map_err(|err| QuickstartError::Postgres(format!("{what}: {err}")))?;
        if output.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        Err(QuickstartError::Postgres(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            last_lines(&log, 5)
        )))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Whatever went wrong before, leave nothing behind.
        let _ = self.stop_and_remove();
    }
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(count);
    lines[start..]
        .iter()
        .map(|line| format!("\n  {line}"))
        .collect()
}

fn postgres_ids() -> Result<(u32, u32), QuickstartError> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(QuickstartError::Postgres(
            "running as root, and there is no `postgres` user to run the server as (initdb refuses root): run as an ordinary user, or create one (the server packages do)".into(),
        )),
    }
}

pub(super) fn free_port() -> Result<u16, QuickstartError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|err| QuickstartError::Postgres(format!("no free loopback port: {err}")))
}

/// 32 hex digits from the system's random source (a password).
pub(super) fn random_secret() -> Result<String, QuickstartError> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|err| QuickstartError::io("reading", Path::new("/dev/urandom"), err))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_version_is_found_first() {
        let mut dirs = [
            PathBuf::from("/usr/lib/postgresql/9/bin"),
            PathBuf::from("/usr/lib/postgresql/15/bin"),
            PathBuf::from("/usr/pgsql-16/bin"),
        ];
        dirs.sort_by_key(|dir| std::cmp::Reverse(version_of(dir)));
        assert_eq!(dirs[0], PathBuf::from("/usr/pgsql-16/bin"));
        assert_eq!(dirs[2], PathBuf::from("/usr/lib/postgresql/9/bin"));
    }

    #[test]
    fn a_directory_without_the_programs_is_refused_by_name() {
        let err = find_binaries(Some(Path::new("/nonexistent-dir")), None).expect_err("refused");
        assert!(err.to_string().contains("/nonexistent-dir"), "{err}");
        assert!(err.to_string().contains(INSTALL_HINT), "{err}");
    }
}
