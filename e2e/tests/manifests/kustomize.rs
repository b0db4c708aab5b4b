//! Renders a kustomization the way `kubectl kustomize` (kustomize v5) does, for the subset
//! of kustomize the project uses: `resources` (files and kustomization directories),
//! `components` (resources and generators only), `configMapGenerator` (create, replace,
//! merge; files, literals, labels; the name hash on or off), `images` (new name, digest
//! kept), and `patches` that are JSON 6902 operations (add, remove, replace, test) on a
//! target kind/name or a strategic-merge `$patch: delete`. Anything else is refused, so a
//! kustomization can never use a feature this renderer would silently skip.
//!
//! Generated ConfigMap names get kustomize's content hash, as kustomize adds it: once, at
//! the top of the build (a base's generator, replaced or merged by an overlay, is hashed
//! from the final data, with the overlay's hash option), then references to the unhashed
//! name from pod specs in the same namespace (volumes, projected sources, `envFrom`,
//! `configMapKeyRef`) are rewritten. The hash follows kustomize's `api/hasher/hasher.go`
//! ([`config_map_hash`]). The output was compared with `kubectl kustomize` (kustomize
//! v5.5.0) for every kustomization under istio/ and e2e/kind/, see istio/README.md.

use std::path::Path;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{yaml_docs, yaml_docs_str};

/// Marks a generated ConfigMap whose name gets the hash suffix while a build runs (the
/// build annotation kustomize uses for the same purpose); never in the output.
const NEEDS_HASH: &str = "internal.config.kubernetes.io/needsHashSuffix";

const KNOWN: &[&str] = &[
    "apiVersion",
    "kind",
    "resources",
    "components",
    "patches",
    "configMapGenerator",
    "images",
];

/// The resources `dir/kustomization.yaml` produces.
pub fn render(dir: &Path) -> Vec<Value> {
    let mut out = accumulate(dir);
    add_hash_suffixes(&mut out);
    out
}

/// `dir`'s resources before the name hashes, which only the top of a build adds.
fn accumulate(dir: &Path) -> Vec<Value> {
    let k = &yaml_docs(&dir.join("kustomization.yaml"))[0];
    for key in k.as_object().unwrap().keys() {
        assert!(
            KNOWN.contains(&key.as_str()),
            "{}: kustomize field {key:?} is not supported by the test renderer",
            dir.display()
        );
    }
    let mut out = Vec::new();
    for r in list(k, "resources") {
        let p = dir.join(r.as_str().unwrap());
        assert!(
            p.exists(),
            "{}: resource {} is missing",
            dir.display(),
            p.display()
        );
        if p.is_dir() {
            out.extend(accumulate(&p));
        } else {
            out.extend(yaml_docs(&p));
        }
    }
    for c in list(k, "components") {
        let p = dir.join(c.as_str().unwrap());
        let ck = &yaml_docs(&p.join("kustomization.yaml"))[0];
        assert_eq!(ck["kind"], "Component", "{}", p.display());
        assert!(
            ck.get("patches").is_none(),
            "component patches are not supported"
        );
        out.extend(accumulate(&p));
    }
    for g in list(k, "configMapGenerator") {
        generate_config_map(dir, &g, &mut out);
    }
    for i in list(k, "images") {
        set_image(&i, &mut out);
    }
    for p in list(k, "patches") {
        apply_patch(dir, &p, &mut out);
    }
    out
}

fn list(k: &Value, key: &str) -> Vec<Value> {
    k[key].as_array().cloned().unwrap_or_default()
}

