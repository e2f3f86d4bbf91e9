//! Kubernetes context: in a cluster (a service-account token and KUBERNETES_SERVICE_HOST), the
//! sensor lists and then watches the pods of its node (NODE_NAME, from the downward API) and
//! attaches namespace, pod, labels and node to flow records by pod IP. Pods on the host network
//! share the node's address and are not used for this. The watch restarts with a fresh list
//! when it ends or the API says the version is gone.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use serde::Deserialize;
use tracing::{info, warn};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Pod {
    pub namespace: String,
    pub pod: String,
    pub labels: BTreeMap<String, String>,
    pub node: String,
}

/// Pod IP -> pod, shared with the export path.
#[derive(Clone, Debug, Default)]
pub struct PodIndex(Arc<RwLock<HashMap<IpAddr, Pod>>>);

impl PodIndex {
    pub fn get(&self, ip: &IpAddr) -> Option<Pod> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(ip)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn replace(&self, pods: &[PodJson]) {
        let mut m = HashMap::new();
        for p in pods {
            for (ip, pod) in p.entries() {
                m.insert(ip, pod);
            }
        }
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = m;
    }

    fn apply(&self, ev: &WatchEvent) {
        let mut m = self.0.write().unwrap_or_else(|p| p.into_inner());
        let key = (&ev.object.metadata.namespace, &ev.object.metadata.name);
        // Whatever the event, first forget the addresses this pod had.
        m.retain(|_, p| (&p.namespace, &p.pod) != key);
        if ev.kind != "DELETED" {
            for (ip, pod) in ev.object.entries() {
                m.insert(ip, pod);
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default, rename = "resourceVersion")]
    resource_version: String,
}

#[derive(Debug, Default, Deserialize)]
struct Spec {
    #[serde(default, rename = "nodeName")]
    node_name: String,
    #[serde(default, rename = "hostNetwork")]
    host_network: bool,
}

#[derive(Debug, Default, Deserialize)]
struct PodIp {
    ip: String,
}

#[derive(Debug, Default, Deserialize)]
struct Status {
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<PodIp>,
    #[serde(default)]
    phase: String,
}

#[derive(Debug, Default, Deserialize)]
struct PodJson {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: Spec,
    #[serde(default)]
    status: Status,
}

impl PodJson {
    fn entries(&self) -> Vec<(IpAddr, Pod)> {
        if self.spec.host_network || matches!(self.status.phase.as_str(), "Succeeded" | "Failed") {
            return Vec::new();
        }
        let mut ips: Vec<&str> = self.status.pod_ips.iter().map(|p| p.ip.as_str()).collect();
        if let Some(ip) = &self.status.pod_ip {
            ips.push(ip);
        }
        let pod = Pod {
            namespace: self.metadata.namespace.clone(),
            pod: self.metadata.name.clone(),
            labels: self.metadata.labels.clone(),
            node: self.spec.node_name.clone(),
        };
        let mut out: Vec<(IpAddr, Pod)> = ips
            .iter()
            .filter_map(|s| s.parse().ok())
            .map(|ip| (ip, pod.clone()))
            .collect();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }
}

#[derive(Debug, Deserialize)]
struct PodList {
    metadata: Meta,
    #[serde(default)]
    items: Vec<PodJson>,
}

#[derive(Debug, Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: PodJson,
}

/// Where and how to reach the API server.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub base: String,
    pub token: String,
    pub ca_pem: Option<Vec<u8>>,
    pub node: String,
}

impl ApiConfig {
    /// The in-cluster configuration, if this process runs in a pod with a service account.
    /// `PICKET_K8S_API` (and `PICKET_K8S_TOKEN_FILE`) point elsewhere, for tests.
    pub fn from_env() -> Option<ApiConfig> {
        let node = std::env::var("NODE_NAME").unwrap_or_default();
        let (base, token_file, ca) = match std::env::var("PICKET_K8S_API") {
            Ok(base) => (
                base,
                std::env::var("PICKET_K8S_TOKEN_FILE").unwrap_or_default(),
                None,
            ),
            Err(_) => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                (
                    format!("https://{host}:{port}"),
                    format!("{SA_DIR}/token"),
                    std::fs::read(format!("{SA_DIR}/ca.crt")).ok(),
                )
            }
        };
        let token = std::fs::read_to_string(&token_file)
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        if token.is_empty() && std::env::var("PICKET_K8S_API").is_err() {
            return None;
        }
        Some(ApiConfig {
            base,
            token,
            ca_pem: ca,
            node,
        })
    }
}

