//! The loader's connection logs in with SCRAM-SHA-256 (the default password method of current
//! Postgres), against a Postgres cluster this test starts on loopback with `initdb
//! --auth=scram-sha-256`, and a wrong password is refused with the server's SQLSTATE. Ignored by
//! default: it needs the Postgres server binaries and runs them as the `postgres` user
//! (`cargo nextest run --run-ignored all`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sluice_warehouse::pgclient::{PgClientError, PgConnection, PgTarget};

/// A Postgres cluster of this test's own, stopped on drop.
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    fn start(user: &str, password: &str) -> anyhow::Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")?
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .ok_or_else(|| {
                anyhow::anyhow!("no Postgres server binaries under /usr/lib/postgresql")
            })?;
        let dir = tempfile::tempdir()?;
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, password)?;
        chown_postgres(dir.path())?;
        chown_postgres(&pwfile)?;
        let data = dir.path().join("data");
        run_as_postgres(
            Command::new(bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", user, "--auth=scram-sha-256", "-E", "UTF8"])
                .arg(format!("--pwfile={}", pwfile.display())),
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.path().display()
        );
        run_as_postgres(
            Command::new(bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(dir.path().join("log"))
                .args(["-w", "-t", "60", "start"]),
        )?;
        Ok(Self { dir, bin, port })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run_as_postgres(
            Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "stop"]),
        );
    }
}

fn chown_postgres(path: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown").arg("postgres").arg(path).status()?;
    anyhow::ensure!(status.success(), "chown postgres {}", path.display());
    Ok(())
}

fn run_as_postgres(cmd: &mut Command) -> anyhow::Result<()> {
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(&program)
        .args(&args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed: {}{}",
        program.to_string_lossy(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
#[ignore = "starts a Postgres cluster of its own (server binaries, runuser)"]
async fn logs_in_with_scram_and_refuses_a_wrong_password() -> anyhow::Result<()> {
    let cluster = Cluster::start("loader", "s3cret-scram-pass")?;
    let target = |password: &str| PgTarget {
        host: "127.0.0.1".into(),
        port: cluster.port,
        user: "loader".into(),
        password: Some(password.into()),
        database: "postgres".into(),
        sslmode: sluice_warehouse::pgtls::SslMode::Disable,
        sslrootcert: None,
    };
    let timeout = Duration::from_secs(30);
    let mut conn = PgConnection::connect(&target("s3cret-scram-pass"), timeout).await?;
    let rows = conn
        .query("SELECT current_user, (SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' LIMIT 1)")
        .await?;
    assert_eq!(
        rows,
        vec![vec![Some("loader".into()), Some("scram-sha-256".into())]]
    );
    conn.execute("CREATE TABLE t (x text); INSERT INTO t VALUES ('it''s')")
        .await?;
    assert_eq!(
        conn.query("SELECT x FROM t").await?,
        vec![vec![Some("it's".into())]]
    );
    // A statement error leaves the connection usable.
    let err = conn.execute("SELECT nope").await.unwrap_err();
    assert!(
        matches!(&err, PgClientError::Server { code, .. } if code == "42703"),
        "{err}"
    );
    assert_eq!(conn.query("SELECT 1").await?, vec![vec![Some("1".into())]]);

    let Err(err) = PgConnection::connect(&target("wrong"), timeout).await else {
        panic!("a wrong password logged in");
    };
    assert!(
        matches!(&err, PgClientError::Server { code, .. } if code == "28P01"),
        "{err}"
    );
    Ok(())
}
