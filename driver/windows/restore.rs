//! `Restore` (docs/protocol.md §14.7) on the host-action thread: a file
//! the host holds (a quarantined false positive) written back, only where
//! nothing is at its path.
//!
//! * [`start`] (the `Restore`): the target's directory is opened one
//!   component at a time from the volume's root, each relative to the
//!   previous one and with `FILE_OPEN_REPARSE_POINT`, and a component that
//!   is a reparse point (junction, symbolic link, mount point) ends the
//!   restore (`STATUS_STOPPED_ON_SYMLINK`): nothing is ever written where a
//!   link leads. A file already at the path answers `Changed` at once.
//!   Then a temporary file (`~thinagent-restore-<id>.tmp`) is created in
//!   that directory (`FILE_CREATE`, relative to the directory's handle).
//! * [`write`] (each `RestoreData`, in order): `FltWriteFile` at its
//!   offset; after the `LAST` chunk the size is checked, the file flushed
//!   (`FltFlushBuffers`), and renamed to the target's name relative to the
//!   same directory handle with `ReplaceIfExists = FALSE`:
//!   `STATUS_OBJECT_NAME_COLLISION` (someone put a file there meanwhile)
//!   answers `Changed`, success `Done` with the size.
//! * On any failure, at the session's end, at the restore's deadline, at
//!   unload, or when the session ended the restore itself ([`check`]), the
//!   temporary file is deleted (`Drop`).
//!
//! Every open goes below our instance, so our own filter never judges the
//! restore's writes (§14.7: the host knows what it restores); the restored
//! file is a new file (a new file id), so no cached verdict applies to it:
//! its next open is judged again.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::time::Duration;

