//! Test support: writes registry hive files (`regf`) from a [`RegKey`] tree.
//!
//! Used to build the empty base hive that `hivexregedit --merge` needs (so
//! the repository carries no binary hive), and hives that exercise the
//! reader's paths: format 1.3 `li` lists, `ri` indexes, `lh`/`lf` lists, `db`
//! big data, dirty sequence numbers.
//!
//! Layout: a 4096-byte base block, then one hive bin as large as needed
//! (any multiple of 4096 is valid) holding, in order, the root key, one
//! shared security (`sk`) cell, and the rest of the tree; the tail is one
//! free cell.

#![allow(dead_code)]

use thinagent_bootsim::registry::{RegKey, RegValue};

/// Which subkey list cells to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `lf` (hash = first four name characters), format 1.3+.
    Lf,
    /// `lh` (name hash), format 1.5.
    Lh,
    /// `li` (offsets only), what format 1.3 and older write.
    Li,
    /// An `ri` index over `li` lists of at most two entries each.
    Ri,
}

/// How to write a hive.
#[derive(Debug, Clone)]
pub struct HiveOptions {
    /// Minor format version (3 for NT 4/2000-style, 5 for XP and later).
    pub minor: u32,
    /// Subkey list kind.
    pub lists: ListKind,
    /// Write unequal sequence numbers (a dirty hive).
    pub dirty: bool,
    /// The root key's stored name.
    pub root_name: String,
}

impl Default for HiveOptions {
    fn default() -> Self {
        Self {
            minor: 5,
            lists: ListKind::Lh,
            dirty: false,
            root_name: "ROOT".into(),
        }
    }
}

/// The empty base hive: a root key and its security cell, nothing else.
pub fn empty_base_hive() -> Vec<u8> {
    write_hive(&RegKey::new("ROOT"), &HiveOptions::default())
}

/// Offset of the first cell (after the 32-byte hbin header).
const FIRST_CELL: u32 = 0x20;
const KEY_HIVE_ENTRY: u16 = 0x4;
const KEY_NO_DELETE: u16 = 0x8;
const KEY_COMP_NAME: u16 = 0x20;
const BIG_DATA_SEGMENT: usize = 16344;

struct Writer {
    /// Hive bins data (offset 0 = hive bins start).
    bins: Vec<u8>,
    sk: u32,
    opts: HiveOptions,
    keys: u32,
}

impl Writer {
    /// Allocates a cell for `data`; returns its offset.
    fn cell(&mut self, data: &[u8]) -> u32 {
        let off = self.bins.len() as u32;
        let size = (4 + data.len()).div_ceil(8) * 8;
        self.bins.extend_from_slice(&(-(size as i32)).to_le_bytes());
        self.bins.extend_from_slice(data);
        self.bins.resize(off as usize + size, 0);
        off
    }

    fn patch_u32(&mut self, cell: u32, at: usize, v: u32) {
        let p = cell as usize + 4 + at;
        self.bins[p..p + 4].copy_from_slice(&v.to_le_bytes());
    }
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// A name as stored: Latin-1 with the compressed flag if possible.
fn stored_name(s: &str) -> (Vec<u8>, bool) {
    if s.chars().all(|c| (c as u32) < 0x100) {
        (s.chars().map(|c| c as u8).collect(), true)
    } else {
        (utf16(s), false)
    }
}

/// A value's type and raw data as the configuration manager stores them.
pub fn raw_value(value: &RegValue) -> (u32, Vec<u8>) {
    let sz = |s: &str| {
        let mut b = utf16(s);
        b.extend([0, 0]);
        b
    };
    match value {
        RegValue::Sz(s) => (1, sz(s)),
        RegValue::ExpandSz(s) => (2, sz(s)),
        RegValue::Binary(b) => (3, b.clone()),
        RegValue::Dword(d) => (4, d.to_le_bytes().to_vec()),
        RegValue::MultiSz(v) => {
            let mut b: Vec<u8> = v.iter().flat_map(|s| sz(s)).collect();
            b.extend([0, 0]);
            (7, b)
        }
        RegValue::Qword(q) => (11, q.to_le_bytes().to_vec()),
        RegValue::Other { kind, data } => (*kind, data.clone()),
    }
}

fn lh_hash(name: &str) -> u32 {
    name.to_uppercase()
        .encode_utf16()
        .fold(0u32, |h, c| h.wrapping_mul(37).wrapping_add(u32::from(c)))
}

fn lf_hash(name: &str) -> u32 {
    let mut h = [0u8; 4];
    for (i, c) in name.chars().take(4).enumerate() {
        h[i] = if (c as u32) < 0x80 { c as u8 } else { 0 };
    }
    u32::from_le_bytes(h)
}

impl Writer {
    fn value(&mut self, name: &str, value: &RegValue) -> u32 {
        let (kind, data) = raw_value(value);
        let (size_field, data_field) = if data.len() <= 4 {
            let mut inline = [0u8; 4];
            inline[..data.len()].copy_from_slice(&data);
            (0x8000_0000 | data.len() as u32, u32::from_le_bytes(inline))
        } else if data.len() > BIG_DATA_SEGMENT && self.opts.minor >= 4 {
            let segments: Vec<u32> = data
                .chunks(BIG_DATA_SEGMENT)
                .map(|c| self.cell(c))
                .collect();
            let list: Vec<u8> = segments.iter().flat_map(|s| s.to_le_bytes()).collect();
            let list = self.cell(&list);
            let mut db = b"db".to_vec();
            db.extend((segments.len() as u16).to_le_bytes());
            db.extend(list.to_le_bytes());
            (data.len() as u32, self.cell(&db))
        } else {
            (data.len() as u32, self.cell(&data))
        };
        let (name_bytes, compressed) = stored_name(name);
        let mut vk = b"vk".to_vec();
        vk.extend((name_bytes.len() as u16).to_le_bytes());
        vk.extend(size_field.to_le_bytes());
        vk.extend(data_field.to_le_bytes());
        vk.extend(kind.to_le_bytes());
        vk.extend(u16::from(compressed).to_le_bytes());
        vk.extend(0u16.to_le_bytes());
        vk.extend(name_bytes);
        self.cell(&vk)
    }

