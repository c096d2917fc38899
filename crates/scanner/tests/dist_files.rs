//! The files under dist/ match the code: the sample config parses, validates
//! and equals the built-in defaults; the systemd unit reloads with SIGHUP.

use std::path::Path;

use thinagent_scanner::config::Config;

fn dist(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(name)
}

#[test]
fn sample_config_loads_validates_and_documents_the_defaults() {
    let path = dist("thinagent-scanner.toml");
    let c = Config::load(&path).unwrap();
    c.validate().unwrap();
    // Every value written in the sample is the default: the sample cannot
    // drift from the code silently.
    assert_eq!(c, Config::default());
    // And it mentions every key of every section.
    let text = std::fs::read_to_string(&path).unwrap();
    let value = toml::Value::try_from(Config::default()).unwrap();
    for (key, v) in value.as_table().unwrap() {
        assert!(text.contains(key.as_str()), "sample config lacks {key}");
        if let Some(t) = v.as_table() {
            for sub in t.keys() {
                assert!(
                    text.contains(&format!("\n{sub} =")),
                    "sample config lacks {key}.{sub}"
                );
            }
        }
    }
}

#[test]
fn systemd_unit_reloads_with_hup_and_checks_config() {
    let text = std::fs::read_to_string(dist("thinagent-scanner.service")).unwrap();
    assert!(text.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(text.contains("--check-config"));
    assert!(text.contains("NoNewPrivileges=yes"));
    assert!(text.contains("RestrictAddressFamilies=AF_VSOCK"));
}