use thinagent_guest::log::routine;
use thinagent_guest::{Instant, Level};
use thinagent_km_sys::fltmgr::Minifilters::{
    FltFlushBuffers, FltSetInformationFile, FltWriteFile, PFLT_INSTANCE,
};
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Storage::FileSystem::{
    FILE_CREATE, FILE_DIRECTORY_FILE, FILE_NON_DIRECTORY_FILE, FILE_OPEN, FILE_RENAME_INFORMATION,
    FileRenameInformation,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::{
    NTSTATUS, STATUS_OBJECT_NAME_COLLISION, STATUS_STOPPED_ON_SYMLINK,
};
use thinagent_protocol::{ActionResult, ActionStatus, Restore, RestoreData};

use super::filter_callbacks;
use super::host_actions::{
    DELETE, FILE_ATTRIBUTE_REPARSE_POINT, FILE_READ_ATTRIBUTES, FILE_TRAVERSE, FILE_WRITE_DATA,
    InstanceRef, Job, OpenFile, STATUS_IO_TIMEOUT, STATUS_UNSUCCESSFUL, failed, mark_deleted,
    not_found, target_path,
};
use super::kernel::{
    self, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER, Utf16, nt_success,
};
use super::session_worker;

/// `STATUS_OBJECT_NAME_INVALID` (ntstatus.h): the target's name is not a
/// plain file name (empty, `.`, `..`, a stream).
const STATUS_OBJECT_NAME_INVALID: NTSTATUS = 0xC000_0033_u32 as i32;
/// `FILE_ADD_FILE` (winnt.h; the directory meaning of `FILE_WRITE_DATA`).
const FILE_ADD_FILE: u32 = 0x0002;
/// The temporary file's name before the request id (hex) and `.tmp`.
const TEMP_PREFIX: &str = "~thinagent-restore-";

// FILE_RENAME_INFORMATION as windows-sys declares it (ntifs.h,
// learn.microsoft.com/windows-hardware/drivers/ddi/ntifs/ns-ntifs-_file_rename_information):
// the ReplaceIfExists/Flags union, RootDirectory, FileNameLength, FileName.
const RENAME_NAME_AT: usize = core::mem::offset_of!(FILE_RENAME_INFORMATION, FileName);
const _: () = {
    assert!(core::mem::offset_of!(FILE_RENAME_INFORMATION, RootDirectory) == 8);
    assert!(core::mem::offset_of!(FILE_RENAME_INFORMATION, FileNameLength) == 16);
    assert!(RENAME_NAME_AT == 20);
    assert!(size_of::<FILE_RENAME_INFORMATION>() == 24);
};

/// The restore in progress (one at a time: the session answers a second
/// one `Busy`).
pub struct Restoring {
    generation: u32,
    id: u64,
    deadline: Instant,
    size: u64,
    /// Bytes written so far (the next chunk's offset).
    written: u64,
    instance: InstanceRef,
    /// The target's directory, opened without following any link.
    dir: OpenFile,
    /// The temporary file while it is one (`None` once renamed).
    temp: Option<OpenFile>,
    /// The target's name in `dir`.
    name: Vec<u16>,
    /// The whole target path, for the log.
    path: Vec<u16>,
}

impl Restoring {
    /// Ends the restore without an answer (the session answered it, or
    /// is gone): the temporary file goes.
    pub fn abort(self: Box<Self>, why: &str) {
        crate::klog!(
            Level::Warn,
            routine::SESSION,
            "host restore {} of {} abandoned ({}): temporary file removed",
            self.id,
            Utf16(&self.path),
            why
        );
        drop(self);
    }

    /// Renames the temporary file to the target's name in `dir`, never
    /// over an existing file.
    fn rename(&self, temp: &OpenFile) -> NTSTATUS {
        let bytes = RENAME_NAME_AT + self.name.len() * 2;
        let length = bytes.max(size_of::<FILE_RENAME_INFORMATION>());
        // u64 storage: the structure holds a HANDLE (8-byte aligned).
        let mut buf: Vec<u64> = Vec::new();
        if buf.try_reserve_exact(length.div_ceil(8)).is_err() {
            return STATUS_INSUFFICIENT_RESOURCES;
        }
        buf.resize(length.div_ceil(8), 0);
        let info = buf.as_mut_ptr().cast::<FILE_RENAME_INFORMATION>();
        // SAFETY: `buf` is zeroed, 8-byte aligned and `length` >= 24 bytes
        // long, so it holds a FILE_RENAME_INFORMATION (all-zero flags:
        // ReplaceIfExists FALSE) followed by room for the name's units;
        // the writes stay inside it (the name's units start at
        // RENAME_NAME_AT and end at `bytes` <= `length`).
        unsafe {
            core::ptr::addr_of_mut!((*info).RootDirectory).write(self.dir.handle);
            core::ptr::addr_of_mut!((*info).FileNameLength).write((self.name.len() * 2) as u32);
            core::ptr::copy_nonoverlapping(
                self.name.as_ptr(),
                buf.as_mut_ptr()
                    .cast::<u8>()
                    .add(RENAME_NAME_AT)
                    .cast::<u16>(),
                self.name.len(),
            );
        }
        // SAFETY: FltSetInformationFile (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltsetinformationfile):
        // our instance, the temporary file's object (opened with DELETE),
        // a FILE_RENAME_INFORMATION of `length` bytes whose RootDirectory
        // is our kernel handle of the target's directory and whose name is
        // relative to it. PASSIVE_LEVEL.
        unsafe {
            FltSetInformationFile(
                self.instance.0,
                temp.file_object,
                buf.as_ptr().cast(),
                length as u32,
                FileRenameInformation,
            )
        }
    }

    /// After the `LAST` chunk: size, flush, deadline, rename.
    fn finish(&mut self) -> ActionResult {
        let Some(temp) = self.temp.as_ref() else {
            return failed(STATUS_UNSUCCESSFUL);
        };
        if self.written != self.size {
            return ActionResult::status(ActionStatus::Rejected);
        }
        // SAFETY: FltFlushBuffers (fltkernel.h,
        // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltflushbuffers):
        // our instance and our open file object. PASSIVE_LEVEL.
        let status = unsafe { FltFlushBuffers(self.instance.0, temp.file_object) };
        if !nt_success(status) {
            return failed(status);
        }
        if kernel::now().has_reached(self.deadline) {
            return failed(STATUS_IO_TIMEOUT);
        }
        let status = self.rename(temp);
        if status == STATUS_OBJECT_NAME_COLLISION {
            return ActionResult::status(ActionStatus::Changed);
        }
        if !nt_success(status) {
            return failed(status);
        }
        // It has its real name now: closed, not deleted.
        self.temp = None;
        ActionResult {
            value: self.size,
            ..ActionResult::status(ActionStatus::Done)
        }
    }
}

impl Drop for Restoring {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            // Deleted now (POSIX) or at this close (our handle is its only
            // one); a failure leaves a `~thinagent-restore-*.tmp` that the
            // next restore of the same id removes.
            let _ = mark_deleted(self.instance.0, &temp);
        }
    }
}