    /// Writes `key` (and its tree) under `parent`; returns the nk offset.
    fn key(&mut self, key: &RegKey, name: &str, parent: u32, root: bool) -> u32 {
        let (name_bytes, compressed) = stored_name(name);
        let mut flags = if compressed { KEY_COMP_NAME } else { 0 };
        if root {
            flags |= KEY_HIVE_ENTRY | KEY_NO_DELETE;
        }
        let mut nk = b"nk".to_vec();
        nk.extend(flags.to_le_bytes());
        nk.extend(0x01d0_0000_0000_0000u64.to_le_bytes()); // last written
        nk.extend(0u32.to_le_bytes()); // access bits
        nk.extend(parent.to_le_bytes());
        nk.extend([0u8; 4 * 6]); // counts and lists, patched below
        nk.extend(self.sk.to_le_bytes());
        nk.extend(u32::MAX.to_le_bytes()); // class name
        nk.extend([0u8; 4 * 5]); // max lengths, workvar
        nk.extend((name_bytes.len() as u16).to_le_bytes());
        nk.extend(0u16.to_le_bytes());
        nk.extend(name_bytes);
        let me = self.cell(&nk);
        if root {
            // The security cell follows the root key, as in Windows' hives.
            self.sk = self.security_cell();
            self.patch_u32(me, 44, self.sk);
        }
        self.keys += 1;

        let values: Vec<(String, RegValue)> = key
            .values()
            .map(|(n, v)| (n.to_owned(), v.clone()))
            .collect();
        let value_list = if values.is_empty() {
            u32::MAX
        } else {
            let offs: Vec<u8> = values
                .iter()
                .flat_map(|(n, v)| self.value(n, v).to_le_bytes())
                .collect();
            self.cell(&offs)
        };
        let mut subs: Vec<(String, u32)> = Vec::new();
        for sub in key.subkeys() {
            let off = self.key(sub, sub.name(), me, false);
            subs.push((sub.name().to_uppercase(), off));
        }
        subs.sort();
        let subkey_list = if subs.is_empty() {
            u32::MAX
        } else {
            self.subkey_list(&subs)
        };
        self.patch_u32(me, 20, subs.len() as u32);
        self.patch_u32(me, 24, 0);
        self.patch_u32(me, 28, subkey_list);
        self.patch_u32(me, 32, u32::MAX);
        self.patch_u32(me, 36, values.len() as u32);
        self.patch_u32(me, 40, value_list);
        me
    }

    fn subkey_list(&mut self, subs: &[(String, u32)]) -> u32 {
        let plain = |sig: &[u8], entries: &[(String, u32)], hashed: Option<fn(&str) -> u32>| {
            let mut l = sig.to_vec();
            l.extend((entries.len() as u16).to_le_bytes());
            for (n, off) in entries {
                l.extend(off.to_le_bytes());
                if let Some(h) = hashed {
                    l.extend(h(n).to_le_bytes());
                }
            }
            l
        };
        match self.opts.lists {
            ListKind::Lf => {
                let l = plain(b"lf", subs, Some(lf_hash));
                self.cell(&l)
            }
            ListKind::Lh => {
                let l = plain(b"lh", subs, Some(lh_hash));
                self.cell(&l)
            }
            ListKind::Li => {
                let l = plain(b"li", subs, None);
                self.cell(&l)
            }
            ListKind::Ri => {
                let lists: Vec<u32> = subs
                    .chunks(2)
                    .map(|c| {
                        let l = plain(b"li", c, None);
                        self.cell(&l)
                    })
                    .collect();
                let mut ri = b"ri".to_vec();
                ri.extend((lists.len() as u16).to_le_bytes());
                for l in lists {
                    ri.extend(l.to_le_bytes());
                }
                self.cell(&ri)
            }
        }
    }

