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
