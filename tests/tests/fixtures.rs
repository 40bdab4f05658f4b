//! `sluice plugin test`: the first-party plugins' fixtures pass, and a fixture that does not
//! match fails with a readable difference and a non-zero exit.

use anyhow::Result;
use serde_json::Value;
use sluice_tests::{plugins_dir, repo_root, sluice};

#[test]
fn the_first_party_plugins_pass_their_fixtures() -> Result<()> {
    for plugin in ["promo-code-analytics", "order-analytics", "user-stats"] {
        let wasm = plugins_dir().join(format!("{plugin}.wasm")).display().to_string();
        let fixtures = repo_root().join("plugins").join(plugin).join("fixtures").display().to_string();
        let out = sluice(&["plugin", "test", &wasm, "--fixtures", &fixtures], &[])?;
        assert!(out.contains(", 0 failed"), "{out}");
        assert!(!out.contains("FAIL"), "{out}");
    }
    Ok(())
}

#[test]
fn a_fixture_that_does_not_match_prints_what_differs_and_fails() -> Result<()> {
    let original = repo_root().join("plugins/order-analytics/fixtures/orders.json");
    let mut fixture: Value = serde_json::from_str(&std::fs::read_to_string(original)?)?;
    let expect = fixture["expect"].as_array_mut().unwrap();
    expect[0]["row"]["amount"] = serde_json::json!(42.0);
    expect[0]["row"]["coupon"] = serde_json::json!("none");
    expect[2]["message_contains"] = serde_json::json!("missing field `orderId`");
    expect.push(serde_json::json!({"event": 2, "table": "orders_analytics", "row": {}}));
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("wrong.json");
    std::fs::write(&path, serde_json::to_string_pretty(&fixture)?)?;
    let wasm = plugins_dir().join("order-analytics.wasm").display().to_string();
    let err = sluice(&["plugin", "test", &wasm, "--fixtures", &path.display().to_string()], &[])
        .expect_err("a wrong fixture must fail")
        .to_string();
    for needle in [
        "FAIL ",
        "item 0 (event 0):",
        "amount: expected 42.0, got 42.5",
        "coupon: expected \"none\", but the table has no such column",
        "message does not contain \"missing field `orderId`\"",
        "item 3: missing:",
        "1 fixtures: 0 passed, 1 failed (order-analytics)",
    ] {
        assert!(err.contains(needle), "`{needle}` not in:\n{err}");
    }
    Ok(())
}

/// `sluice plugin new demo --lang <lang>`, then the build and test commands it printed, run
/// as printed (with `sluice` on PATH): the project builds, its unit test passes, and its
/// fixture passes against the built component.
fn a_new_project_builds_and_passes_its_tests_as_printed(lang: &str, unit_test_passed: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let printed = sluice(&["plugin", "new", "demo", "--lang", lang, "--dir", &dir.path().display().to_string()], &[])?;
    let line = |prefix: &str| -> String {
        let l = printed
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {printed}"));
        l.trim().to_string()
    };
    let (build, test) = (line("build:"), line("test:"));
    assert!(test.contains("sluice plugin test") && test.contains("--fixtures fixtures"), "{printed}");
    // `sluice` and (when the system's is too old) the Node.js 20 of scripts/plugin-toolchains.sh.
    let mut path = vec![sluice_tests::sluice_bin().parent().unwrap().to_path_buf()];
    path.push(repo_root().join("target/tools/node/bin"));
    path.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    let run = |cwd: &std::path::Path, script: &str| -> Result<String> {
        let out = std::process::Command::new("timeout")
            .args(["900", "sh", "-c", script])
            .current_dir(cwd)
            .env("PATH", std::env::join_paths(&path)?)
            .env_remove("CARGO_TARGET_DIR")
            .output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        anyhow::ensure!(out.status.success(), "`{script}` failed:\n{text}");
        Ok(text)
    };
    assert!(build.ends_with("plugin build"), "one build command in every language: {printed}");
    let built = run(dir.path(), &build)?;
    // The last line on stdout is the component's path.
    assert!(
        built.lines().any(|l| l.ends_with(".wasm") && std::path::Path::new(l).is_file()),
        "no built component named:\n{built}"
    );
    let out = run(&dir.path().join("demo"), &test)?;
    assert!(out.contains(unit_test_passed), "the unit test did not run:\n{out}");
    assert!(out.contains("1 fixtures: 1 passed, 0 failed (demo)"), "{out}");

    // `plugin dev`, one round: build, fixtures, then the component lands in the plugins
    // directory under the plugin's name; with a fixture failing, nothing lands.
    let plugins = dir.path().join("plugins");
    let dev = format!("sluice plugin dev --once --plugins-dir '{}'", plugins.display());
    let out = run(&dir.path().join("demo"), &dev)?;
    assert!(plugins.join("demo.wasm").is_file() && out.contains("deployed"), "{out}");
    std::fs::remove_file(plugins.join("demo.wasm"))?;
    let fixture = dir.path().join("demo/fixtures/example.json");
    std::fs::write(
        &fixture,
        std::fs::read_to_string(&fixture)?
            .replace("\"x1\", \"amount\": 12.5, \"note\"", "\"x9\", \"amount\": 12.5, \"note\""),
    )?;
    let failed = run(&dir.path().join("demo"), &dev).unwrap_err().to_string();
    assert!(failed.contains("fixtures failed: nothing deployed"), "{failed}");
    assert!(std::fs::read_dir(&plugins)?.next().is_none(), "a failing version was deployed");
    Ok(())
}

