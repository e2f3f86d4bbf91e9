//! Builds the web dashboard (controlplane/web, Vite) and embeds its files in the binary: the
//! control plane serves them itself, with no CDN and no separate web server.
//!
//! Needs the dashboard's npm packages (`scripts/setup.sh` runs `npm ci` in controlplane/web).
//! `PICKET_WEB_DIST=DIR` embeds an already built dist instead (packaging, or a machine without
//! Node.js).

use std::{
    env,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    for p in [
        "src",
        "index.html",
        "package.json",
        "package-lock.json",
        "vite.config.js",
    ] {
        println!("cargo:rerun-if-changed={}", web.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=PICKET_WEB_DIST");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let dist = match env::var_os("PICKET_WEB_DIST") {
        Some(d) => PathBuf::from(d),
        None => {
            let dist = out.join("web-dist");
            if !web.join("node_modules/.bin/vite").exists() {
                panic!(
                    "the dashboard's npm packages are missing: run `npm ci` in {} \
                     (scripts/setup.sh does), or set PICKET_WEB_DIST to a built dist",
                    web.display()
                );
            }
            let st = Command::new(web.join("node_modules/.bin/vite"))
                .args(["build", "--logLevel", "warn", "--emptyOutDir", "--outDir"])
                .arg(&dist)
                .current_dir(&web)
                .status()
                .unwrap_or_else(|e| panic!("running vite (is Node.js installed?): {e}"));
            assert!(st.success(), "vite build failed: {st}");
            dist
        }
    };
    let mut files = Vec::new();
    collect(&dist, &dist, &mut files);
    assert!(
        files.iter().any(|(rel, _)| rel == "/index.html"),
        "{} has no index.html",
        dist.display()
    );
    files.sort();
    let mut code = String::from("/// The dashboard's files: (URL path, content, content type).\n");
    code.push_str("pub static ASSETS: &[(&str, &[u8], &str)] = &[\n");
    for (rel, abs) in &files {
        let ctype = match abs.extension().and_then(|e| e.to_str()) {
            Some("html") => "text/html; charset=utf-8",
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            Some("png") => "image/png",
            Some("ico") => "image/x-icon",
            Some("json") => "application/json",
            Some("woff2") => "font/woff2",
            _ => "application/octet-stream",
        };
        writeln!(
            code,
            "    ({rel:?}, include_bytes!({:?}), {ctype:?}),",
            abs.display().to_string()
        )
        .expect("write to a String");
    }
    code.push_str("];\n");
    fs::write(out.join("assets.rs"), code).expect("write assets.rs");
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).expect("under root");
            out.push((format!("/{}", rel.display()), p));
        }
    }
}
