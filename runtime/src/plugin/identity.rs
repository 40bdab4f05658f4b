//! Which plugin a file is.
//!
//! Policy: a plugin is known by its file's name. The name a plugin gives itself in `describe`
//! (which names its consumer groups `sluice:<name>` and, through the registry, owns its tables)
//! must equal its file's stem — `promo-code-analytics.wasm` is `promo-code-analytics` — unless
//! the operator binds another file to it in the host config (`[plugins.<stem>] name = "..."`,
//! e.g. for `promo-code-analytics-v2.wasm`). So whoever controls the plugins directory and the
//! host config decides which plugin a file is: a file that calls itself another plugin's name
//! (an impostor, or a copy under a new name) is refused, whatever the order files are read in,
//! and cannot take that plugin's events or tables.
//!
//! A canary (a file whose settings have `[rollout]`, see `rollout`) may also be named
//! `<plugin>.<label>.wasm` — `orders.v2.wasm` is a candidate version of `orders` — the
//! directory's owner says so by the name, as with a binding.

use std::path::Path;

use anyhow::{Result, bail};

/// The name `path` must have: the host config's binding, else its stem.
pub fn expected_name(path: &Path, bound: Option<&str>) -> String {
    bound.map(str::to_string).unwrap_or_else(|| stem(path))
}

/// The plugin a canary's file names: `orders` for `orders.v2.wasm`.
pub fn canary_name(path: &Path) -> Option<String> {
    stem(path).split_once('.').map(|(name, _)| name.to_string()).filter(|n| !n.is_empty())
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Checks that the plugin in `path`, which calls itself `name`, is the plugin of that file.
pub fn check(path: &Path, name: &str, bound: Option<&str>) -> Result<()> {
    let stem = stem(path);
    match bound {
        None if name == stem => Ok(()),
        None => bail!(
            "{}: the plugin calls itself `{name}` but its file is `{stem}.wasm`; a plugin is known by its file's name, so that the plugins directory says which plugin is which (and whose events and tables it gets). Rename the file to `{name}.wasm`, or bind the name in the host config: [plugins.{stem}] name = \"{name}\"",
            path.display()
        ),
        Some(b) if b == name => Ok(()),
        Some(b) => bail!(
            "{}: the host config binds this file to the plugin `{b}` ([plugins.{stem}] name) but the plugin calls itself `{name}`",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_is_its_file_unless_the_host_config_says_otherwise() {
        let p = Path::new("/plugins/promo-code-analytics.wasm");
        assert!(check(p, "promo-code-analytics", None).is_ok());
        let impostor = Path::new("/plugins/a-impostor.wasm");
        let e = check(impostor, "promo-code-analytics", None).unwrap_err().to_string();
        assert!(e.contains("Rename the file to `promo-code-analytics.wasm`"), "{e}");
        assert!(e.contains("[plugins.a-impostor] name = \"promo-code-analytics\""), "{e}");
        let v2 = Path::new("/plugins/promo-code-analytics-v2.wasm");
        assert!(check(v2, "promo-code-analytics", Some("promo-code-analytics")).is_ok());
        assert!(check(v2, "other", Some("promo-code-analytics")).unwrap_err().to_string().contains("binds this file"));
        assert_eq!(expected_name(v2, None), "promo-code-analytics-v2");
        assert_eq!(canary_name(Path::new("/plugins/orders.v2.wasm")).as_deref(), Some("orders"));
        assert_eq!(canary_name(Path::new("/plugins/orders.wasm")), None);
    }
}
