//! The YARA engine: rule files loaded from disk, streamed content, errors that
//! name file and line. yara-x is a library, so these always run.

use std::path::Path;

use thinagent_scanner::engine::yara::{YaraEngine, YaraLoadError, is_yara_rule_file};
use thinagent_scanner::engine::{Engine, EngineError};

const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

const RULES: &str = r#"
rule ThinAgent_Test_Eicar {
    meta:
        description = "EICAR test file"
    strings:
        $eicar = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE"
    condition:
        $eicar at 28
}

rule ThinAgent_Test_Hex {
    strings:
        $h = { DE AD BE EF ?? 7A 7A [2-4] C0 FF EE }
    condition:
        $h
}

rule ThinAgent_Test_Small_MZ {
    condition:
        uint16(0) == 0x5A4D and filesize < 1KB
}
"#;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Feeds `data` in chunks of `chunk` bytes; returns the threat name.
fn scan(engine: &YaraEngine, data: &[u8], chunk: usize) -> Result<Option<String>, EngineError> {
    let mut s = engine.start(data.len() as u64);
    for piece in data.chunks(chunk.max(1)) {
        assert_eq!(s.update(piece)?, None, "YARA answers at finish");
    }
    Ok(s.finish()?.map(|d| {
        assert_eq!(d.engine, "yara");
        d.threat
    }))
}

fn filler(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ 0x55).collect()
}

#[test]
fn rules_from_files_detect_across_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "test.yar", RULES);
    let engine = YaraEngine::from_files(&[f]).unwrap();
    assert_eq!(engine.rule_count(), 3);
    assert_eq!(engine.name(), "yara");

    for chunk in [1, 5, 64, 4096] {
        assert_eq!(
            scan(&engine, EICAR, chunk).unwrap().as_deref(),
            Some("ThinAgent_Test_Eicar"),
            "chunk {chunk}"
        );
    }

    // Hex pattern with wildcard and jump, split across 4 KiB chunks.
    let mut data = filler(100_000);
    let at = 8192 - 5;
    data[at..at + 12].copy_from_slice(&[
        0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0x7A, 0x7A, 0x11, 0x22, 0xC0, 0xFF, 0xEE,
    ]);
    assert_eq!(
        scan(&engine, &data, 4096).unwrap().as_deref(),
        Some("ThinAgent_Test_Hex")
    );

    // Condition on content and filesize: needs the whole file.
    let mut mz = vec![0u8; 600];
    mz[0] = b'M';
    mz[1] = b'Z';
    assert_eq!(
        scan(&engine, &mz, 100).unwrap().as_deref(),
        Some("ThinAgent_Test_Small_MZ")
    );
    let mut big_mz = vec![0u8; 2048];
    big_mz[..2].copy_from_slice(b"MZ");
    assert_eq!(scan(&engine, &big_mz, 100).unwrap(), None);

    // Clean content, and EICAR at the wrong offset.
    assert_eq!(scan(&engine, &filler(50_000), 4096).unwrap(), None);
    let mut shifted = b"x".to_vec();
    shifted.extend_from_slice(EICAR);
    assert_eq!(scan(&engine, &shifted, 16).unwrap(), None);
    assert_eq!(scan(&engine, b"", 1).unwrap(), None);
}

#[test]
fn modules_are_available() {
    let engine = YaraEngine::from_source(
        r#"
        import "hash"
        import "pe"
        import "math"
        rule Hash_Of_Eicar {
            condition: hash.md5(0, filesize) == "44d88612fea8a8f36de82e1278abb02f"
        }
        rule Never_A_Pe { condition: pe.is_pe and math.entropy(0, filesize) > 9 }
        "#,
    )
    .unwrap();
    assert_eq!(
        scan(&engine, EICAR, 10).unwrap().as_deref(),
        Some("Hash_Of_Eicar")
    );
}

