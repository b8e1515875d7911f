//! Kubernetes manifests in, pods out: what `meshcap render -f` reads.
//!
//! A file holds one or more YAML or JSON documents (`---`-separated, as `istioctl kube-inject`
//! and `kubectl get -o yaml` print them; a `kind: List` is expanded). Each object becomes an
//! [`Object`]: a Pod is read as is; a Deployment, DaemonSet, StatefulSet, ReplicaSet,
//! ReplicationController or Job by its `spec.template`, a CronJob by
//! `spec.jobTemplate.spec.template`, a PodTemplate by `template`. A Namespace is kept for its
//! annotations (linkerd-cni reads settings a pod leaves unset from there). Everything else
//! (Service, ConfigMap, Secret, ...) carries no pod and is reported as such, not as an error. Pods are
//! read by [`meshcap_model::pod::PodView`], the code the CNI plugin's API path uses.

use anyhow::Context;
use meshcap_model::pod::{object_annotations, PodView};
use meshcap_model::Annotations;
use serde::Deserialize;
use serde_json::Value;

/// One object of the manifest.
#[derive(Debug)]
pub struct Object {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub content: Content,
}

#[derive(Debug)]
pub enum Content {
    /// A Pod, or a workload's pod template (`from` says which field).
    Pod {
        from: &'static str,
        pod: Box<PodView>,
        /// The pod (or template) as written, with the workload's namespace filled in: what
        /// the Linkerd and Kuma front ends read.
        raw: Box<Value>,
    },
    /// A Namespace: its annotations.
    Namespace(Annotations),
    /// An object that carries no pod.
    NoPod,
    /// A pod-carrying kind whose pod cannot be read (wrong shape); the message says where.
    Invalid(String),
}

impl Object {
    /// `Kind namespace/name`, as `kubectl` would name it.
    pub fn title(&self) -> String {
        let name = self.name.as_deref().unwrap_or("(unnamed)");
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{name}", self.kind),
            None => format!("{} {name}", self.kind),
        }
    }
}

/// Where the pod template of `kind` lives (API group ignored: the kinds are unambiguous).
fn template_path(kind: &str) -> Option<(&'static [&'static str], &'static str)> {
    Some(match kind {
        "Pod" => (&[], "the Pod itself"),
        "Deployment"
        | "DaemonSet"
        | "StatefulSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => (&["spec", "template"], "spec.template"),
        "CronJob" => (
            &["spec", "jobTemplate", "spec", "template"],
            "spec.jobTemplate.spec.template",
        ),
        "PodTemplate" => (&["template"], "template"),
        _ => return None,
    })
}

/// Parses every document of `text`.
pub fn parse(text: &str) -> anyhow::Result<Vec<Object>> {
    let mut values = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc)
            .with_context(|| format!("document {} is not valid YAML or JSON", i + 1))?;
        expand(v, &mut values);
    }
    Ok(values.into_iter().map(|v| object(&v)).collect())
}

/// Skips empty documents; expands `kind: List`.
fn expand(v: Value, out: &mut Vec<Value>) {
    match v {
        Value::Null => {}
        Value::Object(ref o)
            if o.get("kind").and_then(Value::as_str) == Some("List")
                && o.get("items").is_some_and(Value::is_array) =>
        {
            if let Some(Value::Array(items)) = o.get("items") {
                for item in items {
                    expand(item.clone(), out);
                }
            }
        }
        other => out.push(other),
    }
}

fn object(v: &Value) -> Object {
    let meta = v.get("metadata");
    let text = |m: Option<&Value>, k: &str| {
        m.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("(no kind)")
        .to_owned();
    let namespace = text(meta, "namespace");
    let name = text(meta, "name");
    let content = match template_path(&kind) {
        None if kind == "Namespace" => Content::Namespace(object_annotations(v)),
        None => Content::NoPod,
        Some((path, from)) => {
            let mut t = Some(v);
            for key in path {
                t = t.and_then(|t| t.get(*key));
            }
            let prefix = path.iter().map(|k| format!("{k}.")).collect::<String>();
            match t {
                None => Content::Invalid(format!("{kind} has no {from}")),
                Some(t) => match PodView::from_parts(t.get("metadata"), t.get("spec"), &prefix) {
                    Ok(mut pod) => {
                        // A template inherits the workload's namespace and, for messages, its name.
                        if pod.namespace.is_none() {
                            pod.namespace = namespace.clone();
                        }
                        if pod.name.is_none() {
                            pod.name = name.clone();
                        }
                        let mut raw = t.clone();
                        if let (Some(ns), Some(obj)) = (&namespace, raw.as_object_mut()) {
                            let meta = obj
                                .entry("metadata")
                                .or_insert_with(|| Value::Object(Default::default()));
                            if let Some(meta) = meta.as_object_mut() {
                                meta.entry("namespace")
                                    .or_insert_with(|| Value::String(ns.clone()));
                            }
                        }
                        Content::Pod {
                            from,
                            pod: Box::new(pod),
                            raw: Box::new(raw),
                        }
                    }
                    Err(e) => Content::Invalid(e.to_string()),
                },
            }
        }
    };
    Object {
        kind,
        namespace,
        name,
        content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_templates() {
        let text = r#"
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: ns, annotations: {sidecar.istio.io/status: "{}"}}
spec:
  containers: [{name: istio-proxy, securityContext: {runAsUser: 7}}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: c}
spec:
  jobTemplate:
    spec:
      template:
        spec: {containers: [{name: app}]}
---
{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}},
  {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s", "namespace": "db"},
   "spec": {"template": {"metadata": {"annotations": {"a": "b"}}, "spec": {"containers": []}}}}
]}
---
kind: Deployment
metadata: {name: broken}
spec: {template: {spec: {containers: {}}}}
---
kind: Job
metadata: {name: nojob}
"#;
        let objs = parse(text).unwrap();
        let titles: Vec<String> = objs.iter().map(Object::title).collect();
        assert_eq!(
            titles,
            [
                "Pod ns/p",
                "CronJob c",
                "ConfigMap cm",
                "StatefulSet db/s",
                "Deployment broken",
                "Job nojob"
            ]
        );
        match &objs[0].content {
            Content::Pod { pod, .. } => {
                assert!(pod.has_istio_proxy);
                assert_eq!(pod.proxy_uid, Some(7));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            objs[1].content,
            Content::Pod {
                from: "spec.jobTemplate.spec.template",
                ..
            }
        ));
        assert!(matches!(objs[2].content, Content::NoPod));
        match &objs[3].content {
            Content::Pod { pod, .. } => {
                assert_eq!(pod.display_name(), "db/s");
                assert_eq!(pod.annotations.get("a").map(String::as_str), Some("b"));
            }
            other => panic!("{other:?}"),
        }
        match &objs[4].content {
            Content::Invalid(m) => assert!(m.contains("spec.template.spec.containers"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&objs[5].content, Content::Invalid(m) if m.contains("no spec.template")));
    }

    #[test]
    fn bad_yaml_names_the_document() {
        let err = parse("kind: Pod\n---\n: : [\n").unwrap_err();
        assert!(format!("{err:#}").contains("document 2"), "{err:#}");
    }
}