fn generate_config_map(dir: &Path, g: &Value, out: &mut Vec<Value>) {
    let name = g["name"].as_str().unwrap();
    for key in g.as_object().unwrap().keys() {
        assert!(
            [
                "name",
                "namespace",
                "behavior",
                "files",
                "literals",
                "options"
            ]
            .contains(&key.as_str()),
            "{name}: configMapGenerator field {key:?} is not supported by the test renderer"
        );
    }
    let options = g["options"].as_object().cloned().unwrap_or_default();
    for key in options.keys() {
        assert!(
            ["disableNameSuffixHash", "labels"].contains(&key.as_str()),
            "{name}: configMapGenerator option {key:?} is not supported by the test renderer"
        );
    }
    let mut data = Map::new();
    for f in list(g, "files") {
        let spec = f.as_str().unwrap();
        let (key, file) = spec
            .split_once('=')
            .unwrap_or((Path::new(spec).file_name().unwrap().to_str().unwrap(), spec));
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        data.insert(key.to_string(), Value::String(text));
    }
    for l in list(g, "literals") {
        let (k, v) = l.as_str().unwrap().split_once('=').unwrap();
        data.insert(k.to_string(), Value::String(v.to_string()));
    }
    let namespace = g["namespace"].clone();
    let mut meta = json!({ "name": name });
    if !namespace.is_null() {
        meta["namespace"] = namespace.clone();
    }
    if let Some(labels) = options.get("labels") {
        meta["labels"] = labels.clone();
    }
    if options.get("disableNameSuffixHash") != Some(&json!(true)) {
        meta["annotations"] = json!({ NEEDS_HASH: "enabled" });
    }
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data});
    let behavior = g["behavior"].as_str().unwrap_or("create");
    match behavior {
        "create" => out.push(cm),
        "replace" | "merge" => {
            let old = out
                .iter_mut()
                .find(|d| {
                    d["kind"] == "ConfigMap"
                        && d["metadata"]["name"] == name
                        && (namespace.is_null() || d["metadata"]["namespace"] == namespace)
                })
                .unwrap_or_else(|| panic!("configMapGenerator {behavior}s a missing {name}"));
            // kustomize's resWrangler.appendReplaceOrMerge: the new ConfigMap takes the
            // old one's place and name, labels and annotations merged (the new win), its
            // own hash option deciding (the old one's build annotation is dropped).
            cm["metadata"]["namespace"] = old["metadata"]["namespace"].clone();
            for field in ["labels", "annotations"] {
                let mut merged = old["metadata"][field]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                merged.remove(NEEDS_HASH);
                if let Some(new) = cm["metadata"][field].as_object() {
                    merged.extend(new.clone());
                }
                let meta = cm["metadata"].as_object_mut().unwrap();
                if merged.is_empty() {
                    meta.remove(field);
                } else {
                    meta.insert(field.to_string(), Value::Object(merged));
                }
            }
            if behavior == "merge" {
                let mut merged = old["data"].as_object().cloned().unwrap_or_default();
                merged.extend(data);
                cm["data"] = Value::Object(merged);
            }
            *old = cm;
        }
        other => panic!("configMapGenerator behavior {other:?} is not supported"),
    }
}

/// What kustomize does last in a build: generated ConfigMaps get `-<content hash>`
/// appended to their name (kustomize's HashTransformer), and pod specs in their namespace
/// that name them are rewritten to the new name (its nameReference back-references), so
/// changed data changes the pod template and rolls the pods.
fn add_hash_suffixes(out: &mut [Value]) {
    let mut renamed = Vec::new();
    for d in out.iter_mut() {
        let Some(meta) = d.get_mut("metadata").and_then(Value::as_object_mut) else {
            continue;
        };
        let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) else {
            continue;
        };
        if annotations.remove(NEEDS_HASH).is_none() {
            continue;
        }
        if annotations.is_empty() {
            meta.remove("annotations");
        }
        let old = d["metadata"]["name"].as_str().unwrap().to_string();
        let new = format!("{old}-{}", config_map_hash(d));
        d["metadata"]["name"] = Value::String(new.clone());
        renamed.push((d["metadata"]["namespace"].clone(), old, new));
    }
    for (namespace, old, new) in &renamed {
        for d in out.iter_mut() {
            if &d["metadata"]["namespace"] != namespace {
                continue;
            }
            let pod_spec = match d["kind"].as_str() {
                Some("Pod") => "/spec",
                Some("CronJob") => "/spec/jobTemplate/spec/template/spec",
                _ => "/spec/template/spec",
            };
            if let Some(spec) = d.pointer_mut(pod_spec) {
                rename_config_map_refs(spec, old, new);
            }
        }
    }
}