#[test]
fn counting_conditions_see_every_match() {
    // The engine scans in yara-x's fast mode; patterns whose count or
    // offsets a condition uses must still be matched in full.
    let engine = YaraEngine::from_source(
        r#"rule Three_Markers { strings: $a = "zz-marker" condition: #a >= 3 and @a[3] == 20 }"#,
    )
    .unwrap();
    assert_eq!(
        scan(&engine, b"zz-marker zz-marker ........", 4).unwrap(),
        None
    );
    assert_eq!(
        scan(&engine, b"zz-marker zz-marker zz-marker", 4)
            .unwrap()
            .as_deref(),
        Some("Three_Markers")
    );
}

#[test]
fn files_get_their_own_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.yar",
        r#"rule Same { strings: $a = "alpha-marker" condition: $a }"#,
    );
    let b = write(
        dir.path(),
        "b.yara",
        r#"rule Same { strings: $b = "beta-marker" condition: $b }"#,
    );
    let engine = YaraEngine::from_files(&[a, b]).unwrap();
    assert_eq!(engine.rule_count(), 2);
    assert_eq!(
        scan(&engine, b"...beta-marker...", 4).unwrap().as_deref(),
        Some("Same")
    );
    assert!(is_yara_rule_file(Path::new("x.YAR")));
}

#[test]
fn syntax_error_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.yar", RULES);
    let bad = write(
        dir.path(),
        "bad.yar",
        "rule fine { condition: true }\n\nrule broken {\n    strings:\n        $a = \"x\"\n    condition:\n        $a and and\n}\n",
    );
    let err = YaraEngine::from_files(&[good, bad.clone()]).unwrap_err();
    match &err {
        YaraLoadError::Compile {
            path,
            line,
            message,
            ..
        } => {
            assert_eq!(path, &bad);
            assert_eq!(*line, 7, "{err}");
            assert!(!message.is_empty());
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.starts_with(&format!("{}:7:", bad.display())), "{text}");

    // A semantic error (unknown identifier) is located too.
    let unknown = write(
        dir.path(),
        "unknown.yar",
        "rule r {\n  condition:\n    nosuchthing\n}\n",
    );
    let err = YaraEngine::from_files(&[unknown]).unwrap_err();
    assert_eq!(err.line(), Some(3), "{err}");
}

#[test]
fn unreadable_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yar");
    let err = YaraEngine::from_files(&[&missing]).unwrap_err();
    assert!(matches!(err, YaraLoadError::Io { .. }));
    assert_eq!(err.path(), missing);
    assert!(err.to_string().contains("missing.yar"), "{err}");
}

#[test]
fn content_beyond_max_size_is_refused() {
    let engine = YaraEngine::from_source(RULES).unwrap().with_max_size(1000);
    // Announced too large.
    let s = engine.start(1001);
    assert!(matches!(
        s.finish(),
        Err(EngineError::Refused { engine: "yara", .. })
    ));
    // Announced small, but grows past the limit while streaming.
    let mut s = engine.start(10);
    s.update(&[0u8; 600]).unwrap();
    assert!(matches!(
        s.update(&[0u8; 600]),
        Err(EngineError::Refused { .. })
    ));
    assert!(s.finish().is_err());
    // Exactly at the limit is scanned.
    let mut data = vec![b' '; 1000];
    data[..EICAR.len()].copy_from_slice(EICAR);
    assert_eq!(
        scan(&engine, &data, 300).unwrap().as_deref(),
        Some("ThinAgent_Test_Eicar")
    );
}

#[test]
fn engine_is_shared_across_threads() {
    let engine = YaraEngine::from_source(RULES).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let engine = &engine;
            s.spawn(move || {
                for i in 0..20 {
                    let infected = (t + i) % 3 == 0;
                    let data = if infected {
                        EICAR.to_vec()
                    } else {
                        filler(5000 + i)
                    };
                    assert_eq!(scan(engine, &data, 512).unwrap().is_some(), infected);
                }
            });
        }
    });
}
