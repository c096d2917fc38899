//! Checks of the linked driver image, `thinagent.sys`, as the Windows loader
//! and Filter Manager will see it. The image is built by `.ci/build-driver`
//! (release; `tests/common/driver_build.rs`: skipped with the reason where the
//! toolchain is missing, failed under `CI=true`) and parsed with the `object`
//! crate:
//!
//! * every import comes from a kernel module (`ntoskrnl.exe`, `hal.dll`,
//!   `fltmgr.sys`, `netio.sys`), by name, and nothing is delay-loaded: a
//!   driver importing from `ntdll.dll` builds and then does not load (windows-sys
//!   binds `ZwOpenKey`, `ZwClose`, `DbgPrintEx`, ... to ntdll; which library
//!   wins a link is a matter of order, so only the binary tells);
//! * `docs/windows.md`'s "Kernel APIs" table lists exactly the imported
//!   routines, each with the module it is imported from;
//! * subsystem `NATIVE`; the entry point is the exported `DriverEntry`; no
//!   TLS directory; no section both writable and executable; a correct,
//!   non-zero PE checksum (the loader verifies it for drivers);
//! * the `FLT_REGISTRATION` passed to `FltRegisterFilter`, found in the
//!   image's data, and the operation and context tables it points at, are
//!   what `driver/filter_registration.rs` builds (compiled in here), every
//!   callback pointer pointing into an executable section, and every pointer
//!   covered by a base relocation.
//!
//! `imports_come_only_from_kernel_modules` prints the import table (shown
//! with `--nocapture`, as `.ci/run` does, or on failure).

#[path = "common/driver_build.rs"]
mod driver_build;

#[path = "../driver/filter_registration.rs"]
#[allow(
    dead_code,
    reason = "the tables and constants are what is used here; the context methods are the driver's"
)]
mod filter_registration;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::c_void;
use std::mem::offset_of;
use std::path::PathBuf;

use object::LittleEndian as LE;
use object::pe;
use object::read::pe::{ExportTarget, ImageNtHeaders, ImageOptionalHeader, Import, PeFile64};

use filter_registration::{
    CONTEXT_TABLE_LEN, FilterCallbacks, OPERATION_TABLE_LEN, context_registration,
    filter_registration, operation_registration,
};
use thinagent_km_sys::fltmgr::Minifilters::{
    FLT_CALLBACK_DATA, FLT_CONTEXT_REGISTRATION, FLT_OPERATION_REGISTRATION,
    FLT_POSTOP_CALLBACK_STATUS, FLT_PREOP_CALLBACK_STATUS, FLT_REGISTRATION, FLT_RELATED_OBJECTS,
    PFLT_CONTEXT,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::NTSTATUS;
use thinagent_km_sys::fltmgr::windows_sys::Win32::Storage::InstallableFileSystems::FLT_FILESYSTEM_TYPE;

/// The modules a kernel driver may import from (lower case).
const KERNEL_MODULES: [&str; 4] = ["ntoskrnl.exe", "hal.dll", "fltmgr.sys", "netio.sys"];

/// The built image, or `None` (skipped, reason printed).
struct Image {
    path: PathBuf,
    data: Vec<u8>,
}

fn image() -> Option<Image> {
    let path = driver_build::built_driver()?;
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Some(Image { path, data })
}

fn parse(image: &Image) -> PeFile64<'_> {
    PeFile64::parse(&*image.data)
        .unwrap_or_else(|e| panic!("{} is not a PE32+ image: {e}", image.path.display()))
}

/// Imports by module, in the image's order; an import by ordinal is `#N`.
type Imports = Vec<(String, Vec<String>)>;

fn imports(pe: &PeFile64<'_>) -> Imports {
    let mut out = Imports::new();
    let Some(table) = pe.import_table().expect("import table") else {
        return out;
    };
    let mut descriptors = table.descriptors().expect("import descriptors");
    while let Some(d) = descriptors.next().expect("import descriptor") {
        let module = String::from_utf8_lossy(table.name(d.name.get(LE)).expect("module name"));
        // The lookup table, or the address table where the linker left the
        // lookup table out (both hold the names before binding).
        let lookup = match d.original_first_thunk.get(LE) {
            0 => d.first_thunk.get(LE),
            rva => rva,
        };
        let mut thunks = table.thunks(lookup).expect("import thunks");
        let mut symbols = Vec::new();
        while let Some(thunk) = thunks.next::<pe::ImageNtHeaders64>().expect("import thunk") {
            symbols.push(
                match table.import::<pe::ImageNtHeaders64>(thunk).expect("import") {
                    Import::Name(_, name) => String::from_utf8_lossy(name).into_owned(),
                    Import::Ordinal(n) => format!("#{n}"),
                },
            );
        }
        out.push((module.into_owned(), symbols));
    }
    out
}