fn client(cfg: &ApiConfig) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(ca) = &cfg.ca_pem {
        b = b.add_root_certificate(
            reqwest::Certificate::from_pem(ca).context("the service account's ca.crt")?,
        );
    }
    Ok(b.build()?)
}

fn pods_url(cfg: &ApiConfig) -> String {
    let mut u = format!("{}/api/v1/pods", cfg.base.trim_end_matches('/'));
    if !cfg.node.is_empty() {
        u.push_str(&format!("?fieldSelector=spec.nodeName%3D{}", cfg.node));
    }
    u
}

fn with_param(url: &str, p: &str) -> String {
    format!("{url}{}{p}", if url.contains('?') { '&' } else { '?' })
}

/// One list-then-watch round; returns when the watch ends (to be called again).
async fn list_and_watch(
    c: &reqwest::Client,
    cfg: &ApiConfig,
    index: &PodIndex,
) -> anyhow::Result<()> {
    let url = pods_url(cfg);
    let list: PodList = c
        .get(&url)
        .bearer_auth(&cfg.token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
        .context("decoding the pod list")?;
    index.replace(&list.items);
    info!(
        pods = list.items.len(),
        addresses = index.len(),
        node = cfg.node,
        "Kubernetes pods listed"
    );
    let watch = with_param(
        &with_param(&url, "watch=1"),
        &format!("resourceVersion={}", list.metadata.resource_version),
    );
    let mut resp = c
        .get(&watch)
        .bearer_auth(&cfg.token)
        .send()
        .await?
        .error_for_status()?;
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&line).context("a watch event")?;
            match v["type"].as_str() {
                Some("ADDED" | "MODIFIED" | "DELETED") => {
                    let ev: WatchEvent = serde_json::from_value(v).context("a pod watch event")?;
                    index.apply(&ev);
                }
                Some("BOOKMARK") => {}
                // ERROR, e.g. 410 Gone: the version is too old; list again.
                _ => anyhow::bail!("watch error: {}", v["object"]["message"]),
            }
        }
    }
    Ok(())
}

/// Keeps `index` current until the process ends.
pub async fn run(cfg: ApiConfig, index: PodIndex) {
    let c = match client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "Kubernetes enrichment off: cannot build the API client");
            return;
        }
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        match list_and_watch(&c, &cfg, &index).await {
            Ok(()) => {
                // The API server ends watches after a while; list again, without hammering it.
                backoff = Duration::from_secs(1);
                tokio::time::sleep(backoff).await;
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), retry_in_s = backoff.as_secs(), "Kubernetes pod watch failed; flows keep their last known pods");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, host_network: bool) -> PodJson {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
            "spec": {"nodeName": "node-1", "hostNetwork": host_network},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running"}
        }))
        .expect("pod json")
    }

    #[test]
    fn pods_are_indexed_by_ip_and_host_network_pods_are_not() {
        let idx = PodIndex::default();
        idx.replace(&[
            pod("web", "10.1.0.5", false),
            pod("proxy", "192.168.1.10", true),
        ]);
        let p = idx.get(&"10.1.0.5".parse().expect("ip")).expect("web");
        assert_eq!(
            (p.namespace.as_str(), p.pod.as_str(), p.node.as_str()),
            ("shop", "web", "node-1")
        );
        assert_eq!(p.labels["app"], "web");
        assert!(idx.get(&"192.168.1.10".parse().expect("ip")).is_none());
        // A pod moves to another IP, then goes away.
        let moved = WatchEvent {
            kind: "MODIFIED".into(),
            object: pod("web", "10.1.0.9", false),
        };
        idx.apply(&moved);
        assert!(idx.get(&"10.1.0.5".parse().expect("ip")).is_none());
        assert!(idx.get(&"10.1.0.9".parse().expect("ip")).is_some());
        let gone = WatchEvent {
            kind: "DELETED".into(),
            object: pod("web", "10.1.0.9", false),
        };
        idx.apply(&gone);
        assert!(idx.is_empty());
    }

    #[test]
    fn the_pod_list_url_selects_this_node() {
        let cfg = ApiConfig {
            base: "https://10.96.0.1:443/".into(),
            token: "t".into(),
            ca_pem: None,
            node: "node-1".into(),
        };
        let u = pods_url(&cfg);
        assert_eq!(
            u,
            "https://10.96.0.1:443/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1"
        );
        assert_eq!(with_param(&u, "watch=1"), format!("{u}&watch=1"));
    }
}