/// Starts `Restore` `r` (the job `job`): `None` when its data is awaited,
/// or the answer now. A restore still held in `slot` is abandoned first.
/// PASSIVE_LEVEL (the host-action thread).
pub fn start(
    job: &Job,
    r: &Restore<'_>,
    slot: &mut Option<Box<Restoring>>,
) -> Option<ActionResult> {
    if let Some(old) = slot.take() {
        old.abort("a new restore arrived");
    }
    let deadline = job
        .received
        .saturating_add(Duration::from_millis(u64::from(r.deadline_ms)));
    let answer = match begin(job, r, deadline) {
        Ok(restoring) => {
            crate::klog!(
                Level::Info,
                routine::SESSION,
                "host restore {} of {} started: {} bytes",
                job.id,
                Utf16(&restoring.path),
                r.size
            );
            *slot = Some(restoring);
            return None;
        }
        Err(answer) => answer,
    };
    crate::klog!(
        Level::Audit,
        routine::SESSION,
        "host restore {}: {:?}",
        job.id,
        answer.status
    );
    Some(answer)
}

fn begin(job: &Job, r: &Restore<'_>, deadline: Instant) -> Result<Box<Restoring>, ActionResult> {
    let fail = |status: NTSTATUS| {
        if not_found(status) || status == STATUS_INVALID_PARAMETER {
            ActionResult::status(ActionStatus::NotFound)
        } else {
            failed(status)
        }
    };
    if kernel::now().has_reached(deadline) {
        return Err(failed(STATUS_IO_TIMEOUT));
    }
    let path = target_path(&r.path).map_err(fail)?;
    let slash = u16::from(b'\\');
    let volume_len = thinagent_guest::nt_path::volume_name_len(&path)
        .ok_or_else(|| fail(STATUS_OBJECT_NAME_INVALID))?;
    // The target's directory ends at the last backslash, at or after the
    // root's.
    let cut = path
        .iter()
        .rposition(|&u| u == slash)
        .filter(|&c| c >= volume_len)
        .ok_or_else(|| failed(STATUS_OBJECT_NAME_INVALID))?;
    let name = &path[cut + 1..];
    let dot = u16::from(b'.');
    if name.is_empty() || name == [dot] || name == [dot, dot] || name.contains(&u16::from(b':')) {
        return Err(failed(STATUS_OBJECT_NAME_INVALID));
    }
    let instance = InstanceRef::for_path(&path).map_err(fail)?;
    let dir = open_directory_without_links(instance.0, &path, volume_len, cut).map_err(fail)?;
    // A file at the path already: never overwritten (checked again,
    // atomically, by the rename).
    match OpenFile::create(
        instance.0,
        Some(&dir),
        name,
        FILE_READ_ATTRIBUTES,
        FILE_OPEN,
        0,
    ) {
        Ok(_) => return Err(ActionResult::status(ActionStatus::Changed)),
        Err(s) if not_found(s) => {}
        Err(s) => return Err(failed(s)),
    }
    let temp_name = temp_name(job.id).ok_or_else(|| failed(STATUS_INSUFFICIENT_RESOURCES))?;
    let create = || {
        OpenFile::create(
            instance.0,
            Some(&dir),
            &temp_name,
            DELETE | FILE_WRITE_DATA | FILE_READ_ATTRIBUTES,
            FILE_CREATE,
            FILE_NON_DIRECTORY_FILE,
        )
    };
    let temp = match create() {
        Err(s) if s == STATUS_OBJECT_NAME_COLLISION => {
            // A temporary file left by an earlier restore with this id (a
            // crash, a reset): removed, then made anew.
            if let Ok(left) = OpenFile::create(
                instance.0,
                Some(&dir),
                &temp_name,
                DELETE | FILE_READ_ATTRIBUTES,
                FILE_OPEN,
                FILE_NON_DIRECTORY_FILE,
            ) {
                let _ = mark_deleted(instance.0, &left);
            }
            create()
        }
        other => other,
    }
    .map_err(failed)?;
    let mut name_units = Vec::new();
    if name_units.try_reserve_exact(name.len()).is_err() {
        let _ = mark_deleted(instance.0, &temp);
        return Err(failed(STATUS_INSUFFICIENT_RESOURCES));
    }
    name_units.extend_from_slice(name);
    Ok(Box::new(Restoring {
        generation: job.generation,
        id: job.id,
        deadline,
        size: r.size,
        written: 0,
        instance,
        dir,
        temp: Some(temp),
        name: name_units,
        path,
    }))
}