/// Delay-loaded imports, as `module!symbol` (a driver has none: there is no
/// delay-load helper in the kernel).
fn delay_load_imports(pe: &PeFile64<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(table) = pe
        .data_directories()
        .delay_load_import_table(pe.data(), &pe.section_table())
        .expect("delay-load import table")
    else {
        return out;
    };
    let mut descriptors = table.descriptors().expect("delay-load descriptors");
    while let Some(d) = descriptors.next().expect("delay-load descriptor") {
        let module = table
            .name(d.dll_name_rva.get(LE))
            .map_or_else(|_| "?".into(), |n| String::from_utf8_lossy(n).into_owned());
        let mut names = Vec::new();
        if let Ok(mut thunks) = table.thunks(d.import_name_table_rva.get(LE)) {
            while let Ok(Some(thunk)) = thunks.next::<pe::ImageNtHeaders64>() {
                names.push(match table.import::<pe::ImageNtHeaders64>(thunk) {
                    Ok(Import::Name(_, name)) => String::from_utf8_lossy(name).into_owned(),
                    Ok(Import::Ordinal(n)) => format!("#{n}"),
                    Err(_) => "?".into(),
                });
            }
        }
        if names.is_empty() {
            names.push("?".into());
        }
        out.extend(names.into_iter().map(|n| format!("{module}!{n}")));
    }
    out
}

/// Prints the import table and returns it.
fn print_imports(image: &Image, pe: &PeFile64<'_>) -> Imports {
    let imports = imports(pe);
    let total: usize = imports.iter().map(|(_, s)| s.len()).sum();
    println!(
        "{}: {total} imports from {} modules",
        image.path.display(),
        imports.len()
    );
    for (module, symbols) in &imports {
        println!("  {module} ({})", symbols.len());
        for s in symbols {
            println!("    {s}");
        }
    }
    imports
}

/// The built image and its imports.
fn load() -> Option<(Image, Imports)> {
    let image = image()?;
    let imports = imports(&parse(&image));
    Some((image, imports))
}

/// `module!symbol` for every import not from a kernel module or not by name.
fn import_offenders(imports: &Imports) -> Vec<String> {
    let mut out = Vec::new();
    for (module, symbols) in imports {
        let kernel = KERNEL_MODULES.contains(&module.to_ascii_lowercase().as_str());
        for s in symbols {
            if !kernel {
                out.push(format!("{module}!{s} (not a kernel module)"));
            } else if s.starts_with('#') {
                out.push(format!(
                    "{module}!{s} (by ordinal: kernel exports are imported by name)"
                ));
            }
        }
    }
    out
}

#[test]
fn imports_come_only_from_kernel_modules() {
    let Some(image) = image() else {
        return;
    };
    let pe = parse(&image);
    let imports = print_imports(&image, &pe);
    let offenders = import_offenders(&imports);
    assert!(
        offenders.is_empty(),
        "thinagent.sys imports from outside the kernel ({} of {}), so it would not load:\n  {}",
        offenders.len(),
        KERNEL_MODULES.join(", "),
        offenders.join("\n  ")
    );
    let delayed = delay_load_imports(&pe);
    assert!(
        delayed.is_empty(),
        "thinagent.sys delay-loads {delayed:?}: a driver cannot"
    );
    // Sanity: the table was read.
    assert!(
        imports
            .iter()
            .any(|(m, s)| m.eq_ignore_ascii_case("fltmgr.sys")
                && s.iter().any(|s| s == "FltRegisterFilter")),
        "FltRegisterFilter from fltmgr.sys is not among the imports"
    );
}

#[test]
fn the_import_check_names_the_offending_module_and_symbol() {
    let imports: Imports = vec![
        ("ntoskrnl.exe".into(), vec!["KeSetEvent".into()]),
        ("FLTMGR.SYS".into(), vec!["FltRegisterFilter".into()]),
        (
            "ntdll.dll".into(),
            vec!["ZwOpenKey".into(), "DbgPrintEx".into()],
        ),
        ("hal.dll".into(), vec!["#12".into()]),
    ];
    assert_eq!(
        import_offenders(&imports),
        [
            "ntdll.dll!ZwOpenKey (not a kernel module)",
            "ntdll.dll!DbgPrintEx (not a kernel module)",
            "hal.dll!#12 (by ordinal: kernel exports are imported by name)",
        ]
    );
}

