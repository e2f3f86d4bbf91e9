//! deploy/: the Debian packages' contents, the systemd unit's promises (checked by running the
//! sensor with exactly its capabilities, as an unprivileged user), and the Kubernetes manifests'
//! invariants (no cluster here: the manifests are read and cross-checked).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use tests::{Lab, TempDir, sh, sh_in};
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unit(name: &str) -> String {
    std::fs::read_to_string(root().join("deploy/systemd").join(name)).expect("unit file")
}

/// Values of `Key=` lines of a unit file.
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

fn unit_caps(text: &str) -> BTreeSet<String> {
    unit_values(text, "AmbientCapabilities")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

#[test]
fn debian_packages_hold_the_binaries_units_and_config() {
    let dir = TempDir::new("deb");
    let bins = tests::bin("picket-sensor")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let o = Command::new("bash")
        .arg(root().join("deploy/debian/build-deb.sh"))
        .arg(&bins)
        .arg(&dir.0)
        .arg("0.1.0")
        .env("DEB_COMPRESSION", "none")
        .output()
        .expect("build-deb.sh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let arch = sh("dpkg", &["--print-architecture"]).trim().to_string();
    for (pkg, files) in [
        (
            "picket-sensor",
            vec![
                "./usr/bin/picket-sensor",
                "./lib/systemd/system/picket-sensor.service",
                "./etc/picket/sensor.toml",
            ],
        ),
        (
            "picket-controlplane",
            vec![
                "./usr/bin/picket-controlplane",
                "./lib/systemd/system/picket-controlplane.service",
                "./lib/systemd/system/picket-controlplane-replica.service",
                "./etc/picket/replica.env",
            ],
        ),
    ] {
        let deb = dir.0.join(format!("{pkg}_0.1.0_{arch}.deb"));
        let deb = deb.to_str().expect("utf8");
        let list = sh("dpkg-deb", &["-c", deb]);
        for f in files {
            assert!(list.contains(f), "{pkg} lacks {f}:\n{list}");
        }
        assert!(
            list.lines().all(|l| l.contains("root/root")),
            "files owned by root:\n{list}"
        );
        assert_eq!(sh("dpkg-deb", &["-f", deb, "Package"]).trim(), pkg);
        assert_eq!(sh("dpkg-deb", &["-f", deb, "Version"]).trim(), "0.1.0");
        let depends = sh("dpkg-deb", &["-f", deb, "Depends"]);
        assert!(depends.contains("adduser"), "{depends}");
        let x = dir.0.join(format!("{pkg}-ctrl"));
        sh("dpkg-deb", &["-e", deb, x.to_str().expect("utf8")]);
        let postinst = std::fs::read_to_string(x.join("postinst")).expect("postinst");
        assert!(postinst.contains("adduser --system"), "{postinst}");
        // The packaged unit is the one in deploy/.
        let y = dir.0.join(format!("{pkg}-root"));
        sh("dpkg-deb", &["-x", deb, y.to_str().expect("utf8")]);
        assert_eq!(
            std::fs::read_to_string(y.join(format!("lib/systemd/system/{pkg}.service")))
                .expect("packaged unit"),
            unit(&format!("{pkg}.service"))
        );
        // The packaged binary runs.
        let v = sh(
            y.join(format!("usr/bin/{pkg}")).to_str().expect("utf8"),
            &["--version"],
        );
        assert!(v.starts_with(pkg), "{v}");
        if pkg == "picket-controlplane" {
            let conffiles = std::fs::read_to_string(x.join("conffiles")).expect("conffiles");
            assert_eq!(conffiles.trim(), "/etc/picket/replica.env");
            // It holds passwords: root's alone.
            let env = list
                .lines()
                .find(|l| l.ends_with("./etc/picket/replica.env"))
                .expect("replica.env");
            assert!(env.starts_with("-rw------- root/root"), "{env}");
            assert_eq!(
                std::fs::read_to_string(
                    y.join("lib/systemd/system/picket-controlplane-replica.service")
                )
                .expect("packaged replica unit"),
                unit("picket-controlplane-replica.service")
            );
        }
        if pkg == "picket-sensor" {
            let conffiles = std::fs::read_to_string(x.join("conffiles")).expect("conffiles");
            assert_eq!(conffiles.trim(), "/etc/picket/sensor.toml");
            // The shipped config is valid for the sensor's own parser.
            let cfg = std::fs::read_to_string(y.join("etc/picket/sensor.toml")).expect("cfg");
            let parsed: sensor_user::config::FileConfig = toml::from_str(&cfg).expect("config");
            assert!(parsed.controlplane.is_some());
        }
    }
}

#[test]
fn the_sensor_unit_runs_unprivileged_with_exactly_its_capabilities() {
    let text = unit("picket-sensor.service");
    assert_eq!(unit_values(&text, "User"), vec!["picket"]);
    assert_eq!(unit_values(&text, "NoNewPrivileges"), vec!["yes"]);
    assert_eq!(
        unit_values(&text, "StateDirectory"),
        vec!["picket-sensor"],
        "the spool's /var/lib/picket-sensor"
    );
    let caps = unit_caps(&text);
    let bounding: BTreeSet<String> = unit_values(&text, "CapabilityBoundingSet")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect();
    assert_eq!(caps, bounding, "nothing beyond what it needs");
    assert!(!caps.contains("CAP_SYS_ADMIN"), "{caps:?}");
    for needed in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"] {
        assert!(caps.contains(needed), "{needed} missing from {caps:?}");
    }
    // Run the real sensor as nobody with the unit's capabilities (CAP_SYS_RESOURCE only matters
    // before Linux 5.11 and may be outside this machine's bounding set).
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("CapBnd");
    let number = |c: &str| match c {
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("unexpected capability {other}"),
    };
    let usable: Vec<String> = caps
        .iter()
        .filter(|c| bnd & (1 << number(c)) != 0)
        .map(|c| c.to_lowercase())
        .collect();
    let lab = Lab::new();
    let list = usable.join(",");
    let script = format!(
        "exec {} --iface {} --stdout --duration 3 --metrics-listen off --export-interval 1",
        tests::bin("picket-sensor").display(),
        lab.vb
    );
    let dir = TempDir::new("caps");
    let err_path = dir.0.join("stderr");
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.b, "capsh"])
        .arg(format!(
            "--caps={list},cap_setuid,cap_setgid,cap_setpcap+eip"
        ))
        .args(["--keep=1", "--user=nobody"])
        .arg(format!("--addamb={list}"))
        .args(["--", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("capsh");
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&err_path)
        .unwrap_or_default()
        .contains("sensor running")
    {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "the unprivileged sensor did not start: {}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    sh_in(
        &lab.a,
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "2", &lab.ip_b],
    );
    let o = child.wait_with_output().expect("sensor output");
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("attached"), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    let echo = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "flow" && v["protocol"] == 1 && v["src_ip"] == lab.ip_a.as_str())
        .map(|v| v["packets"].as_u64().expect("packets"))
        .sum::<u64>();
    assert_eq!(
        echo, 3,
        "pings counted by the unprivileged sensor:\n{out}\n{err}"
    );
}