/// Every reference to ConfigMap `old` in a pod spec, set to `new`.
fn rename_config_map_refs(spec: &mut Value, old: &str, new: &str) {
    let mut slots: Vec<&mut Value> = Vec::new();
    let Value::Object(spec) = spec else {
        return;
    };
    for (key, v) in spec.iter_mut() {
        let Some(items) = v.as_array_mut() else {
            continue;
        };
        match key.as_str() {
            "volumes" => {
                for vol in items {
                    let Value::Object(vol) = vol else { continue };
                    for (kind, src) in vol.iter_mut() {
                        match kind.as_str() {
                            "configMap" => slots.extend(src.get_mut("name")),
                            "projected" => {
                                if let Some(sources) =
                                    src.get_mut("sources").and_then(Value::as_array_mut)
                                {
                                    for s in sources {
                                        if let Some(cm) = s.get_mut("configMap") {
                                            slots.extend(cm.get_mut("name"));
                                        }
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            "containers" | "initContainers" | "ephemeralContainers" => {
                for c in items {
                    let Value::Object(c) = c else { continue };
                    for (field, list) in c.iter_mut() {
                        let Some(list) = list.as_array_mut() else {
                            continue;
                        };
                        for e in list {
                            match field.as_str() {
                                "envFrom" => {
                                    if let Some(r) = e.get_mut("configMapRef") {
                                        slots.extend(r.get_mut("name"));
                                    }
                                }
                                "env" => {
                                    if let Some(r) = e
                                        .get_mut("valueFrom")
                                        .and_then(|v| v.get_mut("configMapKeyRef"))
                                    {
                                        slots.extend(r.get_mut("name"));
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for slot in slots {
        if slot == old {
            *slot = Value::String(new.to_string());
        }
    }
}

/// kustomize's name suffix for a ConfigMap, as `api/hasher/hasher.go` computes it: the
/// SHA-256 of `encodeConfigMap`'s Go `json.Marshal` of `{"binaryData"?, "data", "kind",
/// "name"}` (keys sorted), hex, its first 10 characters with 0→g 1→h 3→k a→m e→t
/// (`Encode`, so the suffix never reads as a number or a bad word). `name` is always ""
/// there: `encodeConfigMap` looks up "metadata/name" as one field name, which no
/// ConfigMap has (kustomize v5.5 gives `literals: ["one="]` the suffix `9g67k2htb6`,
/// hasher_test.go's vector for an empty name). A missing `data` encodes as "";
/// `binaryData` only when it is a map.
pub fn config_map_hash(cm: &Value) -> String {
    let mut enc = String::from("{");
    if let Some(binary) = cm.get("binaryData").filter(|b| b.is_object()) {
        enc.push_str("\"binaryData\":");
        go_json(binary, &mut enc);
        enc.push(',');
    }
    enc.push_str("\"data\":");
    match cm.get("data").filter(|d| !d.is_null()) {
        Some(data) => go_json(data, &mut enc),
        None => enc.push_str("\"\""),
    }
    enc.push_str(",\"kind\":\"ConfigMap\",\"name\":\"\"}");
    let hex: String = Sha256::digest(enc.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex[..10]
        .chars()
        .map(|c| match c {
            '0' => 'g',
            '1' => 'h',
            '3' => 'k',
            'a' => 'm',
            'e' => 't',
            c => c,
        })
        .collect()
}

/// Go's `json.Marshal` of a decoded YAML value: map keys sorted by bytes, strings escaped
/// as `encoding/json` does (HTML-safe: `<`, `>`, `&`, U+2028 and U+2029 as `\uXXXX`;
/// `\b` `\f` `\n` `\r` `\t` short, as Go 1.22+ writes them; other control characters as
/// `\u00xx`).
fn go_json(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            assert!(
                n.is_i64() || n.is_u64(),
                "{n}: Go formats floats differently; not supported in a hashed ConfigMap"
            );
            out.push_str(&n.to_string());
        }
        Value::String(s) => go_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_string(k, out);
                out.push(':');
                go_json(&m[k], out);
            }
            out.push('}');
        }
    }
}

fn go_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `images:` rewrites the name of every container image `name[:tag][@digest]`.
fn set_image(i: &Value, out: &mut [Value]) {
    let name = i["name"].as_str().unwrap();
    assert!(
        i.get("newTag").is_none() && i.get("digest").is_none(),
        "images: only newName is supported (digests are pinned in the base)"
    );
    let new_name = i["newName"].as_str().unwrap();
    let mut hits = 0;
    for d in out.iter_mut() {
        // pointer_mut, not IndexMut: indexing would add the path to every other resource.
        let Some(containers) = d
            .pointer_mut("/spec/template/spec/containers")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in containers {
            let image = c["image"].as_str().unwrap().to_string();
            let split = image
                .find(['@'])
                .or_else(|| image.rfind(':').filter(|&p| !image[p..].contains('/')));
            let (base, rest) = image.split_at(split.unwrap_or(image.len()));
            if base == name {
                c["image"] = Value::String(format!("{new_name}{rest}"));
                hits += 1;
            }
        }
    }
    assert!(hits > 0, "images: no container uses {name}");
}

fn apply_patch(dir: &Path, p: &Value, out: &mut Vec<Value>) {
    let text = p["patch"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: only inline patches", dir.display()));
    let doc = &yaml_docs_str(text)[0];
    if let Some(ops) = doc.as_array() {
        let target = &p["target"];
        let mut hits = 0;
        for d in out.iter_mut() {
            if d["kind"] == target["kind"] && d["metadata"]["name"] == target["name"] {
                for op in ops {
                    json_patch(d, op);
                }
                hits += 1;
            }
        }
        assert_eq!(
            hits,
            1,
            "{}: patch target {target} matches {hits} resources",
            dir.display()
        );
    } else {
        assert_eq!(
            doc["$patch"], "delete",
            "only `$patch: delete` strategic-merge patches"
        );
        let before = out.len();
        out.retain(|d| {
            !(d["kind"] == doc["kind"]
                && d["metadata"]["name"] == doc["metadata"]["name"]
                && d["metadata"]["namespace"] == doc["metadata"]["namespace"])
        });
        assert_eq!(
            before - out.len(),
            1,
            "{}: delete patch matches nothing",
            dir.display()
        );
    }
}

/// One RFC 6902 operation; a failed `test` or a missing path panics, as kustomize fails.
fn json_patch(doc: &mut Value, op: &Value) {
    let path = op["path"].as_str().unwrap();
    let (parent_path, last) = path.rsplit_once('/').unwrap();
    let last = last.replace("~1", "/").replace("~0", "~");
    match op["op"].as_str().unwrap() {
        "test" => assert_eq!(
            doc.pointer(path),
            Some(&op["value"]),
            "patch test failed at {path}"
        ),
        "replace" => {
            let slot = doc
                .pointer_mut(path)
                .unwrap_or_else(|| panic!("replace: no {path}"));
            *slot = op["value"].clone();
        }
        "remove" => {
            let parent = doc
                .pointer_mut(parent_path)
                .unwrap_or_else(|| panic!("remove: no {path}"));
            match parent {
                Value::Array(a) => {
                    let i: usize = last.parse().unwrap();
                    assert!(i < a.len(), "remove: no {path}");
                    a.remove(i);
                }
                Value::Object(m) => {
                    m.remove(&last)
                        .unwrap_or_else(|| panic!("remove: no {path}"));
                }
                _ => panic!("remove: {parent_path} is not a container"),
            }
        }
        "add" => {
            let parent = doc
                .pointer_mut(parent_path)
                .unwrap_or_else(|| panic!("add: no {parent_path}"));
            match parent {
                Value::Array(a) if last == "-" => a.push(op["value"].clone()),
                Value::Array(a) => a.insert(last.parse().unwrap(), op["value"].clone()),
                Value::Object(m) => {
                    m.insert(last, op["value"].clone());
                }
                _ => panic!("add: {parent_path} is not a container"),
            }
        }
        other => panic!("JSON patch op {other:?} is not supported"),
    }
}