/// The rows of `docs/windows.md`'s "Kernel APIs" table: routine -> the
/// module of its "imported from, binding" column.
fn kernel_api_table(docs: &str) -> BTreeMap<String, String> {
    let Some(start) = docs.find("\n## Kernel APIs") else {
        return BTreeMap::new();
    };
    let section = &docs[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    section[..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.split('`').next()?;
            let module = cells.get(3)?.split(',').next()?.trim();
            Some((name.to_string(), module.to_string()))
        })
        .collect()
}

#[test]
fn the_docs_table_is_read_from_its_section_only() {
    let docs = "# T\n## Other\n| `NotThis` | x | a.dll, b |\n## Kernel APIs\ntext\n\
                | routine | header | imported from, binding |\n| --- | --- | --- |\n\
                | `KeSetEvent` | wdm.h | ntoskrnl.exe, windows-sys |\n\
                | `IofCallDriver` (`IoCallDriver`) | wdm.h | ntoskrnl.exe, windows-sys |\n\
                ## Next\n| `NorThis` | y | c.sys, d |\n";
    let t = kernel_api_table(docs);
    assert_eq!(
        t.into_iter().collect::<Vec<_>>(),
        [
            ("IofCallDriver".into(), "ntoskrnl.exe".into()),
            ("KeSetEvent".into(), "ntoskrnl.exe".into())
        ]
    );
    assert!(kernel_api_table("# no section\n").is_empty());
}

#[test]
fn kernel_api_docs_list_exactly_the_imports() {
    let Some((_, imports)) = load() else {
        return;
    };
    let docs =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/windows.md"))
            .expect("read docs/windows.md");
    let documented = kernel_api_table(&docs);
    let imported: BTreeMap<&str, &str> = imports
        .iter()
        .flat_map(|(m, s)| s.iter().map(move |s| (s.as_str(), m.as_str())))
        .collect();
    let undocumented: Vec<String> = imported
        .iter()
        .filter(|(name, _)| !documented.contains_key(**name))
        .map(|(name, module)| format!("{name} ({module})"))
        .collect();
    let stale: Vec<&String> = documented
        .keys()
        .filter(|n| !imported.contains_key(n.as_str()))
        .collect();
    let wrong_module: Vec<String> = imported
        .iter()
        .filter_map(|(name, module)| {
            let doc = documented.get(*name)?;
            (!doc.eq_ignore_ascii_case(module)).then(|| {
                format!("{name}: the table says {doc}, the image imports it from {module}")
            })
        })
        .collect();
    assert!(
        undocumented.is_empty() && stale.is_empty() && wrong_module.is_empty(),
        "docs/windows.md \"Kernel APIs\" does not match the imports of thinagent.sys:\n  \
         add rows (header, module, doc page, IRQL) for {undocumented:?}\n  \
         remove the rows of {stale:?} (not imported)\n  fix the module of {wrong_module:?}"
    );
}

#[test]
fn subsystem_is_native() {
    let Some((image, _)) = load() else {
        return;
    };
    let pe = parse(&image);
    let subsystem = pe.nt_headers().optional_header().subsystem();
    assert_eq!(
        subsystem,
        pe::IMAGE_SUBSYSTEM_NATIVE,
        "subsystem {subsystem}, a driver is IMAGE_SUBSYSTEM_NATIVE (1)"
    );
}

/// The section holding `rva`, by its virtual extent.
fn section_of<'a>(pe: &PeFile64<'a>, rva: u32) -> Option<&'a pe::ImageSectionHeader> {
    pe.section_table().iter().find(|s| {
        let start = s.virtual_address.get(LE);
        let size = s.virtual_size.get(LE).max(s.size_of_raw_data.get(LE));
        rva >= start && rva - start < size
    })
}

fn section_name(s: &pe::ImageSectionHeader) -> String {
    String::from_utf8_lossy(s.name.split(|&b| b == 0).next().unwrap_or(&[])).into_owned()
}

fn is_executable(s: &pe::ImageSectionHeader) -> bool {
    s.characteristics.get(LE) & pe::IMAGE_SCN_MEM_EXECUTE != 0
}