fn docs() -> Vec<Yaml> {
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/picket-sensor.yaml"))
        .expect("manifest");
    YamlLoader::load_from_str(&text).expect("valid YAML")
}

fn find<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

fn strs(y: &Yaml) -> BTreeSet<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_daemonset_runs_everywhere_with_host_network_bpffs_and_least_privilege() {
    let d = docs();
    let ds = find(&d, "DaemonSet");
    assert_eq!(ds.len(), 1);
    let pod = &ds[0]["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    // Control-plane nodes carry NoSchedule taints: an `operator: Exists` toleration without a key
    // tolerates every taint, so the sensor lands on them as on workers.
    let tolerates_all = pod["tolerations"]
        .as_vec()
        .expect("tolerations")
        .iter()
        .any(|t| t["operator"].as_str() == Some("Exists") && t["key"].is_badvalue());
    assert!(tolerates_all, "{:?}", pod["tolerations"]);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"].as_bool(), Some(true));
    assert_eq!(
        strs(&sc["capabilities"]["drop"]),
        BTreeSet::from(["ALL".into()])
    );
    let k8s_caps: BTreeSet<String> = strs(&sc["capabilities"]["add"])
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    assert_eq!(
        k8s_caps,
        unit_caps(&unit("picket-sensor.service")),
        "the DaemonSet and the systemd unit grant the same capabilities"
    );
    // Volumes: bpffs and the spool from the host, the key from the Secret.
    let volumes = pod["volumes"].as_vec().expect("volumes");
    let mounts = c["volumeMounts"].as_vec().expect("mounts");
    let mount_of = |vol: &str| -> String {
        mounts
            .iter()
            .find(|m| m["name"].as_str() == Some(vol))
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("volume {vol} not mounted"))
            .to_string()
    };
    let host_path = |path: &str| {
        volumes
            .iter()
            .find(|v| v["hostPath"]["path"].as_str() == Some(path))
            .and_then(|v| v["name"].as_str())
            .unwrap_or_else(|| panic!("no hostPath volume {path}"))
    };
    assert_eq!(mount_of(host_path("/sys/fs/bpf")), "/sys/fs/bpf");
    let spool_mount = mount_of(host_path("/var/lib/picket-sensor"));
    let secret_vol = volumes
        .iter()
        .find(|v| !v["secret"].is_badvalue())
        .expect("a secret volume");
    let secret_name = secret_vol["secret"]["secretName"].as_str().expect("name");
    assert!(
        find(&d, "Secret")
            .iter()
            .any(|s| s["metadata"]["name"].as_str() == Some(secret_name)),
        "the Secret {secret_name} is in the manifests"
    );
    let key_mount = mount_of(secret_vol["name"].as_str().expect("name"));
    // The config the pod reads points into those mounts and parses as the sensor's config.
    let cm = find(&d, "ConfigMap")[0];
    let cfg: sensor_user::config::FileConfig =
        toml::from_str(cm["data"]["sensor.toml"].as_str().expect("sensor.toml")).expect("toml");
    let key_file = cfg.sensor_key_file.expect("sensor_key_file");
    assert!(
        key_file.starts_with(&key_mount),
        "{key_file:?} under {key_mount}"
    );
    let spool = cfg.spool_dir.expect("spool_dir");
    assert!(
        spool.starts_with(&spool_mount),
        "{spool:?} under {spool_mount}"
    );
    let args = strs(&c["args"]);
    let cfg_mount = mount_of("config");
    assert!(
        args.iter().any(|a| a.starts_with(&cfg_mount)),
        "--config under {cfg_mount}: {args:?}"
    );
    // NODE_NAME from the downward API (pod enrichment by node).
    let env = c["env"].as_vec().expect("env");
    assert!(env.iter().any(|e| e["name"].as_str() == Some("NODE_NAME")
        && e["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some("spec.nodeName")));
    // RBAC: the pod's service account may read pods, and nothing else.
    let sa = pod["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    assert!(
        find(&d, "ServiceAccount")
            .iter()
            .any(|s| s["metadata"]["name"].as_str() == Some(sa))
    );
    let binding = find(&d, "ClusterRoleBinding")[0];
    assert!(
        binding["subjects"]
            .as_vec()
            .expect("subjects")
            .iter()
            .any(|s| s["name"].as_str() == Some(sa))
    );
    let role_name = binding["roleRef"]["name"].as_str().expect("roleRef");
    let role = find(&d, "ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"].as_str() == Some(role_name))
        .expect("the bound ClusterRole");
    let rules = role["rules"].as_vec().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        strs(&rules[0]["resources"]),
        BTreeSet::from(["pods".into()])
    );
    assert_eq!(
        strs(&rules[0]["verbs"]),
        BTreeSet::from(["get".into(), "list".into(), "watch".into()])
    );
}

/// `picket-controlplane serve --help`: every flag and environment variable a replica's
/// configuration may use is in it.
fn serve_help() -> String {
    sh(
        tests::bin("picket-controlplane").to_str().expect("utf8"),
        &["serve", "--help"],
    )
}

/// The `--flag` names of arguments (`--flag=value` or `--flag value`).
fn flags<'a>(args: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    args.into_iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect()
}

