//! Protocol version 2 end to end: the agent binary on a tmpfs this test
//! mounts, against a scripted scanner ([`common::ScriptedHost`]) that logs
//! every `FileEvent` and `ReadRequest`. Small files go to the scanner whole
//! with their event and come back without a single read; larger ones carry
//! their first bytes and are read for the rest; a version-1 scanner and
//! `--no-inline` get the version-1 behaviour; on a block-device file system
//! only what the page cache holds is read with the event. Skips when not
//! root or without fanotify permission events (and the block-device test
//! without loop devices).

use crate::common;

use std::time::Duration;

use common::{
    Agent, EICAR, EPERM, ScriptedHost, base_args, eventually, final_stat, read, setup, state_dir,
};

/// `INLINE_CONTENT` in `Hello.capabilities`.
const INLINE_CONTENT: u64 = 1 << 4;
/// The reference host's (and the protocol's) largest `max_inline_len`.
const MAX_INLINE: u32 = 65_447;

/// Starts the agent and waits until its session with `host` is open (the
/// ready file only says the first connect attempt finished).
fn agent_connected(state: &std::path::Path, args: &[&str]) -> Agent {
    let agent = Agent::start(state, args);
    assert!(
        eventually(Duration::from_secs(10), || agent
            .log_text()
            .contains("session with the scanner open")),
        "no session:\n{}",
        agent.log_text()
    );
    agent
}

#[test]
fn small_files_go_inline_whole_eicar_denied_clean_allowed_without_reads() {
    let Some(mnt) = setup("small_files_go_inline") else {
        return;
    };
    let state = state_dir();
    let host = ScriptedHost::start(2, MAX_INLINE);
    let eicar = mnt.join("eicar.com");
    let clean = mnt.join("clean.txt");
    let empty = mnt.join("empty");
    let page = mnt.join("page.bin");
    let page_bytes: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&eicar, EICAR).unwrap();
    std::fs::write(&clean, b"just a clean text file\n").unwrap();
    std::fs::write(&empty, b"").unwrap();
    std::fs::write(&page, &page_bytes).unwrap();
    let watch = mnt.path().to_str().unwrap();
    let mut agent = agent_connected(state.path(), &base_args(&host.url, watch));

    assert_eq!(read(&eicar), Err(EPERM), "EICAR sent inline is denied");
    assert_eq!(read(&clean).unwrap(), b"just a clean text file\n");
    assert_eq!(read(&empty).unwrap(), b"");
    assert_eq!(read(&page).unwrap(), page_bytes);

    let log = host.log();
    let (min, max, caps) = log.hellos[0];
    assert_eq!((min, max), (1, 2), "the agent offers versions 1..2");
    assert!(caps & INLINE_CONTENT != 0, "and INLINE_CONTENT");
    assert_eq!(log.chosen, [2]);
    for (name, size) in [
        ("eicar.com", EICAR.len()),
        ("clean.txt", 23),
        ("empty", 0),
        ("page.bin", 4096),
    ] {
        let events = log.events_of(name);
        assert_eq!(events.len(), 1, "{name}: one event: {log:?}");
        let e = &events[0];
        assert_eq!(
            (e.version, e.content_len, e.whole_file, e.file_size),
            (2, size, true, size as u64),
            "{name}: the whole file inline in a version-2 frame"
        );
        assert_eq!(log.reads_of(name), 0, "{name}: no ReadRequest");
    }
    assert!(
        log.verdicts
            .contains(&(eicar.to_str().unwrap().into(), true))
    );

    let st = agent.terminate();
    assert!(st.success(), "{st}");
    let text = agent.log_text();
    assert!(
        text.contains("protocol v2, files up to 65447 bytes sent with their event"),
        "{text}"
    );
    assert_eq!(final_stat(&text, "inline_whole"), 4, "{text}");
    assert_eq!(final_stat(&text, "inline_partial"), 0);
    assert_eq!(final_stat(&text, "reads"), 0, "no read served");
    assert_eq!(final_stat(&text, "denied_by_scanner"), 1);
}