#[test]
fn entry_point_is_the_exported_driver_entry() {
    let Some((image, _)) = load() else {
        return;
    };
    let pe = parse(&image);
    let entry = pe.nt_headers().optional_header().address_of_entry_point();
    let exports = pe
        .export_table()
        .expect("export table")
        .expect("thinagent.sys exports DriverEntry, so it has an export table")
        .exports()
        .expect("exports");
    let names: Vec<String> = exports
        .iter()
        .map(|e| {
            e.name.map_or_else(
                || format!("#{}", e.ordinal),
                |n| String::from_utf8_lossy(n).into(),
            )
        })
        .collect();
    println!("exports: {names:?}");
    let driver_entry = exports
        .iter()
        .find(|e| e.name == Some(b"DriverEntry".as_slice()))
        .unwrap_or_else(|| panic!("DriverEntry is not exported (exports: {names:?})"));
    let ExportTarget::Address(rva) = driver_entry.target else {
        panic!("DriverEntry is a forwarder: {:?}", driver_entry.target);
    };
    assert_eq!(
        entry, rva,
        "the entry point ({entry:#x}) is not DriverEntry ({rva:#x})"
    );
    let section = section_of(&pe, entry).expect("the entry point is in a section");
    assert!(
        is_executable(section),
        "the entry point is in {}, which is not executable",
        section_name(section)
    );
}

#[test]
fn no_tls_directory() {
    let Some((image, _)) = load() else {
        return;
    };
    let pe = parse(&image);
    let tls = pe.data_directory(pe::IMAGE_DIRECTORY_ENTRY_TLS);
    assert!(
        tls.is_none_or(|d| d.size.get(LE) == 0),
        "thinagent.sys has a TLS directory ({:?}): the kernel has no thread-local storage for images",
        tls.map(|d| d.address_range())
    );
    let names: Vec<String> = pe.section_table().iter().map(section_name).collect();
    assert!(
        !names.iter().any(|n| n == ".tls"),
        "a .tls section: {names:?}"
    );
}

#[test]
fn no_section_is_writable_and_executable() {
    let Some((image, _)) = load() else {
        return;
    };
    let pe = parse(&image);
    let mut wx = Vec::new();
    for s in pe.section_table().iter() {
        let c = s.characteristics.get(LE);
        println!("section {:8} characteristics {c:#010x}", section_name(s));
        if c & pe::IMAGE_SCN_MEM_WRITE != 0 && c & pe::IMAGE_SCN_MEM_EXECUTE != 0 {
            wx.push(section_name(s));
        }
    }
    assert!(
        wx.is_empty(),
        "sections both writable and executable: {wx:?}"
    );
}

/// The PE image checksum (`CheckSumMappedFile`'s algorithm): the file as
/// little-endian 16-bit words (an odd last byte padded with zero), the
/// `CheckSum` field itself counted as zero, summed with the carries folded
/// back into 16 bits, plus the file's length.
fn pe_checksum(data: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in data.chunks(2).enumerate() {
        let mut word = [chunk[0], chunk.get(1).copied().unwrap_or(0)];
        for (k, byte) in word.iter_mut().enumerate() {
            if (checksum_offset..checksum_offset + 4).contains(&(2 * i + k)) {
                *byte = 0;
            }
        }
        sum += u64::from(u16::from_le_bytes(word));
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum = (sum & 0xFFFF) + (sum >> 16);
    (sum as u32).wrapping_add(data.len() as u32)
}

/// File offset of `OptionalHeader.CheckSum` (64 bytes into the optional
/// header, in PE32 and PE32+ alike).
fn checksum_offset(pe: &PeFile64<'_>) -> usize {
    pe.dos_header().nt_headers_offset() as usize + 4 + size_of::<pe::ImageFileHeader>() + 64
}

#[test]
fn checksum_algorithm() {
    // Words 0xFFFF + 0x0001 carry into 0x0001; the checksum field (bytes
    // 4..8) counts as zero; 0x0002; the odd last byte 0x03 is the word
    // 0x0003: 6, plus the length 11.
    let data = [
        0xFF, 0xFF, 0x01, 0x00, 0xAA, 0xBB, 0xCC, 0xDD, 0x02, 0x00, 0x03,
    ];
    assert_eq!(pe_checksum(&data, 4), 6 + 11);
    // The field's content never matters.
    let mut other = data;
    other[4..8].copy_from_slice(&[0, 0, 0, 0]);
    assert_eq!(pe_checksum(&other, 4), pe_checksum(&data, 4));
    // Any other byte does.
    other[9] = 1;
    assert_ne!(pe_checksum(&other, 4), pe_checksum(&data, 4));
}

#[test]
fn checksum_is_correct() {
    let Some((image, _)) = load() else {
        return;
    };
    let pe = parse(&image);
    let stored = pe.nt_headers().optional_header().check_sum();
    let offset = checksum_offset(&pe);
    assert_eq!(
        image.data[offset..offset + 4],
        stored.to_le_bytes(),
        "CheckSum is not at file offset {offset:#x}"
    );
    let computed = pe_checksum(&image.data, offset);
    println!("CheckSum {stored:#x}, computed {computed:#x}");
    assert_ne!(
        stored, 0,
        "CheckSum is 0: link with /RELEASE (the loader verifies a driver's checksum)"
    );
    assert_eq!(
        stored, computed,
        "CheckSum {stored:#x} is wrong: the file sums to {computed:#x}"
    );
}

// ---------------------------------------------------------------------------
// FLT_REGISTRATION
// ---------------------------------------------------------------------------

/// The image mapped at its preferred base, for reading the registration.
struct Mapped<'a> {
    pe: PeFile64<'a>,
    base: u64,
    size: u32,
    /// RVAs of `IMAGE_REL_BASED_DIR64` base relocations.
    relocations: BTreeSet<u32>,
}