/// `~thinagent-restore-<id, 16 hex digits>.tmp`.
fn temp_name(id: u64) -> Option<Vec<u16>> {
    let mut out = Vec::new();
    out.try_reserve_exact(TEMP_PREFIX.len() + 16 + 4).ok()?;
    out.extend(TEMP_PREFIX.encode_utf16());
    for shift in (0..16).rev() {
        let digit = ((id >> (shift * 4)) & 0xF) as u8;
        let c = if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        };
        out.push(u16::from(c));
    }
    out.extend(".tmp".encode_utf16());
    Some(out)
}

/// Opens the directory `path[..cut]` (a full NT name whose volume name is
/// `path[..volume_len]`) one component at a time from the volume's root,
/// each relative to the one before and opened itself
/// (`FILE_OPEN_REPARSE_POINT`): a component that is a reparse point is
/// refused (`STATUS_STOPPED_ON_SYMLINK`), so the walk never leaves the
/// names the host gave. The last one is opened to add a file.
fn open_directory_without_links(
    instance: PFLT_INSTANCE,
    path: &[u16],
    volume_len: usize,
    cut: usize,
) -> Result<OpenFile, NTSTATUS> {
    let slash = u16::from(b'\\');
    let look = FILE_TRAVERSE | FILE_READ_ATTRIBUTES;
    let last_access = look | FILE_ADD_FILE;
    // "\Device\HarddiskVolume3\" (with its backslash) is the root.
    let components: Vec<&[u16]> = path[volume_len + 1..cut]
        .split(|&u| u == slash)
        .filter(|c| !c.is_empty())
        .collect();
    let root_access = if components.is_empty() {
        last_access
    } else {
        look
    };
    let mut dir = OpenFile::open(
        instance,
        &path[..=volume_len],
        root_access,
        FILE_DIRECTORY_FILE,
    )?;
    for (i, component) in components.iter().enumerate() {
        let access = if i + 1 == components.len() {
            last_access
        } else {
            look
        };
        let next = OpenFile::create(
            instance,
            Some(&dir),
            component,
            access,
            FILE_OPEN,
            FILE_DIRECTORY_FILE,
        )?;
        match filter_callbacks::directory_and_attributes(instance, next.file_object) {
            Some((true, attributes)) if attributes & FILE_ATTRIBUTE_REPARSE_POINT == 0 => {}
            Some((true, _)) => {
                crate::klog!(
                    Level::Warn,
                    routine::SESSION,
                    "host restore refused: {} is a link (junction, symbolic link or mount point)",
                    Utf16(&path[..volume_len + 1 + offset_of_component(&components, i)])
                );
                return Err(STATUS_STOPPED_ON_SYMLINK);
            }
            _ => return Err(STATUS_UNSUCCESSFUL),
        }
        dir = next;
    }
    Ok(dir)
}