#[test]
fn a_200_kib_file_sends_its_first_bytes_and_is_read_for_the_rest() {
    let Some(mnt) = setup("a_200_kib_file_partial_inline") else {
        return;
    };
    let state = state_dir();
    let host = ScriptedHost::start(2, MAX_INLINE);
    let clean = mnt.join("big-clean.bin");
    let bad = mnt.join("big-bad.bin");
    let mut bytes: Vec<u8> = (0..200 * 1024u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(&clean, &bytes).unwrap();
    // EICAR far past the inline part: only the reads can find it.
    let at = 150 * 1024;
    bytes[at..at + EICAR.len()].copy_from_slice(EICAR);
    std::fs::write(&bad, &bytes).unwrap();
    let watch = mnt.path().to_str().unwrap();
    let mut agent = agent_connected(state.path(), &base_args(&host.url, watch));

    assert_eq!(read(&clean).unwrap().len(), 200 * 1024);
    assert_eq!(read(&bad), Err(EPERM), "EICAR past the inline bytes found");

    let log = host.log();
    for name in ["big-clean.bin", "big-bad.bin"] {
        let e = &log.events_of(name)[0];
        // max_inline_len, less what the path takes beyond one byte: the
        // frame must fit 65 536 bytes (24 + 64 + path + content).
        let inline = (MAX_INLINE as usize).min(65_536 - 24 - 64 - e.path.len());
        assert_eq!(
            (e.version, e.content_len, e.whole_file, e.file_size),
            (2, inline, false, 200 * 1024),
            "{name}: the first bytes, as many as fit"
        );
        // The other ~139 400 bytes in reads of up to 65 480: three reads,
        // the last one ending the file (EndOfFile with its bytes).
        assert_eq!(log.reads_of(name), 3, "{name}: {log:?}");
    }
    let st = agent.terminate();
    assert!(st.success(), "{st}");
    let text = agent.log_text();
    assert_eq!(final_stat(&text, "inline_partial"), 2, "{text}");
    assert_eq!(final_stat(&text, "inline_whole"), 0);
    assert_eq!(final_stat(&text, "reads"), 6);
}

#[test]
fn a_version_1_scanner_gets_version_1_events_and_reads() {
    let Some(mnt) = setup("a_version_1_scanner") else {
        return;
    };
    let state = state_dir();
    let host = ScriptedHost::start(1, 0);
    let eicar = mnt.join("eicar.com");
    let clean = mnt.join("clean.txt");
    std::fs::write(&eicar, EICAR).unwrap();
    std::fs::write(&clean, b"clean\n").unwrap();
    let watch = mnt.path().to_str().unwrap();
    let mut agent = agent_connected(state.path(), &base_args(&host.url, watch));

    assert_eq!(read(&eicar), Err(EPERM));
    assert_eq!(read(&clean).unwrap(), b"clean\n");
    let log = host.log();
    assert_eq!(log.chosen, [1]);
    for name in ["eicar.com", "clean.txt"] {
        let e = &log.events_of(name)[0];
        assert_eq!((e.version, e.content_len, e.whole_file), (1, 0, false));
        assert_eq!(log.reads_of(name), 1, "{name}: read on request");
    }
    let st = agent.terminate();
    assert!(st.success(), "{st}");
    let text = agent.log_text();
    assert!(text.contains("(protocol v1)"), "{text}");
    assert_eq!(final_stat(&text, "inline_whole"), 0);
    assert_eq!(final_stat(&text, "reads"), 2);
}

#[test]
fn no_inline_keeps_the_version_1_behaviour_with_a_version_2_scanner() {
    let Some(mnt) = setup("no_inline_flag") else {
        return;
    };
    let state = state_dir();
    let host = ScriptedHost::start(2, MAX_INLINE);
    let eicar = mnt.join("eicar.com");
    std::fs::write(&eicar, EICAR).unwrap();
    let watch = mnt.path().to_str().unwrap();
    let mut args = base_args(&host.url, watch);
    args.push("--no-inline");
    let mut agent = agent_connected(state.path(), &args);

    assert_eq!(read(&eicar), Err(EPERM));
    let log = host.log();
    assert_eq!(
        log.hellos[0].2 & INLINE_CONTENT,
        0,
        "INLINE_CONTENT not announced"
    );
    let e = &log.events_of("eicar.com")[0];
    assert_eq!((e.version, e.content_len, e.whole_file), (2, 0, false));
    assert_eq!(log.reads_of("eicar.com"), 1);
    let st = agent.terminate();
    assert!(st.success(), "{st}");
    assert_eq!(final_stat(&agent.log_text(), "reads"), 1);
}

/// An ext4 file system on a loop device (its image on the test's tmpfs),
/// mounted on `dir`; unmounted on drop.
struct Ext4 {
    image: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Ext4 {
    /// Makes and mounts it, or says why the test must be skipped.
    fn make(test: &str, image: std::path::PathBuf, dir: std::path::PathBuf) -> Option<Ext4> {
        std::fs::create_dir_all(&dir).unwrap();
        let run = |cmd: &mut std::process::Command| match cmd.output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(e.to_string()),
        };
        let made = run(std::process::Command::new("truncate")
            .args(["-s", "16M"])
            .arg(&image))
        .and_then(|()| {
            run(std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&image))
        });
        if let Err(e) = made {
            eprintln!("SKIP {test}: cannot make an ext4 image (mkfs.ext4): {e}");
            return None;
        }
        let fs = Ext4 { image, dir };
        if let Err(e) = fs.mount() {
            eprintln!("SKIP {test}: cannot mount an ext4 image on a loop device: {e}");
            return None;
        }
        Some(fs)
    }

    fn mount(&self) -> Result<(), String> {
        let o = std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&self.image)
            .arg(&self.dir)
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
        }
    }

    /// Unmounts and mounts again: nothing of it is in the page cache after.
    fn remount(&self) {
        let st = std::process::Command::new("umount")
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "umount {}", self.dir.display());
        self.mount().unwrap();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