impl<'a> Mapped<'a> {
    fn new(pe: PeFile64<'a>) -> Self {
        let base = pe.nt_headers().optional_header().image_base();
        let size = pe.nt_headers().optional_header().size_of_image();
        let mut relocations = BTreeSet::new();
        if let Some(blocks) = pe
            .data_directories()
            .relocation_blocks(pe.data(), &pe.section_table())
            .expect("base relocations")
        {
            for block in blocks {
                for r in block.expect("relocation block") {
                    if r.typ == pe::IMAGE_REL_BASED_DIR64 {
                        relocations.insert(r.virtual_address);
                    }
                }
            }
        }
        Mapped {
            pe,
            base,
            size,
            relocations,
        }
    }

    /// `len` bytes at `rva`, from the file (initialised data only).
    fn bytes(&self, rva: u32, len: usize) -> Option<&'a [u8]> {
        self.pe
            .section_table()
            .pe_data_at(self.pe.data(), rva)
            .and_then(|d| d.get(..len))
    }

    fn u8(&self, rva: u32) -> u8 {
        self.bytes(rva, 1).expect("mapped byte")[0]
    }
    fn u16(&self, rva: u32) -> u16 {
        u16::from_le_bytes(self.bytes(rva, 2).expect("mapped u16").try_into().unwrap())
    }
    fn u32(&self, rva: u32) -> u32 {
        u32::from_le_bytes(self.bytes(rva, 4).expect("mapped u32").try_into().unwrap())
    }
    fn u64(&self, rva: u32) -> u64 {
        u64::from_le_bytes(self.bytes(rva, 8).expect("mapped u64").try_into().unwrap())
    }

    /// The RVA a pointer stored in the image (a VA at the preferred base)
    /// points at, if it points into the image.
    fn rva_of(&self, va: u64) -> Option<u32> {
        let rva = va.checked_sub(self.base)?;
        (rva < u64::from(self.size)).then_some(rva as u32)
    }
}

/// One pointer field read from the image.
struct Pointer {
    /// `FLT_REGISTRATION.FilterUnloadCallback`, `operations[0].PreOperation`, ...
    field: String,
    /// Where the field is.
    at: u32,
    /// The stored VA (0 = null).
    value: u64,
    /// Whether `filter_registration.rs` sets it.
    expected: bool,
    /// A code pointer (a callback), as opposed to a table pointer.
    code: bool,
}

/// Records the pointer fields `(field, offset, set by filter_registration.rs,
/// is a callback)` of the structure at `base` named `name`.
fn pointer_fields(
    pointers: &mut Vec<Pointer>,
    m: &Mapped<'_>,
    name: &str,
    base: u32,
    fields: &[(&str, usize, bool, bool)],
) {
    for &(field, offset, expected, code) in fields {
        let at = base + offset as u32;
        pointers.push(Pointer {
            field: format!("{name}.{field}"),
            at,
            value: m.u64(at),
            expected,
            code,
        });
    }
}

/// Finds `FLT_REGISTRATION`s in the image's data: `Size` 112 and `Version`
/// 0x0203 at an 8-byte-aligned RVA, whose two table pointers point into the
/// image.
fn find_registrations(m: &Mapped<'_>, expected: &FLT_REGISTRATION) -> Vec<u32> {
    let mut header = Vec::new();
    header.extend_from_slice(&expected.Size.to_le_bytes());
    header.extend_from_slice(&expected.Version.to_le_bytes());
    let mut found = Vec::new();
    for s in m.pe.section_table().iter() {
        if is_executable(s) {
            continue;
        }
        let Ok(data) = s.pe_data(m.pe.data()) else {
            continue;
        };
        let start = s.virtual_address.get(LE);
        for off in (0..data.len().saturating_sub(size_of::<FLT_REGISTRATION>())).step_by(8) {
            if data[off..off + 4] != header[..] {
                continue;
            }
            let rva = start + off as u32;
            let tables = [
                offset_of!(FLT_REGISTRATION, ContextRegistration),
                offset_of!(FLT_REGISTRATION, OperationRegistration),
            ];
            if tables
                .iter()
                .all(|&o| m.rva_of(m.u64(rva + o as u32)).is_some())
            {
                found.push(rva);
            }
        }
    }
    found
}