/// Units from the first component's start to the end of component `i`
/// (with the backslashes between them), for the log.
fn offset_of_component(components: &[&[u16]], i: usize) -> usize {
    components[..=i].iter().map(|c| c.len() + 1).sum::<usize>() - 1
}

/// Writes `RestoreData` `d` (the job `job`) into the restore in `slot`:
/// `None` while more data is awaited (or when the chunk belongs to no
/// restore in progress: ignored, §14.7), the answer after the `LAST`
/// chunk or a failure. PASSIVE_LEVEL (the host-action thread).
pub fn write(
    job: &Job,
    d: &RestoreData<'_>,
    slot: &mut Option<Box<Restoring>>,
) -> Option<ActionResult> {
    let r = slot
        .as_mut()
        .filter(|r| r.id == job.id && r.generation == job.generation)?;
    let answer = if d.offset != r.written {
        Some(ActionResult::status(ActionStatus::Rejected))
    } else if let Err(status) = write_at(r, d.offset, d.data) {
        Some(failed(status))
    } else {
        r.written += d.data.len() as u64;
        d.last.then(|| r.finish())
    }?;
    let r = slot.take()?;
    crate::klog!(
        Level::Audit,
        routine::SESSION,
        "host restore {} of {} ({} bytes): {:?}",
        r.id,
        Utf16(&r.path),
        r.size,
        answer.status
    );
    // Dropped: the temporary file goes unless it was renamed.
    drop(r);
    Some(answer)
}

fn write_at(r: &Restoring, offset: u64, data: &[u8]) -> Result<(), NTSTATUS> {
    let Some(temp) = r.temp.as_ref() else {
        return Err(STATUS_UNSUCCESSFUL);
    };
    if data.is_empty() {
        return Ok(());
    }
    let at = i64::try_from(offset).map_err(|_| STATUS_INVALID_PARAMETER)?;
    let mut done = 0u32;
    // SAFETY: FltWriteFile (fltkernel.h,
    // learn.microsoft.com/windows-hardware/drivers/ddi/fltkernel/nf-fltkernel-fltwritefile):
    // our instance and our temporary file's object (opened for writing,
    // synchronous I/O); a byte offset; `data` (non-paged, the job's frame)
    // valid for `data.len()` <= 4096 bytes during the call; no completion
    // routine, so the call is synchronous. PASSIVE_LEVEL.
    let status = unsafe {
        FltWriteFile(
            r.instance.0,
            temp.file_object,
            &at,
            data.len() as u32,
            data.as_ptr().cast(),
            0,
            &mut done,
            None,
            core::ptr::null(),
        )
    };
    if !nt_success(status) {
        return Err(status);
    }
    if done as usize != data.len() {
        return Err(STATUS_UNSUCCESSFUL);
    }
    Ok(())
}

/// Ends the restore in `slot` without an answer when the session ended it
/// itself (out of order, its deadline: [`super::host_actions::abort_restore`]),
/// when its session is gone, or when its deadline passed. PASSIVE_LEVEL.
pub fn check(slot: &mut Option<Box<Restoring>>) {
    let aborted = super::host_actions::take_restore_aborted();
    let why = match slot.as_ref() {
        None => return,
        Some(r) if aborted == Some((r.generation, r.id)) => "ended by the session",
        Some(r) if session_worker::live_generation() != Some(r.generation) => "session ended",
        Some(r) if kernel::now().has_reached(r.deadline) => "deadline passed",
        Some(_) => return,
    };
    if let Some(r) = slot.take() {
        r.abort(why);
    }
}