/// The value of `--flag` in arguments.
fn flag_value<'a>(args: &'a [String], flag: &str) -> &'a str {
    args.iter()
        .enumerate()
        .find_map(|(i, a)| {
            a.strip_prefix(&format!("{flag}="))
                .or_else(|| (a == flag).then(|| args[i + 1].as_str()))
        })
        .unwrap_or_else(|| panic!("{flag} in {args:?}"))
}

/// The keys of `KEY=value` lines of an environment file.
fn env_keys(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap_or_default().trim().to_string())
        .collect()
}

#[test]
fn the_replica_unit_configures_a_replica_and_refuses_to_start_without_the_servers() {
    let help = serve_help();
    let text = unit("picket-controlplane-replica.service");
    assert_eq!(
        unit_values(&text, "EnvironmentFile"),
        ["/etc/picket/replica.env"]
    );
    let exec = unit_values(&text, "ExecStart").concat();
    let args: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
    assert_eq!(&args[..2], ["/usr/bin/picket-controlplane", "serve"]);
    for f in flags(args.iter().map(String::as_str)) {
        assert!(help.contains(&f), "serve has no {f}");
    }
    // The same certificate for gRPC and the dashboard, both on every address.
    assert_eq!(
        flag_value(&args, "--tls-cert"),
        flag_value(&args, "--http-tls-cert")
    );
    assert!(flag_value(&args, "--http-listen").starts_with("0.0.0.0:"));
    // What the environment file sets is what `serve` reads.
    let keys =
        env_keys(&std::fs::read_to_string(root().join("deploy/systemd/replica.env")).expect("env"));
    assert_eq!(keys.len(), 6, "{keys:?}");
    for k in &keys {
        assert!(help.contains(k.as_str()), "serve does not read {k}");
    }
    // The check before the start, as systemd runs it (`$$` is a `$` to the shell): without
    // the bus or a store it refuses with a sentence; with all three it lets the start go on.
    let pre = unit_values(&text, "ExecStartPre")
        .concat()
        .replace("$$", "$");
    let script = pre
        .strip_prefix("/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .expect("/bin/sh -c '...'");
    let run = |env: &[(&str, &str)]| {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script).env_clear();
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("sh")
    };
    let all = [
        ("PICKET_BUS", "nats://127.0.0.1:4222"),
        ("PICKET_FLOW_STORE", "clickhouse://127.0.0.1:8123/p"),
        ("PICKET_STATE_STORE", "postgres://127.0.0.1/p"),
    ];
    assert!(run(&all).status.success());
    for missing in 0..3 {
        let env: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != missing)
            .map(|(_, kv)| *kv)
            .collect();
        let o = run(&env);
        assert!(!o.status.success(), "started without {}", all[missing].0);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("a replica needs PICKET_BUS"),
            "{o:?}"
        );
    }
}