// Stand-ins for the driver's callbacks: the builders of
// filter_registration.rs take them; only which ones are set is compared.
unsafe extern "system" fn t_pre(
    _: *mut FLT_CALLBACK_DATA,
    _: *const FLT_RELATED_OBJECTS,
    _: *mut *mut c_void,
) -> FLT_PREOP_CALLBACK_STATUS {
    0
}
unsafe extern "system" fn t_post(
    _: *mut FLT_CALLBACK_DATA,
    _: *const FLT_RELATED_OBJECTS,
    _: *const c_void,
    _: u32,
) -> FLT_POSTOP_CALLBACK_STATUS {
    0
}
unsafe extern "system" fn t_unload(_: u32) -> NTSTATUS {
    0
}
unsafe extern "system" fn t_setup(
    _: *const FLT_RELATED_OBJECTS,
    _: u32,
    _: u32,
    _: FLT_FILESYSTEM_TYPE,
) -> NTSTATUS {
    0
}
unsafe extern "system" fn t_query_teardown(_: *const FLT_RELATED_OBJECTS, _: u32) -> NTSTATUS {
    0
}
unsafe extern "system" fn t_teardown(_: *const FLT_RELATED_OBJECTS, _: u32) {}
unsafe extern "system" fn t_cleanup(_: PFLT_CONTEXT, _: u16) {}

const CALLBACKS: FilterCallbacks = FilterCallbacks {
    pre_create: t_pre,
    post_create: t_post,
    pre_cleanup: t_pre,
    pre_write: t_pre,
    pre_set_information: t_pre,
    pre_file_system_control: t_pre,
    filter_unload: t_unload,
    instance_setup: t_setup,
    instance_query_teardown: t_query_teardown,
    instance_teardown_start: t_teardown,
    instance_teardown_complete: t_teardown,
    stream_context_cleanup: t_cleanup,
    instance_context_cleanup: t_cleanup,
};
const OPERATIONS: [FLT_OPERATION_REGISTRATION; OPERATION_TABLE_LEN] =
    operation_registration(&CALLBACKS);
const CONTEXTS: [FLT_CONTEXT_REGISTRATION; CONTEXT_TABLE_LEN] = context_registration(&CALLBACKS);

