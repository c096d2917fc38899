//! The guest, path and file identity as JSON, shared by the quarantine
//! store's metadata ([`crate::quarantine`]) and the event sink
//! ([`crate::events`]), so both describe a guest and a file the same way.
//!
//! * [`GuestRecord`]: `peer` is the identity the transport vouches for
//!   (`vsock:CID`, `tls:SUBJECT`, `tcp:IP`, `unix:PATH:uid=U`, see
//!   [`PeerIdentity`](crate::connection::PeerIdentity)), `address` the
//!   connection's address; `name`, `os` and `agent_version` are what the
//!   guest announced in `Hello` (labels, not proof).
//! * [`PathRecord`]: the path exactly as the guest sent it (`encoding`
//!   `utf8`, `utf16le` or `bytes`, and `hex`: the UTF-8 bytes, the UTF-16LE
//!   code units as little-endian bytes, or the raw POSIX bytes), plus a
//!   lossy `display` string for people (invalid sequences as U+FFFD). The
//!   `hex` form round-trips a Windows path with an unpaired surrogate or a
//!   Linux name that is not UTF-8, which `display` cannot.
//! * [`FileRecord`]: the protocol's `FileIdentity` (`file_id` as 32 hex
//!   digits, bytes in wire order; `last_write_time` as a Windows FILETIME).

use serde::{Deserialize, Serialize};
use thinagent_protocol::{FileIdentity, OsKind};

use crate::connection::GuestId;
use crate::session::{GuestInfo, GuestPath};

/// A guest, as the transport identifies it and as it announced itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRecord {
    /// The transport identity (`vsock:3`, `tls:CN=vm1`, `tcp:127.0.0.1`).
    pub peer: String,
    /// The connection's address (`vsock://3:1025`, `tcp://127.0.0.1:40000`).
    pub address: String,
    /// The name announced in `Hello` (may be empty; not authenticated).
    pub name: String,
    /// `windows` or `linux`.
    pub os: String,
    /// Agent version announced in `Hello` (`1.2.3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Negotiated protocol version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u16>,
}

impl GuestRecord {
    /// The record of a connected guest.
    pub fn new(guest: &GuestId, info: &GuestInfo) -> Self {
        let v = info.agent_version;
        Self {
            peer: guest.peer().to_string(),
            address: guest.to_string(),
            name: info.name.clone(),
            os: os_name(info.os),
            agent_version: Some(format!("{}.{}.{}", v.major, v.minor, v.patch)),
            protocol_version: Some(info.version),
        }
    }
}

/// `windows`, `linux`.
pub fn os_name(os: OsKind) -> String {
    match os {
        OsKind::Windows => "windows".into(),
        OsKind::Linux => "linux".into(),
    }
}

/// A path as the guest sent it, and as text for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRecord {
    /// `utf8`, `utf16le` or `bytes`.
    pub encoding: String,
    /// The path's bytes in that encoding, hex.
    pub hex: String,
    /// Lossy text (invalid sequences as U+FFFD).
    pub display: String,
}

impl From<&GuestPath> for PathRecord {
    fn from(path: &GuestPath) -> Self {
        let (encoding, bytes): (&str, Vec<u8>) = match path {
            GuestPath::Utf8(s) => ("utf8", s.as_bytes().to_vec()),
            GuestPath::Utf16(units) => (
                "utf16le",
                units.iter().flat_map(|u| u.to_le_bytes()).collect(),
            ),
            GuestPath::Bytes(b) => ("bytes", b.clone()),
        };
        Self {
            encoding: encoding.into(),
            hex: hex(&bytes),
            display: path.to_string_lossy(),
        }
    }
}

impl PathRecord {
    /// The path back in its original encoding; `None` if the record is not
    /// one [`From<&GuestPath>`] made (unknown encoding, bad hex).
    pub fn guest_path(&self) -> Option<GuestPath> {
        let bytes = unhex(&self.hex)?;
        match self.encoding.as_str() {
            "utf8" => String::from_utf8(bytes).ok().map(GuestPath::Utf8),
            "utf16le" if bytes.len() % 2 == 0 => Some(GuestPath::Utf16(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            )),
            "bytes" => Some(GuestPath::Bytes(bytes)),
            _ => None,
        }
    }
}

/// The protocol's `FileIdentity` as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Volume serial (Windows) or `st_dev` (Linux).
    pub volume_serial: u64,
    /// 128-bit file id, 32 hex digits in wire byte order.
    #[serde(with = "hex16")]
    pub file_id: [u8; 16],
    /// Size when the event was raised.
    pub size: u64,
    /// Last write time, Windows FILETIME (100 ns since 1601-01-01 UTC).
    pub last_write_time: u64,
}

impl From<&FileIdentity> for FileRecord {
    fn from(f: &FileIdentity) -> Self {
        Self {
            volume_serial: f.volume_serial,
            file_id: f.file_id,
            size: f.size,
            last_write_time: f.last_write_time,
        }
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Hex (either case) to bytes; `None` on an odd length or a non-hex digit.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

mod hex16 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let text = String::deserialize(d)?;
        super::unhex(&text)
            .and_then(|v| <[u8; 16]>::try_from(v).ok())
            .ok_or_else(|| serde::de::Error::custom("file_id: expected 32 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_in_their_encoding() {
        let paths = [
            GuestPath::Utf8("/tmp/é.txt".into()),
            // an unpaired surrogate: no UTF-8 text can hold it
            GuestPath::Utf16(vec![0x43, 0x3a, 0x5c, 0xd800, 0x61]),
            GuestPath::Bytes(vec![b'/', 0xff, 0xfe, b'x']),
        ];
        for p in paths {
            let r = PathRecord::from(&p);
            let json = serde_json::to_string(&r).unwrap();
            let back: PathRecord = serde_json::from_str(&json).unwrap();
            assert_eq!(back.guest_path(), Some(p.clone()), "{json}");
            assert_eq!(back.display, p.to_string_lossy());
        }
        let r = PathRecord::from(&GuestPath::Utf16(vec![0x41, 0xd800]));
        assert_eq!(r.encoding, "utf16le");
        assert_eq!(r.hex, "410000d8");
        assert_eq!(r.display, "A\u{fffd}");
    }

    #[test]
    fn file_identity_as_json() {
        let f = FileRecord {
            volume_serial: 7,
            file_id: [0xab; 16],
            size: 68,
            last_write_time: 133_000_000_000_000_000,
        };
        let json = serde_json::to_value(f).unwrap();
        assert_eq!(json["file_id"], "ab".repeat(16));
        let back: FileRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, f);
        assert!(
            serde_json::from_str::<FileRecord>(
                r#"{"volume_serial":1,"file_id":"abc","size":1,"last_write_time":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(hex(&[0, 0x0f, 0xff]), "000fff");
        assert_eq!(unhex("000FfF"), Some(vec![0, 0x0f, 0xff]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