#[test]
fn on_a_block_device_only_bytes_in_the_page_cache_go_with_the_event() {
    let test = "block_device_page_cache_only";
    let Some(mnt) = setup(test) else {
        return;
    };
    let Some(fs) = Ext4::make(test, mnt.join("ext4.img"), mnt.join("ext4")) else {
        return;
    };
    let cold = fs.dir.join("cold.bin");
    let warm = fs.dir.join("warm.bin");
    let bad = fs.dir.join("bad.com");
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&cold, &bytes).unwrap();
    std::fs::write(&warm, &bytes[..3000]).unwrap();
    std::fs::write(&bad, EICAR).unwrap();
    // Nothing of the file system in the page cache, then warm.bin read back
    // in (before the agent runs: that read is not checked).
    fs.remount();
    assert_eq!(std::fs::read(&warm).unwrap(), bytes[..3000]);
    let state = state_dir();
    let host = ScriptedHost::start(2, MAX_INLINE);
    let watch = fs.dir.to_str().unwrap();
    let mut agent = agent_connected(state.path(), &base_args(&host.url, watch));

    assert_eq!(read(&warm).unwrap(), bytes[..3000]);
    assert_eq!(
        read(&cold).unwrap(),
        bytes,
        "a file from the disk still opens"
    );
    assert_eq!(
        read(&bad),
        Err(EPERM),
        "and one from the disk is still judged"
    );

    let log = host.log();
    let w = &log.events_of("warm.bin")[0];
    assert_eq!(
        (w.content_len, w.whole_file, log.reads_of("warm.bin")),
        (3000, true, 0),
        "in the page cache: whole with its event: {log:?}"
    );
    for name in ["cold.bin", "bad.com"] {
        let e = &log.events_of(name)[0];
        assert_eq!(
            (e.version, e.content_len, e.whole_file),
            (2, 0, false),
            "{name}: would have waited for the disk: nothing read with the event"
        );
        assert_eq!(log.reads_of(name), 1, "{name}: read on request: {log:?}");
    }
    let st = agent.terminate();
    assert!(st.success(), "{st}");
    let text = agent.log_text();
    assert_eq!(final_stat(&text, "inline_whole"), 1, "{text}");
    assert_eq!(final_stat(&text, "reads"), 2, "{text}");
}