/// Pointer fields (other than the two tables) of `FLT_REGISTRATION`, with
/// whether the expected registration sets them.
fn registration_callbacks(r: &FLT_REGISTRATION) -> [(&'static str, usize, bool); 11] {
    [
        (
            "FilterUnloadCallback",
            offset_of!(FLT_REGISTRATION, FilterUnloadCallback),
            r.FilterUnloadCallback.is_some(),
        ),
        (
            "InstanceSetupCallback",
            offset_of!(FLT_REGISTRATION, InstanceSetupCallback),
            r.InstanceSetupCallback.is_some(),
        ),
        (
            "InstanceQueryTeardownCallback",
            offset_of!(FLT_REGISTRATION, InstanceQueryTeardownCallback),
            r.InstanceQueryTeardownCallback.is_some(),
        ),
        (
            "InstanceTeardownStartCallback",
            offset_of!(FLT_REGISTRATION, InstanceTeardownStartCallback),
            r.InstanceTeardownStartCallback.is_some(),
        ),
        (
            "InstanceTeardownCompleteCallback",
            offset_of!(FLT_REGISTRATION, InstanceTeardownCompleteCallback),
            r.InstanceTeardownCompleteCallback.is_some(),
        ),
        (
            "GenerateFileNameCallback",
            offset_of!(FLT_REGISTRATION, GenerateFileNameCallback),
            r.GenerateFileNameCallback.is_some(),
        ),
        (
            "NormalizeNameComponentCallback",
            offset_of!(FLT_REGISTRATION, NormalizeNameComponentCallback),
            r.NormalizeNameComponentCallback.is_some(),
        ),
        (
            "NormalizeContextCleanupCallback",
            offset_of!(FLT_REGISTRATION, NormalizeContextCleanupCallback),
            r.NormalizeContextCleanupCallback.is_some(),
        ),
        (
            "TransactionNotificationCallback",
            offset_of!(FLT_REGISTRATION, TransactionNotificationCallback),
            r.TransactionNotificationCallback.is_some(),
        ),
        (
            "NormalizeNameComponentExCallback",
            offset_of!(FLT_REGISTRATION, NormalizeNameComponentExCallback),
            r.NormalizeNameComponentExCallback.is_some(),
        ),
        (
            "SectionNotificationCallback",
            offset_of!(FLT_REGISTRATION, SectionNotificationCallback),
            r.SectionNotificationCallback.is_some(),
        ),
    ]
}

#[test]
fn filter_registration_is_the_one_filter_registration_rs_builds() {
    // The x64 layouts, which the offsets below (this host's) must be.
    assert_eq!(size_of::<FLT_REGISTRATION>(), 112);
    assert_eq!(size_of::<FLT_OPERATION_REGISTRATION>(), 32);
    assert_eq!(size_of::<FLT_CONTEXT_REGISTRATION>(), 56);
    // FltRegisterFilter keeps the table pointers, hence 'static.
    let expected = filter_registration(
        Box::leak(Box::new(CONTEXTS)),
        Box::leak(Box::new(OPERATIONS)),
        &CALLBACKS,
    );

    let Some((image, _)) = load() else {
        return;
    };
    let m = Mapped::new(parse(&image));
    println!(
        "image base {:#x}, size {:#x}, {} DIR64 base relocations",
        m.base,
        m.size,
        m.relocations.len()
    );
    assert!(
        !m.relocations.is_empty(),
        "no base relocations: the image only loads at its preferred base"
    );

    let found = find_registrations(&m, &expected);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one FLT_REGISTRATION (Size {}, Version {:#06x}) in the image's data, \
         found them at RVAs {found:x?}",
        expected.Size,
        expected.Version
    );
    let reg = found[0];
    println!("FLT_REGISTRATION at RVA {reg:#x}");
    let mut mismatches = Vec::new();
    let mut pointers = Vec::new();
    let mut check = |what: String, got: u64, want: u64| {
        if got != want {
            mismatches.push(format!("{what}: {got:#x} in the image, {want:#x} expected"));
        }
    };

    check(
        "FLT_REGISTRATION.Flags".into(),
        m.u32(reg + offset_of!(FLT_REGISTRATION, Flags) as u32)
            .into(),
        expected.Flags.into(),
    );
    for (field, offset, set) in registration_callbacks(&expected) {
        let at = reg + offset as u32;
        pointers.push(Pointer {
            field: format!("FLT_REGISTRATION.{field}"),
            at,
            value: m.u64(at),
            expected: set,
            code: true,
        });
    }

    // FLT_OPERATION_REGISTRATION[], up to IRP_MJ_OPERATION_END.
    let ops_at = reg + offset_of!(FLT_REGISTRATION, OperationRegistration) as u32;
    let ops = m
        .rva_of(m.u64(ops_at))
        .expect("OperationRegistration in the image");
    pointers.push(Pointer {
        field: "FLT_REGISTRATION.OperationRegistration".into(),
        at: ops_at,
        value: m.u64(ops_at),
        expected: true,
        code: false,
    });
    let op_size = size_of::<FLT_OPERATION_REGISTRATION>() as u32;
    let mut majors = Vec::new();
    for i in 0..64u32 {
        let e = ops + i * op_size;
        let major = m.u8(e + offset_of!(FLT_OPERATION_REGISTRATION, MajorFunction) as u32);
        majors.push(major);
        let Some(want) = OPERATIONS.get(i as usize) else {
            if major == OPERATIONS[OPERATION_TABLE_LEN - 1].MajorFunction {
                break;
            }
            continue;
        };
        let name = format!("operations[{i}] (major {major:#04x})");
        check(
            format!("{name}.MajorFunction"),
            major.into(),
            want.MajorFunction.into(),
        );
        check(
            format!("{name}.Flags"),
            m.u32(e + offset_of!(FLT_OPERATION_REGISTRATION, Flags) as u32)
                .into(),
            want.Flags.into(),
        );
        pointer_fields(
            &mut pointers,
            &m,
            &name,
            e,
            &[
                (
                    "PreOperation",
                    offset_of!(FLT_OPERATION_REGISTRATION, PreOperation),
                    want.PreOperation.is_some(),
                    true,
                ),
                (
                    "PostOperation",
                    offset_of!(FLT_OPERATION_REGISTRATION, PostOperation),
                    want.PostOperation.is_some(),
                    true,
                ),
                (
                    "Reserved1",
                    offset_of!(FLT_OPERATION_REGISTRATION, Reserved1),
                    !want.Reserved1.is_null(),
                    false,
                ),
            ],
        );
        if major == 0x80 {
            break;
        }
    }
    println!("operation table at RVA {ops:#x}: major functions {majors:02x?}");
    check(
        "operation table length (entries up to IRP_MJ_OPERATION_END)".into(),
        majors.len() as u64,
        OPERATION_TABLE_LEN as u64,
    );

    // FLT_CONTEXT_REGISTRATION[], up to FLT_CONTEXT_END.
    let ctx_at = reg + offset_of!(FLT_REGISTRATION, ContextRegistration) as u32;
    let ctxs = m
        .rva_of(m.u64(ctx_at))
        .expect("ContextRegistration in the image");
    pointers.push(Pointer {
        field: "FLT_REGISTRATION.ContextRegistration".into(),
        at: ctx_at,
        value: m.u64(ctx_at),
        expected: true,
        code: false,
    });
    let ctx_size = size_of::<FLT_CONTEXT_REGISTRATION>() as u32;
    let end_type = CONTEXTS[CONTEXT_TABLE_LEN - 1].ContextType;
    let mut types = Vec::new();
    for i in 0..64u32 {
        let e = ctxs + i * ctx_size;
        let kind = m.u16(e + offset_of!(FLT_CONTEXT_REGISTRATION, ContextType) as u32);
        types.push(kind);
        let Some(want) = CONTEXTS.get(i as usize) else {
            if kind == end_type {
                break;
            }
            continue;
        };
        let name = format!("contexts[{i}] (type {kind:#06x})");
        check(
            format!("{name}.ContextType"),
            kind.into(),
            want.ContextType.into(),
        );
        check(
            format!("{name}.Flags"),
            m.u16(e + offset_of!(FLT_CONTEXT_REGISTRATION, Flags) as u32)
                .into(),
            want.Flags.into(),
        );
        check(
            format!("{name}.Size"),
            m.u64(e + offset_of!(FLT_CONTEXT_REGISTRATION, Size) as u32),
            want.Size as u64,
        );
        check(
            format!("{name}.PoolTag"),
            m.u32(e + offset_of!(FLT_CONTEXT_REGISTRATION, PoolTag) as u32)
                .into(),
            want.PoolTag.into(),
        );
        pointer_fields(
            &mut pointers,
            &m,
            &name,
            e,
            &[
                (
                    "ContextCleanupCallback",
                    offset_of!(FLT_CONTEXT_REGISTRATION, ContextCleanupCallback),
                    want.ContextCleanupCallback.is_some(),
                    true,
                ),
                (
                    "ContextAllocateCallback",
                    offset_of!(FLT_CONTEXT_REGISTRATION, ContextAllocateCallback),
                    want.ContextAllocateCallback.is_some(),
                    true,
                ),
                (
                    "ContextFreeCallback",
                    offset_of!(FLT_CONTEXT_REGISTRATION, ContextFreeCallback),
                    want.ContextFreeCallback.is_some(),
                    true,
                ),
                (
                    "Reserved1",
                    offset_of!(FLT_CONTEXT_REGISTRATION, Reserved1),
                    !want.Reserved1.is_null(),
                    false,
                ),
            ],
        );
        if kind == end_type {
            break;
        }
    }
    println!("context table at RVA {ctxs:#x}: context types {types:04x?}");
    check(
        "context table length (entries up to FLT_CONTEXT_END)".into(),
        types.len() as u64,
        CONTEXT_TABLE_LEN as u64,
    );

    // Every pointer: set exactly where expected; a set one points into the
    // image (a callback into an executable section) and is relocated.
    for p in &pointers {
        match (p.value != 0, p.expected) {
            (false, false) => continue,
            (true, false) => {
                mismatches.push(format!(
                    "{} is {:#x}, filter_registration.rs leaves it null",
                    p.field, p.value
                ));
                continue;
            }
            (false, true) => {
                mismatches.push(format!(
                    "{} is null, filter_registration.rs sets it",
                    p.field
                ));
                continue;
            }
            (true, true) => {}
        }
        let Some(target) = m.rva_of(p.value) else {
            mismatches.push(format!(
                "{} = {:#x} points outside the image (base {:#x}, size {:#x})",
                p.field, p.value, m.base, m.size
            ));
            continue;
        };
        let section = section_of(&m.pe, target);
        println!(
            "  {:55} -> RVA {target:#08x} in {}",
            p.field,
            section.map_or_else(|| "no section".into(), section_name)
        );
        if p.code && !section.is_some_and(is_executable) {
            mismatches.push(format!(
                "{} points at RVA {target:#x}, not in an executable section",
                p.field
            ));
        }
        if !m.relocations.contains(&p.at) {
            mismatches.push(format!(
                "{} (at RVA {:#x}) has no DIR64 base relocation: it is wrong wherever the image \
                 is not loaded at {:#x}",
                p.field, p.at, m.base
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "the FLT_REGISTRATION in thinagent.sys is not the one driver/filter_registration.rs \
         builds:\n  {}",
        mismatches.join("\n  ")
    );
}
