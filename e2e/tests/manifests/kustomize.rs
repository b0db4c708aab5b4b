//! Renders a kustomization the way `kubectl kustomize` does, for the subset of kustomize
//! the project uses: `resources` (files and kustomization directories), `components`
//! (resources and generators only), `configMapGenerator` (create/replace, files, no name
//! hash), `images` (new name, digest kept), and `patches` that are JSON 6902 operations
//! (add, remove, replace, test) on a target kind/name or a strategic-merge
//! `$patch: delete`. Anything else is refused, so a kustomization can never use a feature
//! this renderer would silently skip. (No kustomize binary is among the machine's
//! packages; the output was compared with kustomize v5.5 by hand, see istio/README.md.)

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{yaml_docs, yaml_docs_str};

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
            out.extend(render(&p));
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
        out.extend(render(&p));
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
    assert_eq!(
        g["options"]["disableNameSuffixHash"], true,
        "{name}: generated names with a hash suffix are not supported"
    );
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
    match g["behavior"].as_str().unwrap_or("create") {
        "replace" => {
            let cm = out
                .iter_mut()
                .find(|d| {
                    d["kind"] == "ConfigMap"
                        && d["metadata"]["name"] == name
                        && (namespace.is_null() || d["metadata"]["namespace"] == namespace)
                })
                .unwrap_or_else(|| panic!("configMapGenerator replaces a missing {name}"));
            cm["data"] = Value::Object(data);
        }
        "create" => {
            let mut meta = json!({ "name": name });
            if !namespace.is_null() {
                meta["namespace"] = namespace;
            }
            if let Some(labels) = g["options"].get("labels") {
                meta["labels"] = labels.clone();
            }
            out.push(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}),
            );
        }
        other => panic!("configMapGenerator behavior {other:?} is not supported"),
    }
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
