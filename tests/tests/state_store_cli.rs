//! `--state-store` as a user meets it: the control state on a PostgreSQL server reached with a
//! password from a file or the environment, over verified TLS, and every way of getting it
//! wrong refused at the start with a sentence that says what to do, before anything is
//! created on the local disk (never a fallback to the embedded store).

use std::{path::Path, process::Command};

use tests::{
    TempDir, bin, make_pki,
    servers::{Postgres, free_port},
};

/// `picket-controlplane users --data-dir DATA [store...] ARGS` with `env`: (ok, stdout, stderr).
fn users(
    data: &Path,
    store: &[&str],
    env: &[(&str, &str)],
    args: &[&str],
) -> (bool, String, String) {
    let o = Command::new(bin("picket-controlplane"))
        .args(["users", "--data-dir"])
        .arg(data)
        .args(store)
        .args(args)
        .env_remove("PICKET_STATE_STORE")
        .env_remove("PICKET_STATE_STORE_PASSWORD")
        .envs(env.iter().copied())
        .output()
        .expect("run picket-controlplane users");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Refused: fails, says `words` (all of them), does not panic, creates no embedded store.
fn refused(r: (bool, String, String), data: &Path, words: &[&str]) {
    let (ok, _, err) = r;
    assert!(!ok, "accepted: {err}");
    for w in words {
        assert!(err.contains(w), "`{w}` not in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !data.join("picket.db").exists(),
        "an embedded store was made: {err}"
    );
}

#[test]
fn the_state_store_on_postgres_with_a_password_file_or_the_environment() {
    let dir = TempDir::new("state-store-cli");
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE picket");
    let url = pg.url_no_password("picket");
    let pw = dir.0.join("pw");
    std::fs::write(&pw, format!("{}\n", Postgres::PASSWORD)).expect("password file");
    let data = dir.0.join("data");
    let store = [
        "--state-store",
        &url,
        "--state-store-password-file",
        pw.to_str().expect("utf8"),
    ];
    let (ok, out, err) = users(&data, &store, &[], &["add", "alice", "--role", "admin"]);
    assert!(ok, "{err}");
    assert!(!out.trim().is_empty(), "a generated password is printed");
    // The user is in PostgreSQL, not in the embedded store.
    assert_eq!(pg.psql("picket", "SELECT name FROM users"), "alice");
    // The same store through the environment alone.
    let (ok, out, err) = users(
        &dir.0.join("elsewhere"),
        &[],
        &[
            ("PICKET_STATE_STORE", &url),
            ("PICKET_STATE_STORE_PASSWORD", Postgres::PASSWORD),
        ],
        &["list"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("alice") && out.contains("admin"), "{out}");
    // A password in the URL works and is warned about (the process list shows it), and
    // never appears in what is printed.
    let (ok, out, err) = users(&data, &["--state-store", &pg.url("picket")], &[], &["list"]);
    assert!(ok, "{err}");
    assert!(out.contains("alice"), "{out}");
    assert!(err.contains("process list"), "{err}");
    assert!(!err.contains(Postgres::PASSWORD) && !out.contains(Postgres::PASSWORD));
}

#[test]
fn a_state_store_that_cannot_be_used_is_refused_with_what_to_do() {
    let dir = TempDir::new("state-store-refusals");
    let mut pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE picket");
    let url = pg.url_no_password("picket");
    let data = dir.0.join("data");
    let wrong = dir.0.join("wrong");
    std::fs::write(&wrong, "not-the-password\n").expect("file");
    let wrong = wrong.to_str().expect("utf8");
    // Wrong password, from a file and from the environment.
    refused(
        users(
            &data,
            &["--state-store", &url, "--state-store-password-file", wrong],
            &[],
            &["list"],
        ),
        &data,
        &[
            "cannot connect to the state store",
            "password authentication failed",
            "--state-store-password-file",
        ],
    );
    refused(
        users(
            &data,
            &["--state-store", &url],
            &[("PICKET_STATE_STORE_PASSWORD", "nope")],
            &["list"],
        ),
        &data,
        &["password authentication failed"],
    );
    // No password at all.
    refused(
        users(&data, &["--state-store", &url], &[], &["list"]),
        &data,
        &["password", "PICKET_STATE_STORE_PASSWORD"],
    );
    // A database that does not exist.
    refused(
        users(&data, &["--state-store", &pg.url("nosuch")], &[], &["list"]),
        &data,
        &["nosuch", "createdb"],
    );
    // Not a URL.
    refused(
        users(
            &data,
            &["--state-store", "postgres://127.0.0.1:notaport/picket"],
            &[],
            &["list"],
        ),
        &data,
        &["--state-store"],
    );
    // TLS demanded of a server without it.
    refused(
        users(
            &data,
            &[
                "--state-store",
                &format!("{}?sslmode=require", pg.url("picket")),
            ],
            &[],
            &["list"],
        ),
        &data,
        &["TLS"],
    );
    // A schema newer than this binary.
    assert!(users(&data, &["--state-store", &pg.url("picket")], &[], &["list"]).0);
    assert!(
        !data.join("picket.db").exists(),
        "the state commands make no embedded store beside a server"
    );
    pg.psql("picket", "UPDATE picket_schema SET version = version + 100");
    refused(
        users(&data, &["--state-store", &pg.url("picket")], &[], &["list"]),
        &data,
        &["newer"],
    );
    // Nothing listening: `serve` refuses too, with the address and no password.
    pg.stop();
    let port = free_port();
    let o = Command::new(bin("picket-controlplane"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--state-store",
            &format!("postgres://picket:secret@127.0.0.1:{port}/picket"),
        ])
        .env_remove("PICKET_STATE_STORE")
        .output()
        .expect("serve");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "cannot connect to the state store postgres://picket@127.0.0.1:{port}/picket"
        )),
        "{err}"
    );
    assert!(
        !err.contains("secret") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!data.join("picket.db").exists());
}

#[test]
fn the_state_store_over_tls_is_verified() {
    let dir = TempDir::new("state-store-tls");
    make_pki(&dir.0);
    let pg = Postgres::start_tls(&dir.0.join("server.pem"), &dir.0.join("server.key"));
    pg.psql("postgres", "CREATE DATABASE picket");
    let data = dir.0.join("data");
    let url = format!("{}?sslmode=require", pg.url("picket"));
    // A private CA nobody told us of: refused, with the option that fixes it.
    refused(
        users(&data, &["--state-store", &url], &[], &["list"]),
        &data,
        &["certificate", "--state-store-ca"],
    );
    // With it: connected over TLS (the server says so of our own connection).
    let ca = dir.0.join("ca.pem");
    let (ok, _, err) = users(
        &data,
        &[
            "--state-store",
            &url,
            "--state-store-ca",
            ca.to_str().expect("utf8"),
        ],
        &[],
        &["add", "bob"],
    );
    assert!(ok, "{err}");
    assert_eq!(pg.psql("picket", "SELECT name FROM users"), "bob");
    // A CA file that holds no certificate is refused as such.
    let empty = dir.0.join("empty.pem");
    std::fs::write(&empty, "").expect("file");
    refused(
        users(
            &dir.0.join("data2"),
            &[
                "--state-store",
                &url,
                "--state-store-ca",
                empty.to_str().expect("utf8"),
            ],
            &[],
            &["list"],
        ),
        &dir.0.join("data2"),
        &["holds no certificate"],
    );
}
