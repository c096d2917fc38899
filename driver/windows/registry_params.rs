//! Reads the service's `Parameters` key into [`thinagent_guest::Params`]
//! (the seed's `VFileUmcReadParams`).
//!
//! The key is `<RegistryPath>\Parameters`, where `RegistryPath` is the
//! service key `DriverEntry` receives
//! (`\Registry\Machine\System\CurrentControlSet\Services\thinagent`). Each
//! name in [`thinagent_guest::params::names::ALL`] is queried with
//! `ZwQueryValueKey(KeyValuePartialInformation)`, decoded into a
//! [`thinagent_guest::RegValue`] by [`thinagent_guest::registry`] (which
//! registry types are read, how strings are cut) and handed to
//! [`Params::apply`], which owns every other rule (names, bounds, clamps).
//! This module only moves bytes and logs:
//!
//! * no key, or no value: the default stays (INFO line);
//! * a clamped value: WARN line with the value used;
//! * a rejected value (unsupported or wrong type, meaningless): WARN line,
//!   the default stays;
//! * the key cannot be opened for another reason: WARN line, all defaults.
//!
//! A bad value never fails `DriverEntry`.
//!
//! Kernel routines (all PASSIVE_LEVEL): `ZwOpenKey`
//! (learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-zwopenkey),
//! `ZwQueryValueKey` (.../ddi/wdm/nf-wdm-zwqueryvaluekey), `ZwClose`
//! (.../ddi/wdm/nf-wdm-zwclose), all from thinagent-km-sys because
//! windows-sys binds them to ntdll. `InitializeObjectAttributes` is a macro
//! (`ntdef.h`; .../ddi/wudfwdm/nf-wudfwdm-initializeobjectattributes) and is
//! written out in [`object_attributes`]. The buffers come from the global
//! allocator (`wdk-alloc`: `ExAllocatePool2`, non-paged).

use alloc::vec::Vec;
use core::ffi::c_void;

use thinagent_guest::params::names;
use thinagent_guest::{Applied, Level, Params, log::routine, registry};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES;
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::{
    HANDLE, NTSTATUS, OBJ_CASE_INSENSITIVE, OBJ_KERNEL_HANDLE, STATUS_BUFFER_OVERFLOW,
    STATUS_BUFFER_TOO_SMALL, STATUS_OBJECT_NAME_NOT_FOUND, UNICODE_STRING,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::System::Registry::KEY_READ;
use thinagent_km_sys::ntoskrnl::ZwClose;
use thinagent_km_sys::registry::{KEY_VALUE_PARTIAL_INFORMATION_CLASS, ZwOpenKey, ZwQueryValueKey};

use super::kernel::{ascii_utf16, nt_success, unicode_string_for, unicode_units};
use crate::{klog, klog_status};

/// `\Parameters`, appended to the service key.
const PARAMETERS_SUFFIX: [u16; 11] = ascii_utf16::<11>(r"\Parameters");

/// Largest value accepted, in bytes: the longest legal `excludePaths`
/// (32 prefixes of 260 UTF-16 units plus separators) is about 17 KiB.
const MAX_VALUE_BYTES: u32 = 64 * 1024;

/// First query buffer, in bytes: enough for every numeric value and short
/// strings; longer multi-strings take a second query.
const FIRST_QUERY_BYTES: u32 = 512;

/// Applies the values under `<registry_path>\Parameters` to `params`,
/// which holds the defaults on entry (values absent or invalid keep them).
/// PASSIVE_LEVEL (`DriverEntry`).
///
/// This replaces the contract's `read(registry_path) -> Params`:
/// `Params` is about 18 KB (the exclusion lists are fixed arrays), and a
/// by-value return plus the move into the `Agent` would put two or three of
/// those on a kernel stack of 24 KB (x64). `driver_entry` allocates the
/// agent on the heap and has its `params` filled in place.
///
/// `registry_path` must be null or the `RegistryPath` `DriverEntry` received.
#[allow(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "safe fn by the driver's module contract; its one caller, DriverEntry, passes the I/O manager's registry path"
)]
pub fn read_into(registry_path: *const UNICODE_STRING, params: &mut Params) {
    // SAFETY: DriverEntry's RegistryPath is null or a valid UNICODE_STRING
    // for the duration of DriverEntry, which outlives this call.
    let service = match unsafe { registry_path.as_ref() } {
        // SAFETY: as above; the I/O manager's buffer holds Length bytes.
        Some(s) => unsafe { unicode_units(s) },
        None => &[],
    };
    if service.is_empty() {
        klog!(
            Level::Warn,
            routine::READ_PARAMS,
            "no service registry path; using defaults"
        );
        return;
    }
    let mut path: Vec<u16> = Vec::new();
    if path
        .try_reserve_exact(service.len() + PARAMETERS_SUFFIX.len())
        .is_err()
    {
        klog!(
            Level::Error,
            routine::READ_PARAMS,
            "no memory for the Parameters key path; using defaults"
        );
        return;
    }
    path.extend_from_slice(service);
    path.extend_from_slice(&PARAMETERS_SUFFIX);
    let Some(key_name) = unicode_string_for(&path) else {
        klog!(
            Level::Warn,
            routine::READ_PARAMS,
            "service registry path too long; using defaults"
        );
        return;
    };

    let key = match open_key(&key_name) {
        Ok(key) => key,
        Err(status) => {
            report_open_failure(status);
            return;
        }
    };

    let mut buffer = QueryBuffer::new();
    for name in names::ALL {
        read_one(key, name, &mut buffer, params);
    }

    // SAFETY: `key` is the kernel handle ZwOpenKey returned; closed once.
    let _ = unsafe { ZwClose(key) };
}

