//! The OTLP resource vitals pushes its metrics under: `service.name`, `service.version`,
//! `service.instance.id`, and the Kubernetes attributes the pod's Downward API variables provide.

/// Downward API variables read, and the resource attribute each becomes. The first variable present of a
/// row wins (`POD_NAMESPACE` is a common older spelling).
pub const KUBERNETES_VARIABLES: [(&[&str], &str); 5] = [
    (&["K8S_POD_NAME"], "k8s.pod.name"),
    (
        &["K8S_NAMESPACE_NAME", "POD_NAMESPACE"],
        "k8s.namespace.name",
    ),
    (&["K8S_NODE_NAME"], "k8s.node.name"),
    (&["K8S_CONTAINER_NAME"], "k8s.container.name"),
    (&["K8S_POD_UID"], "k8s.pod.uid"),
];

/// Longest attribute value taken from the environment; a longer one is cut (on a character boundary).
const MAX_VALUE_BYTES: usize = 256;

fn cut(mut s: String) -> String {
    if s.len() > MAX_VALUE_BYTES {
        let mut end = MAX_VALUE_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Resource attributes, in a stable order. `env` reads vitals' environment; `host` is the host name and
/// `pid` vitals' own process id (the instance id outside Kubernetes).
///
/// `service.instance.id` is `<namespace>.<pod>.<container>` (the parts that are set) when the pod name is
/// known, the OpenTelemetry Operator's convention, so it is stable across container restarts; otherwise
/// `<host>:<pid>`.
pub fn resource_attributes(
    service_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    host: &str,
    pid: u32,
) -> Vec<(String, String)> {
    let mut kube: Vec<(String, String)> = Vec::new();
    for (vars, attribute) in KUBERNETES_VARIABLES {
        let value = vars.iter().find_map(|v| {
            env(v)
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        });
        if let Some(v) = value {
            kube.push((attribute.to_owned(), cut(v)));
        }
    }
    let get = |attribute: &str| {
        kube.iter()
            .find(|(k, _)| k == attribute)
            .map(|(_, v)| v.as_str())
    };
    let instance = match get("k8s.pod.name") {
        Some(pod) => [
            get("k8s.namespace.name"),
            Some(pod),
            get("k8s.container.name"),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("."),
        None => format!("{host}:{pid}"),
    };
    let mut out = vec![
        ("service.name".to_owned(), service_name.to_owned()),
        (
            "service.version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
        ("service.instance.id".to_owned(), cut(instance)),
    ];
    out.extend(kube);
    out
}

/// The host name from the kernel (`/proc/sys/kernel/hostname`), else `$HOSTNAME`, else `unknown`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .map(cut)
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn get<'a>(attrs: &'a [(String, String)], k: &str) -> Option<&'a str> {
        attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn kubernetes_attributes_from_downward_api() {
        let env = env_of(&[
            ("K8S_POD_NAME", "shop-7d9f-abcde"),
            ("POD_NAMESPACE", "old-style"),
            ("K8S_NAMESPACE_NAME", "prod"),
            ("K8S_NODE_NAME", "node-3"),
            ("K8S_CONTAINER_NAME", "vitals"),
            ("K8S_POD_UID", "1f2e"),
        ]);
        let a = resource_attributes("vitals", &env, "ignored", 42);
        assert_eq!(get(&a, "service.name"), Some("vitals"));
        assert_eq!(
            get(&a, "service.instance.id"),
            Some("prod.shop-7d9f-abcde.vitals")
        );
        assert_eq!(get(&a, "k8s.namespace.name"), Some("prod"));
        assert_eq!(get(&a, "k8s.node.name"), Some("node-3"));
        assert_eq!(get(&a, "k8s.pod.uid"), Some("1f2e"));
        assert_eq!(a.len(), 8);
    }

    #[test]
    fn outside_kubernetes_the_instance_is_host_and_pid() {
        let env = env_of(&[("POD_NAMESPACE", "ns"), ("K8S_NODE_NAME", "  ")]);
        let a = resource_attributes("svc", &env, "box", 42);
        assert_eq!(get(&a, "service.instance.id"), Some("box:42"));
        assert_eq!(get(&a, "k8s.namespace.name"), Some("ns"));
        assert_eq!(get(&a, "k8s.node.name"), None, "blank is absent");
        let long = "é".repeat(200);
        assert!(cut(long).len() <= MAX_VALUE_BYTES);
    }
}