#[test]
fn a_new_rust_plugin_project_builds_tests_and_passes_its_fixture_on_first_try() -> Result<()> {
    a_new_project_builds_and_passes_its_tests_as_printed("rust", "1 passed")?;
    // Names that cannot name consumer groups, and existing directories, are refused.
    let dir = tempfile::tempdir()?;
    let bad = sluice(&["plugin", "new", "Bad_Name", "--dir", &dir.path().display().to_string()], &[]).unwrap_err();
    assert!(bad.to_string().contains("use lower-case letters, digits and `-`"), "{bad}");
    sluice(&["plugin", "new", "demo", "--dir", &dir.path().display().to_string()], &[])?;
    let again = sluice(&["plugin", "new", "demo", "--dir", &dir.path().display().to_string()], &[]).unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
    // The host's own prefix is refused at `new`, not at load.
    let ours = sluice(&["plugin", "new", "sluice", "--dir", &dir.path().display().to_string()], &[]).unwrap_err();
    assert!(ours.to_string().contains("names starting with `sluice` are the host's own"), "{ours}");
    assert!(!dir.path().join("sluice").exists());
    Ok(())
}

/// The tools end quietly when their output is piped into `head`: no panic, no exit 101.
#[test]
fn output_piped_into_head_ends_quietly() -> Result<()> {
    let wasm = plugins_dir().join("user-stats.wasm").display().to_string();
    let script = format!(
        "'{}' plugin inspect '{wasm}' | head -c 20 >/dev/null; echo \"status=${{PIPESTATUS[0]}}\"",
        sluice_tests::sluice_bin().display()
    );
    let out = std::process::Command::new("bash").args(["-c", &script]).output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    assert!(!stdout.contains("status=101"), "{stdout}");
    Ok(())
}

#[test]
fn a_new_python_plugin_project_builds_tests_and_passes_its_fixture_on_first_try() -> Result<()> {
    a_new_project_builds_and_passes_its_tests_as_printed("python", "Ran 1 test")
}

#[test]
fn a_new_javascript_plugin_project_builds_tests_and_passes_its_fixture_on_first_try() -> Result<()> {
    a_new_project_builds_and_passes_its_tests_as_printed("js", "# pass 1")
}

#[test]
fn a_new_typescript_plugin_project_builds_tests_and_passes_its_fixture_on_first_try() -> Result<()> {
    a_new_project_builds_and_passes_its_tests_as_printed("ts", "# pass 1")
}

/// `sluice plugin run` on plugins that sleep in a host call, return rows nested far deeper than
/// any stack, open a socket or recurse without end: each event fails with its reason within the
/// plugin's deadline, and the command exits 1 — never a panic (exit 101) or a ten-minute wait.
#[test]
fn plugin_run_bounds_what_a_hostile_plugin_does_to_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let wasm = dir.path().join("hostile.wasm");
    std::fs::copy(sluice_tests::test_plugin("hostile"), &wasm)?;
    std::fs::write(dir.path().join("hostile.toml"), "[limits]\ncall_timeout_ms = 700\n")?;
    for (action, needle) in [
        ("sleep", "deadline of 700ms exceeded (call_timeout) while the plugin waited in a host call"),
        ("deep", "column `s`: expected String, got array of 1"),
        ("udp", "udp: Err("),
        ("recurse", "stack overflow"),
        ("loop", "deadline of 700ms exceeded (call_timeout)"),
    ] {
        let events = dir.path().join("events.json");
        std::fs::write(&events, format!(r#"{{"type": "hostile.event", "payload": {{"k": 1, "do": "{action}"}}}}"#))?;
        let started = std::time::Instant::now();
        let out = std::process::Command::new("timeout")
            .arg("60")
            .arg(sluice_tests::sluice_bin())
            .args(["plugin", "run", &wasm.display().to_string(), "--event", &events.display().to_string()])
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{action}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(needle), "{action}: `{needle}` not in {stdout}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{action} took {:?}", started.elapsed());
    }
    Ok(())
}