    /// One `sk` cell linked to itself, with a small self-relative security
    /// descriptor: owner Administrators, group SYSTEM, a DACL granting
    /// Everyone KEY_ALL_ACCESS.
    fn security_cell(&mut self) -> u32 {
        let sid = |authority: u8, subs: &[u32]| {
            let mut s = vec![1, subs.len() as u8, 0, 0, 0, 0, 0, authority];
            for x in subs {
                s.extend(x.to_le_bytes());
            }
            s
        };
        let everyone = sid(1, &[0]);
        let ace_size = 8 + everyone.len();
        let acl_size = 8 + ace_size;
        let mut dacl = vec![2, 0];
        dacl.extend((acl_size as u16).to_le_bytes());
        dacl.extend(1u16.to_le_bytes());
        dacl.extend(0u16.to_le_bytes());
        dacl.extend([0u8, 0x03]); // ACCESS_ALLOWED, container+object inherit
        dacl.extend((ace_size as u16).to_le_bytes());
        dacl.extend(0x000F_003Fu32.to_le_bytes());
        dacl.extend(everyone);
        let owner = sid(5, &[32, 544]);
        let group = sid(5, &[18]);
        let owner_at = 20 + dacl.len();
        let group_at = owner_at + owner.len();
        let mut sd = vec![1, 0];
        sd.extend(0x8004u16.to_le_bytes()); // self-relative, DACL present
        sd.extend((owner_at as u32).to_le_bytes());
        sd.extend((group_at as u32).to_le_bytes());
        sd.extend(0u32.to_le_bytes());
        sd.extend(20u32.to_le_bytes());
        sd.extend(dacl);
        sd.extend(owner);
        sd.extend(group);

        let me = self.bins.len() as u32;
        let mut sk = b"sk".to_vec();
        sk.extend(0u16.to_le_bytes());
        sk.extend(me.to_le_bytes()); // flink: itself
        sk.extend(me.to_le_bytes()); // blink: itself
        sk.extend(0u32.to_le_bytes()); // reference count, patched at the end
        sk.extend((sd.len() as u32).to_le_bytes());
        sk.extend(sd);
        self.cell(&sk)
    }
}

/// Writes a hive whose root key holds `tree`'s values and subkeys.
pub fn write_hive(tree: &RegKey, opts: &HiveOptions) -> Vec<u8> {
    let mut w = Writer {
        bins: vec![0; FIRST_CELL as usize],
        sk: u32::MAX,
        opts: opts.clone(),
        keys: 0,
    };
    let root = w.key(tree, &opts.root_name, 0, true);
    assert_eq!(root, FIRST_CELL);
    let sk = w.sk;
    let keys = w.keys;
    w.patch_u32(sk, 12, keys);

    // Close the bin with one free cell (at least 8 bytes) up to 4096 bytes.
    let used = w.bins.len();
    let bin_size = (used + 8).div_ceil(4096) * 4096;
    let free = bin_size - used;
    w.bins.extend((free as i32).to_le_bytes());
    w.bins.resize(bin_size, 0);
    w.bins[..4].copy_from_slice(b"hbin");
    w.bins[4..8].copy_from_slice(&0u32.to_le_bytes());
    w.bins[8..12].copy_from_slice(&(bin_size as u32).to_le_bytes());
    w.bins[20..28].copy_from_slice(&0x01d0_0000_0000_0000u64.to_le_bytes());

    let mut base = vec![0u8; 4096];
    base[..4].copy_from_slice(b"regf");
    let (seq1, seq2) = if opts.dirty { (7u32, 6u32) } else { (1, 1) };
    base[4..8].copy_from_slice(&seq1.to_le_bytes());
    base[8..12].copy_from_slice(&seq2.to_le_bytes());
    base[12..20].copy_from_slice(&0x01d0_0000_0000_0000u64.to_le_bytes());
    base[20..24].copy_from_slice(&1u32.to_le_bytes());
    base[24..28].copy_from_slice(&opts.minor.to_le_bytes());
    base[28..32].copy_from_slice(&0u32.to_le_bytes()); // primary file
    base[32..36].copy_from_slice(&1u32.to_le_bytes()); // direct memory load
    base[36..40].copy_from_slice(&FIRST_CELL.to_le_bytes());
    base[40..44].copy_from_slice(&(bin_size as u32).to_le_bytes());
    base[44..48].copy_from_slice(&1u32.to_le_bytes()); // clustering factor
    let file_name = utf16("SYSTEM");
    base[48..48 + file_name.len()].copy_from_slice(&file_name);
    fix_checksum(&mut base);
    base.extend(w.bins);
    base
}

/// Recomputes the base block checksum (after a test patched the header).
pub fn fix_checksum(hive: &mut [u8]) {
    let sum = thinagent_bootsim::registry::hive::base_block_checksum(hive);
    hive[508..512].copy_from_slice(&sum.to_le_bytes());
}