/// The log line for a `Parameters` key that could not be opened.
fn report_open_failure(status: NTSTATUS) {
    if status == STATUS_OBJECT_NAME_NOT_FOUND {
        klog!(
            Level::Info,
            routine::READ_PARAMS,
            "no Parameters key; using defaults"
        );
        return;
    }
    klog_status!(
        Level::Warn,
        routine::READ_PARAMS,
        status,
        "cannot open the Parameters key; using defaults"
    );
}

/// `ZwOpenKey(KEY_READ)` on `name` as a kernel handle, case-insensitively
/// (PASSIVE_LEVEL). The caller closes the handle with `ZwClose`.
fn open_key(name: &UNICODE_STRING) -> Result<HANDLE, NTSTATUS> {
    let attributes = object_attributes(name, OBJ_KERNEL_HANDLE | OBJ_CASE_INSENSITIVE);
    let mut key: HANDLE = core::ptr::null_mut();
    // SAFETY: `attributes` points at `name`, which the caller keeps alive
    // for the call; `key` receives a kernel handle.
    let status = unsafe { ZwOpenKey(&mut key, KEY_READ, &attributes) };
    if nt_success(status) {
        Ok(key)
    } else {
        Err(status)
    }
}

/// `SERVICE_BOOT_START`, the service `Start` value of a boot-start driver.
pub const SERVICE_BOOT_START: u32 = 0;