#[test]
fn the_replica_deployment_is_reachable_by_the_sensors_and_configured_from_its_secret() {
    let help = serve_help();
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/picket-controlplane.yaml"))
        .expect("manifest");
    let d = YamlLoader::load_from_str(&text).expect("valid YAML");
    let dep = find(&d, "Deployment");
    assert_eq!(dep.len(), 1);
    assert!(dep[0]["spec"]["replicas"].as_i64().expect("replicas") >= 2);
    let pod = &dep[0]["spec"]["template"]["spec"];
    assert!(
        pod["hostNetwork"].is_badvalue(),
        "replicas need no host network"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let c = &pod["containers"][0];
    assert_eq!(
        strs(&c["securityContext"]["capabilities"]["drop"]),
        BTreeSet::from(["ALL".into()])
    );
    assert!(c["securityContext"]["capabilities"]["add"].is_badvalue());
    let args: Vec<String> = strs_in_order(&c["args"]);
    assert_eq!(args[0], "serve");
    for f in flags(args.iter().map(String::as_str)) {
        assert!(help.contains(&f), "serve has no {f}");
    }
    // Configured from the Secret: the same variables as the systemd unit's file, all read by
    // `serve`.
    let secret_name = c["envFrom"][0]["secretRef"]["name"]
        .as_str()
        .expect("envFrom");
    let secret = find(&d, "Secret")
        .into_iter()
        .find(|s| s["metadata"]["name"].as_str() == Some(secret_name))
        .expect("the Secret in the manifests");
    let keys: BTreeSet<String> = secret["stringData"]
        .as_hash()
        .expect("stringData")
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    assert_eq!(
        keys,
        env_keys(&std::fs::read_to_string(root().join("deploy/systemd/replica.env")).expect("env"))
    );
    for k in &keys {
        assert!(help.contains(k.as_str()), "serve does not read {k}");
    }
    // Ports: what serve listens on is what the container declares, the Service forwards and
    // the sensors' configuration dials.
    let port_of = |listen: &str| -> i64 {
        listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    };
    let container_port = |name: &str| -> i64 {
        c["ports"]
            .as_vec()
            .expect("ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("container port {name}"))
    };
    assert_eq!(
        container_port("grpc"),
        port_of(flag_value(&args, "--grpc-listen"))
    );
    assert_eq!(
        container_port("https"),
        port_of(flag_value(&args, "--http-listen"))
    );
    let svc = find(&d, "Service")[0];
    let svc_port = |name: &str| -> i64 {
        let p = svc["spec"]["ports"]
            .as_vec()
            .expect("ports")
            .iter()
            .find(|p| p["targetPort"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("the Service forwards no {name}"));
        p["port"].as_i64().expect("port")
    };
    assert_eq!(
        svc["spec"]["selector"],
        dep[0]["spec"]["selector"]["matchLabels"]
    );
    let sensors = docs();
    let cm = find(&sensors, "ConfigMap")[0];
    let cfg: sensor_user::config::FileConfig =
        toml::from_str(cm["data"]["sensor.toml"].as_str().expect("sensor.toml")).expect("toml");
    let url = format!(
        "https://{}.{}.svc:{}",
        svc["metadata"]["name"].as_str().expect("name"),
        svc["metadata"]["namespace"].as_str().expect("namespace"),
        svc_port("grpc")
    );
    assert!(
        format!("{:?}", cfg.controlplane).contains(&url),
        "the sensors dial {url}: {:?}",
        cfg.controlplane
    );
    // Ready when health says so, over the TLS the dashboard listens with.
    let probe = &c["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"].as_str(), Some("/api/v1/health"));
    assert_eq!(probe["port"].as_str(), Some("https"));
    assert_eq!(probe["scheme"].as_str(), Some("HTTPS"));
    // The certificate from its Secret, where the flags look for it; the data directory
    // mounted (the replica's own name is all it keeps there).
    let mount_of = |vol: &str| -> String {
        c["volumeMounts"]
            .as_vec()
            .expect("mounts")
            .iter()
            .find(|m| m["name"].as_str() == Some(vol))
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("volume {vol} not mounted"))
            .to_string()
    };
    let tls_vol = pod["volumes"]
        .as_vec()
        .expect("volumes")
        .iter()
        .find(|v| !v["secret"].is_badvalue())
        .expect("a secret volume");
    let tls_dir = mount_of(tls_vol["name"].as_str().expect("name"));
    for f in [
        "--tls-cert",
        "--tls-key",
        "--http-tls-cert",
        "--http-tls-key",
    ] {
        assert!(
            flag_value(&args, f).starts_with(&tls_dir),
            "{f} under {tls_dir}"
        );
    }
    assert_eq!(mount_of("data"), flag_value(&args, "--data-dir"));
    // A drain leaves a replica running.
    let pdb = find(&d, "PodDisruptionBudget")[0];
    assert!(pdb["spec"]["minAvailable"].as_i64().expect("minAvailable") >= 1);
}

fn strs_in_order(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