/// The service's `Start` value (0 boot, 1 system, 2 automatic, 3 on demand,
/// 4 disabled), read from the service key itself (`registry_path`, not its
/// `Parameters` subkey); `None` when it cannot be read or is not a
/// `REG_DWORD`. PASSIVE_LEVEL (`DriverEntry`).
///
/// The vsock layer registers its boot re-initialisation routine only for a
/// boot-start load: `IoRegisterBootDriverReinitialization` is meant for boot
/// drivers, and a routine registered later may never run, which would keep
/// the driver from unloading (see `vsock_capture::unload_is_safe`).
#[allow(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "safe fn by the driver's module contract; its one caller, DriverEntry, passes the I/O manager's registry path"
)]
pub fn service_start_type(registry_path: *const UNICODE_STRING) -> Option<u32> {
    // SAFETY: DriverEntry's RegistryPath is null or a valid UNICODE_STRING
    // for the duration of DriverEntry, which outlives this call.
    let key_name = unsafe { registry_path.as_ref() }?;
    let key = open_key(key_name).ok()?;
    const START: [u16; 5] = ascii_utf16::<5>("Start");
    let mut buffer = QueryBuffer::new();
    let value = match (buffer.ensure(FIRST_QUERY_BYTES), unicode_string_for(&START)) {
        (true, Some(value_name)) => {
            let (status, result_len) = buffer.query(key, &value_name);
            if nt_success(status) {
                match registry::partial_information_parts(buffer.bytes(result_len)) {
                    Ok((registry::REG_DWORD, &[a, b, c, d])) => {
                        Some(u32::from_le_bytes([a, b, c, d]))
                    }
                    _ => None,
                }
            } else {
                None
            }
        }
        _ => None,
    };
    // SAFETY: `key` is the kernel handle ZwOpenKey returned; closed once.
    let _ = unsafe { ZwClose(key) };
    value
}

/// `InitializeObjectAttributes(&oa, name, attributes, NULL, NULL)` (`ntdef.h`
/// macro): Length = sizeof, no root, the name, the flags, no security
/// descriptor or QoS.
fn object_attributes(name: &UNICODE_STRING, attributes: u32) -> OBJECT_ATTRIBUTES {
    OBJECT_ATTRIBUTES {
        Length: size_of::<OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: core::ptr::null_mut(),
        ObjectName: name,
        Attributes: attributes,
        SecurityDescriptor: core::ptr::null(),
        SecurityQualityOfService: core::ptr::null(),
    }
}

/// An 8-byte-aligned buffer for `KEY_VALUE_PARTIAL_INFORMATION` (whose
/// header is three ULONGs).
struct QueryBuffer {
    words: Vec<u64>,
}

impl QueryBuffer {
    fn new() -> Self {
        QueryBuffer { words: Vec::new() }
    }

    /// Grows to at least `bytes`; false when memory is short.
    fn ensure(&mut self, bytes: u32) -> bool {
        let words = (bytes as usize).div_ceil(8);
        if self.words.len() >= words {
            return true;
        }
        if self
            .words
            .try_reserve_exact(words - self.words.len())
            .is_err()
        {
            return false;
        }
        self.words.resize(words, 0);
        true
    }

    /// `ZwQueryValueKey(KeyValuePartialInformation)` of `value_name` into
    /// this buffer (PASSIVE_LEVEL): the status and the `ResultLength` (the
    /// size needed when the status says the buffer was too small).
    fn query(&mut self, key: HANDLE, value_name: &UNICODE_STRING) -> (NTSTATUS, u32) {
        let mut result_len = 0u32;
        // SAFETY: `key` is an open key handle; `value_name` is borrowed for
        // the call and the output pointer is this buffer, at least
        // `capacity_bytes()` long.
        let status = unsafe {
            ZwQueryValueKey(
                key,
                value_name,
                KEY_VALUE_PARTIAL_INFORMATION_CLASS,
                self.as_mut_ptr(),
                self.capacity_bytes(),
                &mut result_len,
            )
        };
        (status, result_len)
    }

    fn capacity_bytes(&self) -> u32 {
        (self.words.len() * 8) as u32
    }

    fn as_mut_ptr(&mut self) -> *mut c_void {
        self.words.as_mut_ptr().cast()
    }

    /// The first `len` bytes (clamped to the buffer).
    fn bytes(&self, len: u32) -> &[u8] {
        let len = (len as usize).min(self.words.len() * 8);
        // SAFETY: `words` owns at least `len` initialised bytes (u64s are
        // plain data, and u8 has no alignment requirement).
        unsafe { core::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), len) }
    }
}

/// Queries one value and applies it.
fn read_one(key: HANDLE, name: &'static str, buffer: &mut QueryBuffer, params: &mut Params) {
    // Parameter names are short ASCII identifiers.
    let mut name_units = [0u16; 64];
    let n = name.len().min(name_units.len());
    for (dst, src) in name_units.iter_mut().zip(name.bytes()) {
        *dst = u16::from(src);
    }
    let Some(value_name) = unicode_string_for(&name_units[..n]) else {
        return;
    };

    let mut want = FIRST_QUERY_BYTES;
    let status = loop {
        if !buffer.ensure(want) {
            klog!(
                Level::Error,
                routine::READ_PARAMS,
                "{name}: no memory for the value; keeping the default"
            );
            return;
        }
        let (status, result_len) = buffer.query(key, &value_name);
        let too_small = status == STATUS_BUFFER_OVERFLOW || status == STATUS_BUFFER_TOO_SMALL;
        if !too_small {
            break status;
        }
        if result_len > MAX_VALUE_BYTES {
            klog_status!(
                Level::Warn,
                routine::READ_PARAMS,
                status,
                "{name}: value of {result_len} bytes is larger than {MAX_VALUE_BYTES}; keeping the default"
            );
            return;
        }
        if result_len <= buffer.capacity_bytes() {
            // "Too small" with a needed size that fits the buffer we gave
            // is inconsistent: give up on this value. (A value that grows
            // between queries is retried; each retry needs a larger size,
            // bounded by MAX_VALUE_BYTES, so the loop ends.)
            klog_status!(
                Level::Warn,
                routine::READ_PARAMS,
                status,
                "{name}: cannot be read; keeping the default"
            );
            return;
        }
        want = result_len;
    };
    if status == STATUS_OBJECT_NAME_NOT_FOUND {
        klog!(
            Level::Info,
            routine::READ_PARAMS,
            "{name}: not set; using the default"
        );
        return;
    }
    if !nt_success(status) {
        klog_status!(
            Level::Warn,
            routine::READ_PARAMS,
            status,
            "{name}: cannot be read; keeping the default"
        );
        return;
    }
    apply_partial_information(name, buffer.bytes(buffer.capacity_bytes()), params);
}

// The guest crate's header size is the km-sys offset, which km-sys tests
// against windows-sys's KEY_VALUE_PARTIAL_INFORMATION.
const _: () = assert!(
    registry::PARTIAL_INFORMATION_HEADER
        == thinagent_km_sys::registry::KEY_VALUE_PARTIAL_INFORMATION_DATA_OFFSET
);

/// Decodes a `KEY_VALUE_PARTIAL_INFORMATION` with
/// [`thinagent_guest::registry`] (which types are read, how strings are cut)
/// and applies it to `params`.
fn apply_partial_information(name: &'static str, info: &[u8], params: &mut Params) {
    let (reg_type, data) = match registry::partial_information_parts(info) {
        Ok(parts) => parts,
        Err(e) => {
            klog!(
                Level::Warn,
                routine::READ_PARAMS,
                "{name}: {e}; keeping the default"
            );
            return;
        }
    };
    let mut units: Vec<u16> = Vec::new();
    let need = registry::units_needed(data);
    if units.try_reserve_exact(need).is_err() {
        klog!(
            Level::Error,
            routine::READ_PARAMS,
            "{name}: no memory for the value; keeping the default"
        );
        return;
    }
    units.resize(need, 0);
    match registry::decode_value(reg_type, data, &mut units) {
        Ok(value) => report(name, value.type_name(), params.apply(name, value)),
        Err(e) => klog!(
            Level::Warn,
            routine::READ_PARAMS,
            "{name}: {e}; keeping the default"
        ),
    }
}

/// The WARN line for a clamped or rejected value.
fn report(name: &str, type_name: &str, outcome: Result<Applied, thinagent_guest::ParamError>) {
    match outcome {
        Ok(Applied::Set) => {}
        Ok(Applied::Clamped(clamp)) => {
            klog!(Level::Warn, routine::READ_PARAMS, "{clamp}");
        }
        Err(e) => {
            klog!(
                Level::Warn,
                routine::READ_PARAMS,
                "{name} ({type_name}): {e}; value ignored"
            );
        }
    }
}
