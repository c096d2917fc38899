"""Filter Manager (fltmgr.sys) as the driver sees it: registration,
filtering start and unregistration; one disk volume with an NTFS-like
in-memory file system under it; the filter's instance on that volume
(InstanceSetupCallback with real FLT_RELATED_OBJECTS, instance and stream
contexts with reference counts and their cleanup callbacks); and file
operations (create, write, cleanup) that build real FILE_OBJECT,
FLT_CALLBACK_DATA, FLT_IO_PARAMETER_BLOCK and FLT_RELATED_OBJECTS and run the
registered pre- and post-operation callbacks on an emulated thread of their
own, as the I/O manager would in the opener's thread.

Model and its limits (anything outside them raises EmulationError):

* One filter, one volume, at most one instance. No ECPs on any create
  (FltGetEcpListFromCallbackData gives NULL), no transactions, no
  alternate data streams, no oplocks, no pended or completed
  pre-operations (FLT_PREOP_PENDING / COMPLETE / SYNCHRONIZE), no
  FLT_POSTOP_MORE_PROCESSING_REQUIRED, no asynchronous FltReadFile.
* A stream (and its stream context) lives as long as the volume's file: an
  NTFS SCB stays while the cache manager holds it, so a context found again
  by a later open is what real systems commonly show; the instance teardown
  at unregistration releases them.
* File names are normalized names: \\Device\\HarddiskVolume3 + the path on
  the volume, as stored (the opened name is the same).
"""

import struct
import traceback

from unicorn import UC_PROT_EXEC, UC_PROT_READ
from unicorn.x86_const import UC_X86_REG_RSP

from . import layouts as L
from .kernel import KObject, STATUS_BUFFER_OVERFLOW, STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_PARAMETER
from .machine import EmulationError, Park, Wait, s32, s64

STATUS_SUCCESS = 0
STATUS_FLT_DO_NOT_DETACH = 0xC01C0010
STATUS_FLT_DO_NOT_ATTACH = 0xC01C000F
STATUS_FLT_CONTEXT_ALREADY_DEFINED = 0xC01C0002
STATUS_FLT_CONTEXT_ALLOCATION_NOT_FOUND = 0xC01C0016
STATUS_NOT_FOUND = 0xC0000225
STATUS_NOT_SUPPORTED = 0xC00000BB
STATUS_INFO_LENGTH_MISMATCH = 0xC0000004
STATUS_END_OF_FILE = 0xC0000011
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_OBJECT_NAME_COLLISION = 0xC0000035
STATUS_OBJECT_NAME_INVALID = 0xC0000033
STATUS_NOT_A_REPARSE_POINT = 0xC0000275
FSCTL_GET_REPARSE_POINT = 0x000900A8
IO_REPARSE_TAG_MOUNT_POINT = 0xA0000003
STATUS_FILE_IS_A_DIRECTORY = 0xC00000BA

FLT_PREOP_SUCCESS_WITH_CALLBACK = 0
FLT_PREOP_SUCCESS_NO_CALLBACK = 1
FLT_POSTOP_FINISHED_PROCESSING = 0
FLTFL_CALLBACK_DATA_IRP_OPERATION = 0x1
FLTFL_CALLBACK_DATA_POST_OPERATION = 0x80000
FLT_INSTANCE_CONTEXT = 0x2
FLT_STREAM_CONTEXT = 0x8
FLT_SET_CONTEXT_REPLACE_IF_EXISTS = 0
FLT_SET_CONTEXT_KEEP_IF_EXISTS = 1
FLTFL_CONTEXT_REGISTRATION_NO_EXACT_SIZE_MATCH = 0x1
FLT_VARIABLE_SIZED_CONTEXTS = 0xFFFFFFFFFFFFFFFF
FLTFL_INSTANCE_SETUP_AUTOMATIC_ATTACHMENT = 0x1
FLTFL_INSTANCE_TEARDOWN_FILTER_UNLOAD = 0x2
FLT_FILE_NAME_NORMALIZED = 0x1
FLT_FILE_NAME_OPENED = 0x2
FLTFL_IO_OPERATION_NON_CACHED = 0x1
FLTFL_IO_OPERATION_PAGING = 0x2
FLTFL_IO_OPERATION_DO_NOT_UPDATE_BYTE_OFFSET = 0x4
FILE_DEVICE_DISK_FILE_SYSTEM = 0x8
FLT_FSTYPE_NTFS = 2
POOL_TYPES = {0: "NonPagedPool", 1: "PagedPool", 512: "NonPagedPoolNx"}

# access rights (winnt.h) and create dispositions / options (wdm.h)
FILE_READ_DATA = 0x1
FILE_WRITE_DATA = 0x2
FILE_APPEND_DATA = 0x4
FILE_EXECUTE = 0x20
DELETE = 0x10000
GENERIC_ALL_BITS = 0xF0000000
FILE_GENERIC_READ = 0x120089
FILE_GENERIC_WRITE = 0x120116
FILE_SHARE_READ = 0x1
FILE_SUPERSEDE, FILE_OPEN, FILE_CREATE, FILE_OPEN_IF, FILE_OVERWRITE, FILE_OVERWRITE_IF = range(6)
FILE_DIRECTORY_FILE = 0x1
FILE_SYNCHRONOUS_IO_NONALERT = 0x20
FILE_NON_DIRECTORY_FILE = 0x40
# IoStatus.Information of a create
FILE_SUPERSEDED, FILE_OPENED, FILE_CREATED, FILE_OVERWRITTEN = range(4)
IRP_CREATE_OPERATION = 0x80
IRP_WRITE_OPERATION = 0x400
IRP_CLOSE_OPERATION = 0x800
IRP_SYNCHRONOUS_API = 0x4
USER_MODE = 1
FILE_ATTRIBUTE_ARCHIVE = 0x20
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
FILE_OPEN_REPARSE_POINT = 0x00200000
OBJ_KERNEL_HANDLE = 0x200
IO_IGNORE_SHARE_ACCESS_CHECK = 0x800
FILE_DISPOSITION_DELETE = 0x1
FILE_DISPOSITION_POSIX_SEMANTICS = 0x2
FILE_DISPOSITION_INFORMATION_CLASS = 13
FILE_DISPOSITION_INFORMATION_EX_CLASS = 64
FILE_DIRECTORY_INFORMATION_CLASS = 1
STATUS_OBJECT_PATH_NOT_FOUND = 0xC000003A
STATUS_NOT_A_DIRECTORY = 0xC0000103
STATUS_DELETE_PENDING = 0xC0000056
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_NO_MORE_FILES = 0x80000006
STATUS_FLT_VOLUME_NOT_FOUND = 0xC01C0014
STATUS_FLT_INSTANCE_NOT_FOUND = 0xC01C0015

# A system time near 2025 (100 ns since 1601): file times are this plus the
# virtual clock.
SYSTEM_TIME_BASE = 133_800_000_000_000_000

# fltmgr.sys's own code: the operation thread's trampoline and hooks.
FLTMGR_CODE = 0xFFFFF805_40000000
FLTMGR_CODE_SIZE = 0x10000

# The trampoline an operation thread runs (entry: RCX = its block):
#   push rbx; sub rsp, 0x20; mov rbx, rcx
# loop:
#   mov rcx, rbx; call [rbx]            ; the step hook: RAX = next routine or 0
#   test rax, rax; jz out
#   mov rcx, [rbx+0x10]; mov rdx, [rbx+0x18]; mov r8, [rbx+0x20]; mov r9, [rbx+0x28]
#   call rax; mov [rbx+8], rax; jmp loop
# out:
#   add rsp, 0x20; pop rbx; ret
TRAMPOLINE = bytes.fromhex(
    "53" "4883ec20" "4889cb"
    "4889d9" "ff13" "4885c0" "7418"
    "488b4b10" "488b5318" "4c8b4320" "4c8b4b28" "ffd0" "48894308" "ebde"
    "4883c420" "5b" "c3"
)
BLOCK_SIZE = 0x40


def nt_success(status):
    return s32(status) >= 0


def ms(now):
    return (now - 50_000_000) / 10_000


class Registration:
    def __init__(self, m, reg):
        self.addr = reg
        size, version, flags = struct.unpack("<HHI", m.read(reg, 8))
        self.size, self.version, self.flags = size, version, flags
        ctx_reg, op_reg, unload, setup, teardown_query, teardown_start, teardown_done = struct.unpack(
            "<7Q", m.read(reg + 8, 56)
        )
        self.unload = unload
        self.instance_setup = setup
        self.instance_query_teardown = teardown_query
        self.instance_teardown_start = teardown_start
        self.instance_teardown_complete = teardown_done
        self.operations = {}
        if op_reg:
            a = op_reg
            while True:
                major, oflags, pre, post, _res = struct.unpack("<B3xIQQQ", m.read(a, 32))
                if major == 0x80:  # IRP_MJ_OPERATION_END
                    break
                self.operations[major] = {"flags": oflags, "pre": pre, "post": post}
                a += L.FOPREG_SIZE
        self.contexts = []
        if ctx_reg:
            a = ctx_reg
            while True:
                ctype, cflags, cleanup, size_, tag, alloc_cb, free_cb = struct.unpack("<HHxxxxQQI4xQQ", m.read(a, 48))
                if ctype == 0xFFFF:  # FLT_CONTEXT_END
                    break
                self.contexts.append(
                    {
                        "type": ctype,
                        "flags": cflags,
                        "size": size_,
                        "tag": tag,
                        "cleanup": cleanup,
                        "allocate": alloc_cb,
                        "free": free_cb,
                    }
                )
                a += L.FCTXREG_SIZE


# ---------------------------------------------------------------------------
# The volume and its file system
# ---------------------------------------------------------------------------


class FileNode:
    """A file on the volume: its data, id, times, and its stream (the SCB a
    FILE_OBJECT's FsContext points to), which carries the stream context."""

    def __init__(self, volume, path, data, file_id, now, directory=False):
        self.volume = volume
        self.path = path
        self.data = bytearray(data)
        self.file_id = file_id
        self.directory = directory
        self.creation = self.last_access = self.last_write = self.change = now
        self.scb = volume.fm.m.system.alloc(0x200, tag=b"NtFc")  # FsContext
        self.stream_context = None  # Context linked to this stream
        # Bytes appended just before the next FltReadFile of this file is
        # served (a writer that extends the file between the filter's size
        # query and its read), then None.
        self.grow_before_read = None
        # A reparse point (symbolic link, junction, mount point): its tag and
        # where it leads (never followed by anything the model allows).
        self.reparse = None
        # FileDispositionInformation (not POSIX): the name goes when the
        # last handle closes.
        self.delete_pending = False
        # The name was removed (POSIX delete, or the last close of a
        # delete-pending file); open handles keep the file.
        self.unlinked = False

    def allocation_size(self):
        cluster = 4096
        return (len(self.data) + cluster - 1) // cluster * cluster


class Volume:
    def __init__(self, fm, name="\\Device\\HarddiskVolume3", serial=0x1C2D_3E4F_5A6B_7C8D, sector=512, label="Data",
                 guid_name=None):
        self.fm = fm
        self.name = name
        # Its volume GUID name ("\\??\\Volume{...}", no trailing backslash),
        # what a volume mount point's reparse data names, or None.
        self.guid_name = guid_name
        # Its drive letter (\GLOBAL??\C: -> name), or None.
        self.dos_name = "C:"
        self.serial = serial  # NTFS 64-bit serial; FILE_FS_VOLUME_INFORMATION has its low 32 bits
        self.sector = sector
        self.label = label
        self.alignment = 1  # FILE_WORD_ALIGNMENT
        self.files = {}  # lower-case path -> FileNode
        self.next_file_id = 0x0005_0000_0000_0100  # sequence number 5, MFT record 0x100
        # FileDispositionInformationEx with POSIX semantics (NTFS on
        # Windows 10 1709+); False: the file system refuses the class with
        # STATUS_INVALID_PARAMETER (FAT, older NTFS).
        self.posix_delete = True
        # Virtual ms each FltQueryDirectoryFile takes (a slow disk), 0: none.
        self.list_latency_ms = 0
        # Virtual ms each FltWriteFile takes (a slow disk), 0: none.
        self.write_latency_ms = 0
        m = fm.m
        # The root directory ("\\", MFT record 5): opened by its name with
        # the trailing backslash, never listed as anyone's child.
        self.root = FileNode(self, "\\", b"", 0x0005_0000_0000_0005, fm.system_time(), directory=True)
        self.addr = m.system.alloc(0x200, tag=b"FMvo")  # the FLT_VOLUME
        fm.flt_objects[self.addr] = {"kind": "volume", "refs": 1}
        self.device_object = m.system.alloc(L.DEVICE_OBJECT_SIZE, tag=b"Devi")  # the volume's device
        m.w16(self.device_object + L.DEV_TYPE, 3)
        m.w16(self.device_object + L.DEV_SIZE, L.DEVICE_OBJECT_SIZE)
        m.w32(self.device_object + L.DEV_DEVICE_TYPE, FILE_DEVICE_DISK_FILE_SYSTEM)

    def add_file(self, path, data=b"", directory=False):
        if not path.startswith("\\"):
            raise ValueError("volume paths start with a backslash")
        node = FileNode(self, path, data, self.next_file_id, self.fm.system_time(), directory)
        self.next_file_id += 1
        self.files[path.lower()] = node
        return node

    def lookup(self, path):
        return self.files.get(path.lower())

    def add_dir(self, path):
        return self.add_file(path, b"", directory=True)

    def add_reparse(self, path, tag, target, directory=True):
        """A reparse point at ``path`` (IO_REPARSE_TAG_MOUNT_POINT
        0xA0000003 for junctions and volume mount points,
        IO_REPARSE_TAG_SYMLINK 0xA000000C) leading to ``target``."""
        node = self.add_file(path, b"", directory=directory)
        node.reparse = (tag, target)
        return node

    def remove(self, path):
        node = self.files.pop(path.lower(), None)
        if node is not None:
            node.unlinked = True
            self.fm.drop_stream_if_unused(node)
        return node

    def children(self, path):
        """The direct children of directory ``path``, sorted by name."""
        base = path.rstrip("\\").lower() + "\\"
        out = []
        for key, node in self.files.items():
            if key.startswith(base) and "\\" not in key[len(base):] and key != base:
                out.append(node)
        return sorted(out, key=lambda n: n.path.lower())


class Instance:
    def __init__(self, fm, volume):
        self.fm = fm
        self.volume = volume
        self.addr = fm.m.system.alloc(0x200, tag=b"FMis")  # the FLT_INSTANCE
        fm.flt_objects[self.addr] = {"kind": "instance", "refs": 1}
        self.context = None
        self.attached = False
        self.torn_down = False


class Context:
    def __init__(self, addr, ctype, size, tag, cleanup):
        self.addr = addr
        self.type = ctype
        self.size = size
        self.tag = tag
        self.cleanup = cleanup
        self.refs = 1
        self.linked = None  # ("stream", FileNode) | ("instance", Instance)
        self.freed = False


class FileObj:
    """Filter Manager's and the file system's view of one FILE_OBJECT."""

    def __init__(self, addr, instance, path, pid):
        self.addr = addr
        self.instance = instance
        self.path = path
        self.pid = pid
        self.node = None
        self.state = "creating"  # creating | open | cancelled | closed
        self.phase = None  # the callback running on it: pre-create, post-create, ...
        self.cancel_called = False
        self.read = False
        self.write = False
        self.delete = False
        self.own = False  # opened by the driver with FltCreateFileEx2
        self.handle = None
        self.dir_pos = 0  # FltQueryDirectoryFile's enumeration position


class _OwnFileCloser:
    """The last reference of a FILE_OBJECT the driver opened with
    FltCreateFileEx2 went (FltClose and ObfDereferenceObject, in either
    order): IRP_MJ_CLEANUP and IRP_MJ_CLOSE reach the file system (below
    the filter: no callback of ours runs) and the object is freed."""

    def __init__(self, fm, fo):
        self.fm = fm
        self.fo = fo

    def closed_file(self, addr):
        fm, fo = self.fm, self.fo
        if fo.handle is not None:
            raise EmulationError(f"the FILE_OBJECT of {fo.path} lost its last reference while its handle is open")
        o = fm.k.objects[addr]
        o.device = None
        o.refs = 1  # _free_file_object drops the last one itself
        fm.k.emit("flt-close", path=fo.path)
        fm._free_file_object(fo)


class CallbackData:
    def __init__(self, addr, iopb, objects, completion, major, fo, instance, pid):
        self.addr = addr
        self.iopb = iopb
        self.objects = objects
        self.completion = completion
        self.major = major
        self.fo = fo
        self.instance = instance
        self.pid = pid


class Sequence:
    def __init__(self, name, block, gen):
        self.name = name
        self.block = block
        self.gen = gen
        self.started = False
        self.resume = None  # value for the generator after a sleep
        self.done = False


# ---------------------------------------------------------------------------
# Filter Manager
# ---------------------------------------------------------------------------


class FilterManager:
    def __init__(self, kernel):
        self.k = kernel
        self.m = kernel.m
        self.registration = None
        self.filter = None
        self.filtering = False
        self.unregistered = False
        self.flt_objects = {}  # FLT_VOLUME / FLT_INSTANCE address -> {"kind", "refs"}
        # The first volume and its instance (what most scenarios use), and
        # every volume / instance (a second volume is mounted in a folder of
        # the first in the cross-mounts scan).
        self.volume = None
        self.instance = None
        self.volumes = []
        self.instances = []
        self.contexts = {}  # context address -> Context
        self.file_objects = {}  # FILE_OBJECT address -> FileObj
        self.callback_data = {}  # FLT_CALLBACK_DATA address -> CallbackData
        self.names = {}  # FLT_FILE_NAME_INFORMATION address -> references
        self.aligned = {}  # FltAllocatePoolAlignedWithTag buffer -> tag
        self.handles = {}  # handle number -> FileObj (the opener's handles)
        self.next_handle = 1
        self.sequences = {}  # block address -> Sequence
        self.ops = []  # one record per file operation (the report's file_ops)
        self.reads = []  # FltReadFile calls
        self.info_queries = []  # FltQueryInformationFile calls
        self.cancels = []  # FltCancelFileOpen calls
        self.own_opens = []  # FltCreateFileEx2 calls
        self.set_infos = []  # FltSetInformationFile calls
        self.writes = []  # FltWriteFile calls (the driver's own files)
        self.volume_lookups = []  # FltGetVolumeFromName names
        self.fs_controls = []  # FltFsControlFile calls
        self.flushes = []  # FltFlushBuffers calls
        self.dir_queries = 0  # FltQueryDirectoryFile calls
        self.push_locks = {}  # address -> {"shared": set(tid), "exclusive": tid or None}
        self.eprocess = {}  # pid -> the fake EPROCESS FltGetRequestorProcess returns
        self.process_images = {}  # pid -> image path (default: notepad.exe)
        for name in dir(self):
            if name.startswith("api_"):
                self.m.handlers[name[4:]] = getattr(self, name)
        self._map_code()

    # -- fltmgr.sys code: the operation-thread trampoline ---------------------

    def _map_code(self):
        m = self.m
        m._map(FLTMGR_CODE, FLTMGR_CODE_SIZE, UC_PROT_READ | UC_PROT_EXEC)
        m.write(FLTMGR_CODE, TRAMPOLINE)
        self.trampoline = FLTMGR_CODE
        self.step_hook = FLTMGR_CODE + 0x100
        self.nop = FLTMGR_CODE + 0x110
        m.write(self.step_hook, b"\xc3")
        m.write(self.nop, b"\xc3")
        m.hook_code(self.step_hook, "FltpOperationStep", self._step)

    def run_sequence(self, name, gen, on_exit=None):
        """A new emulated thread that runs the guest routines ``gen`` yields,
        one after the other on the same stack: ``("call", fn, [args])`` sends
        back the routine's RAX; ``("sleep", ms)`` waits that long of virtual
        time. Returns the Sequence."""
        block = self.m.system.alloc(BLOCK_SIZE, tag=b"FMop")
        self.m.w64(block, self.step_hook)
        seq = Sequence(name, block, gen)
        self.sequences[block] = seq

        def done(t):
            seq.done = True
            self.m.system.free(block)
            if on_exit:
                on_exit(t)

        self.m.spawn(name, self.trampoline, block, on_exit=done)
        return seq

    def _step(self, m):
        (block,) = m.args(1)
        seq = self.sequences[block]
        if seq.resume is not None:
            value, seq.resume = seq.resume, None
        else:
            value = m.r64(block + 8)
        try:
            if seq.started:
                cmd = seq.gen.send(value)
            else:
                seq.started = True
                cmd = next(seq.gen)
        except StopIteration:
            return 0
        except EmulationError:
            raise
        except Exception:
            raise EmulationError(f"harness error in {seq.name}:\n{traceback.format_exc()}")
        if cmd[0] == "call":
            fn, args = cmd[1], list(cmd[2])
            if len(args) > 4:
                raise EmulationError("an operation step passes at most 4 arguments")
            args += [0] * (4 - len(args))
            m.write(block + 0x10, struct.pack("<4Q", *[a & 0xFFFFFFFFFFFFFFFF for a in args]))
            return fn
        if cmd[0] == "sleep":
            m.write(block + 0x10, b"\0" * 32)

            def wake(status):
                seq.resume = status
                return self.nop

            raise Park(Wait([], m.now + int(cmd[1] * 10_000), on_wake=wake))
        raise EmulationError(f"unknown operation step {cmd!r}")

    # -- registration --------------------------------------------------------

    def api_FltRegisterFilter(self, m):
        driver, reg, out = m.args(3)
        if self.filter is not None:
            raise EmulationError("FltRegisterFilter called twice")
        r = Registration(m, reg)
        if r.size != L.FREG_SIZE or r.version != 0x0203:
            self.k.emit("api", name="FltRegisterFilter", status=0xC000000D, size=r.size, version=r.version)
            return 0xC000000D
        for c in r.contexts:
            if c["allocate"] or c["free"]:
                raise EmulationError(
                    f"context type {c['type']:#x} registers its own allocate/free callbacks: not modelled"
                )
        self.registration = r
        self.filter = m.system.alloc(0x200, tag=b"FltF")
        m.w64(out, self.filter)
        self.k.emit(
            "api",
            name="FltRegisterFilter",
            operations=sorted(r.operations),
            contexts=[c["type"] for c in r.contexts],
        )
        return STATUS_SUCCESS

    def api_FltStartFiltering(self, m):
        (f,) = m.args(1)
        if f != self.filter:
            raise EmulationError("FltStartFiltering with a handle FltRegisterFilter did not return")
        self.filtering = True
        return STATUS_SUCCESS

    def api_FltUnregisterFilter(self, m):
        (f,) = m.args(1)
        if f != self.filter or self.unregistered:
            raise EmulationError("FltUnregisterFilter with an unknown or already unregistered handle")
        for inst in self.instances:
            if inst.attached and not inst.torn_down:
                self._teardown(inst, FLTFL_INSTANCE_TEARDOWN_FILTER_UNLOAD)
        self.unregistered = True
        self.filtering = False
        m.system.free(f)
        return 0

    # -- the volume and the instance ------------------------------------------

    def system_time(self):
        return SYSTEM_TIME_BASE + self.m.now

    def add_volume(self, **kw):
        vol = Volume(self, **kw)
        if any(v.name.lower() == vol.name.lower() for v in self.volumes):
            raise EmulationError(f"two volumes named {vol.name}")
        self.volumes.append(vol)
        if self.volume is None:
            self.volume = vol
        else:
            vol.dos_name = None  # only the first volume has a drive letter
        return vol

    def _volume_named(self, name):
        """The volume FltGetVolumeFromName finds for ``name``: its device
        name, its drive letter ("D:", "\\??\\D:", "\\DosDevices\\D:") or
        its volume GUID name ("\\??\\Volume{...}")."""
        low = name.lower()
        dos = low
        for prefix in ("\\??\\", "\\dosdevices\\"):
            if dos.startswith(prefix):
                dos = dos[len(prefix):]
        for v in self.volumes:
            if low == v.name.lower():
                return v
            if v.dos_name and dos == v.dos_name.lower():
                return v
            if v.guid_name and low == v.guid_name.lower():
                return v
        return None

    def _related_objects(self, instance, fo_addr):
        m = self.m
        objs = m.system.alloc(L.FRO_SIZE, tag=b"FMro")
        m.write(
            objs,
            struct.pack(
                "<HHIQQQQQ", L.FRO_SIZE, 0, 0, self.filter, instance.volume.addr, instance.addr, fo_addr, 0
            ),
        )
        return objs

    def attach(self, volume=None):
        """Mounts ``volume`` (default: the first) under the filter: a new
        instance, the registered InstanceSetupCallback on a thread of its
        own (automatic attachment, disk file system, NTFS). Returns the
        Sequence."""
        volume = volume or self.volume
        if not self.filtering:
            raise EmulationError("attach before FltStartFiltering")
        if any(i.volume is volume for i in self.instances):
            raise EmulationError(f"an instance on {volume.name} exists already")
        inst = Instance(self, volume)
        self.instances.append(inst)
        if self.instance is None:
            self.instance = inst
        rec = {"op": "instance-setup", "status": None}
        self.ops.append(rec)

        def steps():
            objs = self._related_objects(inst, 0)
            setup = self.registration.instance_setup
            status = STATUS_SUCCESS
            if setup:
                status = (
                    yield ("call", setup, [objs, FLTFL_INSTANCE_SETUP_AUTOMATIC_ATTACHMENT, FILE_DEVICE_DISK_FILE_SYSTEM, FLT_FSTYPE_NTFS])
                ) & 0xFFFFFFFF
            self.m.system.free(objs)
            rec["status"] = status
            if nt_success(status):
                inst.attached = True
            else:
                self._teardown(inst, 0, call_driver=False)
            self.k.emit("instance-setup", status=status, attached=inst.attached)

        return self.run_sequence("instance-setup", steps())

    def _teardown(self, inst, reason, call_driver=True):
        """Instance teardown: the driver's teardown callbacks (nested, on the
        calling thread), then Filter Manager drops its references to the
        instance's stream contexts and instance context."""
        r = self.registration
        if call_driver:
            objs = self._related_objects(inst, 0)
            if r.instance_teardown_start:
                self.m.call(r.instance_teardown_start, objs, reason)
            if r.instance_teardown_complete:
                self.m.call(r.instance_teardown_complete, objs, reason)
            self.m.system.free(objs)
        for node in inst.volume.files.values():
            ctx = node.stream_context
            if ctx is not None:
                node.stream_context = None
                ctx.linked = None
                self._release(ctx)
        if inst.context is not None:
            ctx, inst.context = inst.context, None
            ctx.linked = None
            self._release(ctx)
        inst.torn_down = True
        self.k.emit("instance-teardown", reason=reason)

    def drop_stream_if_unused(self, node, closing=None):
        """A file whose name is gone and whose last handle closed: the
        file system tears its stream (SCB) down, and Filter Manager
        releases the stream context linked to it."""
        if any(f.node is node and f.state == "open" and f is not closing for f in self.file_objects.values()):
            return
        ctx = node.stream_context
        if ctx is not None:
            node.stream_context = None
            ctx.linked = None
            self._release(ctx)

    def _instance(self, addr, what):
        inst = next((i for i in self.instances if i.addr == addr), None)
        if inst is None:
            raise EmulationError(f"{what}: {addr:#x} is not an instance of this filter")
        if inst.torn_down:
            raise EmulationError(f"{what}: the instance was torn down")
        return inst

    def _file_object(self, addr, what):
        fo = self.file_objects.get(addr)
        if fo is None:
            raise EmulationError(f"{what}: {addr:#x} is not a FILE_OBJECT of the filtered volume")
        if fo.state in ("closed",):
            raise EmulationError(f"{what}: FILE_OBJECT {addr:#x} ({fo.path}) is already closed")
        return fo

    def _opened_file(self, inst_addr, fo_addr, what):
        """The instance, FILE_OBJECT and opened node an API call names."""
        inst = self._instance(inst_addr, what)
        fo = self._file_object(fo_addr, what)
        return inst, fo, self._opened(fo, what)

    def _opened(self, fo, what):
        if fo.node is None:
            raise EmulationError(f"{what} on {fo.path} before the file system opened it (pre-create)")
        if fo.state == "cancelled":
            raise EmulationError(f"{what} on {fo.path} after FltCancelFileOpen closed it")
        return fo.node

    def api_FltGetVolumeFromInstance(self, m):
        inst_addr, out = m.args(2)
        inst = self._instance(inst_addr, "FltGetVolumeFromInstance")
        self.flt_objects[inst.volume.addr]["refs"] += 1
        m.w64(out, inst.volume.addr)
        return STATUS_SUCCESS

    def api_FltObjectDereference(self, m):
        (obj,) = m.args(1)
        o = self.flt_objects.get(obj)
        if o is None:
            raise EmulationError(f"FltObjectDereference({obj:#x}): not a Filter Manager object")
        if o["refs"] <= 1:
            raise EmulationError(f"FltObjectDereference({obj:#x}) ({o['kind']}): more dereferences than references")
        o["refs"] -= 1
        return 0

    def api_FltGetVolumeProperties(self, m):
        vol_addr, props, length, returned = m.args(4)
        vol = next((v for v in self.volumes if v.addr == vol_addr), None)
        if vol is None:
            raise EmulationError(f"FltGetVolumeProperties({vol_addr:#x}): not a volume")
        names = ["\\FileSystem\\Ntfs", "\\Ntfs", vol.name]
        blobs = [n.encode("utf-16-le") for n in names]
        need = L.FVP_SIZE + sum(len(b) for b in blobs)
        if returned:
            m.w32(returned, need)
        if length < L.FVP_SIZE:
            return STATUS_BUFFER_TOO_SMALL
        m.write(
            props,
            struct.pack("<IIIIHH", FILE_DEVICE_DISK_FILE_SYSTEM, 0, 0, vol.alignment, vol.sector, 0) + b"\0" * 4,
        )
        fields = [L.FVP_FILE_SYSTEM_DRIVER_NAME, L.FVP_FILE_SYSTEM_DEVICE_NAME, L.FVP_REAL_DEVICE_NAME]
        if length < need:
            for f in fields:
                m.write(props + f, b"\0" * 16)
            return STATUS_BUFFER_OVERFLOW
        at = props + L.FVP_SIZE
        for f, b in zip(fields, blobs):
            m.write(at, b)
            m.write(props + f, struct.pack("<HHIQ", len(b), len(b), 0, at))
            at += len(b)
        return STATUS_SUCCESS

    def api_FltQueryVolumeInformation(self, m):
        inst_addr, iosb, buf, length, klass = m.args(5)
        inst = self._instance(inst_addr, "FltQueryVolumeInformation")
        if klass != L.FILE_FS_VOLUME_INFORMATION_CLASS:
            raise EmulationError(f"FltQueryVolumeInformation class {klass}: not modelled")
        vol = inst.volume
        label = vol.label.encode("utf-16-le")
        if length < L.FFVI_LABEL:
            return STATUS_INFO_LENGTH_MISMATCH
        m.write(buf, struct.pack("<qIIB", SYSTEM_TIME_BASE - 10**15, vol.serial & 0xFFFFFFFF, len(label), 1) + b"\0")
        room = length - L.FFVI_LABEL
        m.write(buf + L.FFVI_LABEL, label[:room])
        status = STATUS_SUCCESS if room >= len(label) else STATUS_BUFFER_OVERFLOW
        m.w32(iosb, status)
        m.w64(iosb + 8, L.FFVI_LABEL + min(room, len(label)))
        return status

    # -- contexts ---------------------------------------------------------------

    def api_FltAllocateContext(self, m):
        f, ctype, size, pool_type, out = m.args(5)
        ctype &= 0xFFFF
        pool_type &= 0xFFFFFFFF
        if f != self.filter:
            raise EmulationError("FltAllocateContext with a filter handle FltRegisterFilter did not return")
        if pool_type not in (0, 1, 512):
            raise EmulationError(f"FltAllocateContext pool type {pool_type}")
        if ctype not in (FLT_INSTANCE_CONTEXT, FLT_STREAM_CONTEXT):
            raise EmulationError(f"FltAllocateContext type {ctype:#x}: not modelled")
        reg = None
        for c in self.registration.contexts:
            if c["type"] != ctype:
                continue
            if (
                c["size"] == FLT_VARIABLE_SIZED_CONTEXTS
                or c["size"] == size
                or (c["flags"] & FLTFL_CONTEXT_REGISTRATION_NO_EXACT_SIZE_MATCH and size <= c["size"])
            ):
                reg = c
                break
        if reg is None:
            self.k.emit("api", name="FltAllocateContext", type=ctype, size=size, status=STATUS_FLT_CONTEXT_ALLOCATION_NOT_FOUND)
            return STATUS_FLT_CONTEXT_ALLOCATION_NOT_FOUND
        addr = m.pool.alloc(size, tag=struct.pack("<I", reg["tag"]), fill=0xCD)
        self.contexts[addr] = Context(addr, ctype, size, reg["tag"], reg["cleanup"])
        m.w64(out, addr)
        return STATUS_SUCCESS

    def _context(self, addr, what):
        c = self.contexts.get(addr)
        if c is None:
            raise EmulationError(f"{what}({addr:#x}): not a context FltAllocateContext returned")
        if c.freed or c.refs <= 0:
            raise EmulationError(f"{what}({addr:#x}): the context was already freed (reference count 0)")
        return c

    def _release(self, c):
        c.refs -= 1
        if c.refs > 0:
            return
        if c.linked is not None:
            raise EmulationError("a linked context reached reference count 0 (more releases than references)")
        if c.cleanup:
            self.m.call(c.cleanup, c.addr, c.type)
        c.freed = True
        self.m.pool.free(c.addr, tag=struct.pack("<I", c.tag))

    def caller(self):
        """Where the driver called the current routine from."""
        ret = self.m.r64(self.m.uc.reg_read(UC_X86_REG_RSP))
        return f"{ret:#x} ({self.m.symbolize(ret)})"

    def api_FltReleaseContext(self, m):
        (addr,) = m.args(1)
        if addr == 0:
            raise EmulationError(
                "FltReleaseContext(NULL) called from "
                + self.caller()
                + ": Context 'is required and cannot be NULL' (fltkernel.h docs); Filter Manager "
                "would dereference the context header below NULL (a bug check on Windows)"
            )
        c = self._context(addr, "FltReleaseContext")
        if c.refs == 1 and c.linked is not None:
            raise EmulationError(
                f"FltReleaseContext({addr:#x}): releases Filter Manager's own reference of a context still set on its {c.linked[0]}"
            )
        self._release(c)
        return 0

    def _set_context(self, m, what, kind, owner, get, put, op, new, old_out, ctype):
        c = self._context(new, what)
        if c.type != ctype:
            raise EmulationError(f"{what}: context {new:#x} is of type {c.type:#x}")
        if c.linked is not None:
            raise EmulationError(f"{what}: context {new:#x} is already set on a {c.linked[0]}")
        if op not in (FLT_SET_CONTEXT_REPLACE_IF_EXISTS, FLT_SET_CONTEXT_KEEP_IF_EXISTS):
            raise EmulationError(f"{what}: operation {op}")
        existing = get()
        if existing is not None and op == FLT_SET_CONTEXT_KEEP_IF_EXISTS:
            if old_out:
                existing.refs += 1
                m.w64(old_out, existing.addr)
            return STATUS_FLT_CONTEXT_ALREADY_DEFINED
        if existing is not None:
            existing.linked = None
            if old_out:
                m.w64(old_out, existing.addr)  # Filter Manager's reference passes to the caller
            else:
                self._release(existing)
        elif old_out:
            m.w64(old_out, 0)
        c.refs += 1
        c.linked = (kind, owner)
        put(c)
        return STATUS_SUCCESS

    def api_FltSetInstanceContext(self, m):
        inst_addr, op, new, old_out = m.args(4)
        inst = self._instance(inst_addr, "FltSetInstanceContext")
        return self._set_context(
            m,
            "FltSetInstanceContext",
            "instance",
            inst,
            lambda: inst.context,
            lambda c: setattr(inst, "context", c),
            op & 0xFFFFFFFF,
            new,
            old_out,
            FLT_INSTANCE_CONTEXT,
        )

    def api_FltGetInstanceContext(self, m):
        inst_addr, out = m.args(2)
        inst = self._instance(inst_addr, "FltGetInstanceContext")
        if inst.context is None:
            m.w64(out, 0)
            return STATUS_NOT_FOUND
        inst.context.refs += 1
        m.w64(out, inst.context.addr)
        return STATUS_SUCCESS

    def api_FltSetStreamContext(self, m):
        inst_addr, fo_addr, op, new, old_out = m.args(5)
        self._instance(inst_addr, "FltSetStreamContext")
        fo = self._file_object(fo_addr, "FltSetStreamContext")
        if fo.node is None:
            return STATUS_NOT_SUPPORTED  # no stream yet (pre-create)
        node = self._opened(fo, "FltSetStreamContext")
        return self._set_context(
            m,
            "FltSetStreamContext",
            "stream",
            node,
            lambda: node.stream_context,
            lambda c: setattr(node, "stream_context", c),
            op & 0xFFFFFFFF,
            new,
            old_out,
            FLT_STREAM_CONTEXT,
        )

    def api_FltGetStreamContext(self, m):
        inst_addr, fo_addr, out = m.args(3)
        self._instance(inst_addr, "FltGetStreamContext")
        fo = self._file_object(fo_addr, "FltGetStreamContext")
        m.w64(out, 0)
        if fo.node is None:
            return STATUS_NOT_SUPPORTED
        node = self._opened(fo, "FltGetStreamContext")
        if node.stream_context is None:
            return STATUS_NOT_FOUND
        node.stream_context.refs += 1
        m.w64(out, node.stream_context.addr)
        return STATUS_SUCCESS

    def live_contexts(self):
        return [
            {"type": c.type, "refs": c.refs, "linked": c.linked[0] if c.linked else None}
            for c in self.contexts.values()
            if not c.freed
        ]

    # -- pool -------------------------------------------------------------------

    def api_FltAllocatePoolAlignedWithTag(self, m):
        inst_addr, pool_type, size, tag = m.args(4)
        self._instance(inst_addr, "FltAllocatePoolAlignedWithTag")
        pool_type &= 0xFFFFFFFF
        tag &= 0xFFFFFFFF
        if pool_type not in POOL_TYPES:
            raise EmulationError(f"FltAllocatePoolAlignedWithTag pool type {pool_type}")
        if tag == 0:
            raise EmulationError("FltAllocatePoolAlignedWithTag with tag 0")
        buf = m.pool.alloc(size, tag=struct.pack("<I", tag), fill=0xCD)  # page-aligned: any sector alignment
        self.aligned[buf] = tag
        return buf

    def api_FltFreePoolAlignedWithTag(self, m):
        inst_addr, buf, tag = m.args(3)
        self._instance(inst_addr, "FltFreePoolAlignedWithTag")
        tag &= 0xFFFFFFFF
        if buf not in self.aligned:
            raise EmulationError(f"FltFreePoolAlignedWithTag({buf:#x}): not from FltAllocatePoolAlignedWithTag (or freed twice)")
        if self.aligned[buf] != tag:
            raise EmulationError(
                f"FltFreePoolAlignedWithTag({buf:#x}) with tag {struct.pack('<I', tag)!r}, allocated with {struct.pack('<I', self.aligned[buf])!r}"
            )
        del self.aligned[buf]
        m.pool.free(buf, tag=struct.pack("<I", tag))
        return 0

    # -- waits ------------------------------------------------------------------

    def api_FltCancellableWaitForSingleObject(self, m):
        obj, timeout, data = m.args(3)
        if data and data not in self.callback_data:
            raise EmulationError(f"FltCancellableWaitForSingleObject with callback data {data:#x} of no current operation")
        # Nothing cancels an operation in this model: the wait is KeWaitForSingleObject's.
        return self.k._wait(m, [obj], False, timeout)

    # -- create: ECPs, names, information ------------------------------------------

    def _data(self, addr, what):
        cd = self.callback_data.get(addr)
        if cd is None:
            raise EmulationError(f"{what}({addr:#x}): not the FLT_CALLBACK_DATA of a current operation")
        return cd

    def api_FltGetEcpListFromCallbackData(self, m):
        f, data, out = m.args(3)
        if f != self.filter:
            raise EmulationError("FltGetEcpListFromCallbackData with an unknown filter")
        cd = self._data(data, "FltGetEcpListFromCallbackData")
        if cd.major != L.IRP_MJ_CREATE:
            raise EmulationError("FltGetEcpListFromCallbackData outside a create")
        m.w64(out, 0)  # no ECP list on any create of this model
        return STATUS_SUCCESS

    def api_FltFindExtraCreateParameter(self, m):
        f, ecp_list, guid, ctx_out, size_out = m.args(5)
        raise EmulationError(f"FltFindExtraCreateParameter on ECP list {ecp_list:#x}: no create of this model has one")

    def api_FltIsEcpFromUserMode(self, m):
        f, ecp = m.args(2)
        raise EmulationError(f"FltIsEcpFromUserMode({ecp:#x}): no create of this model has ECPs")

    def api_FltGetRequestorProcessId(self, m):
        (data,) = m.args(1)
        return self._data(data, "FltGetRequestorProcessId").pid

    def api_FltGetRequestorProcess(self, m):
        (data,) = m.args(1)
        pid = self._data(data, "FltGetRequestorProcess").pid
        addr = self.eprocess.get(pid)
        if addr is None:
            addr = self.eprocess[pid] = self.m.system.alloc(0x100, tag=b"Proc")
        return addr

    def api_SeLocateProcessImageName(self, m):
        process, out = m.args(2)
        pid = next((p for p, a in self.eprocess.items() if a == process), None)
        if pid is None:
            raise EmulationError(f"SeLocateProcessImageName({process:#x}): not an EPROCESS the model handed out")
        image = self.process_images.get(pid, "\\Device\\HarddiskVolume3\\Windows\\System32\\notepad.exe")
        data = image.encode("utf-16-le")
        # one pool block: the UNICODE_STRING, then its buffer (freed with ExFreePool)
        block = self.m.pool.alloc(16 + len(data) + 2, tag=b"SeIn")
        self.m.write(block, struct.pack("<HHIQ", len(data), len(data) + 2, 0, block + 16) + data + b"\0\0")
        m.w64(out, block)
        self.k.emit("api", name="SeLocateProcessImageName", pid=pid, image=image)
        return STATUS_SUCCESS

    def api_FltIsDirectory(self, m):
        fo_addr, inst_addr, out = m.args(3)
        self._instance(inst_addr, "FltIsDirectory")
        node = self._opened(self._file_object(fo_addr, "FltIsDirectory"), "FltIsDirectory")
        m.w8(out, 1 if node.directory else 0)
        return STATUS_SUCCESS

    def api_FltCancelFileOpen(self, m):
        inst_addr, fo_addr = m.args(2)
        self._instance(inst_addr, "FltCancelFileOpen")
        fo = self._file_object(fo_addr, "FltCancelFileOpen")
        if fo.phase != "post-create":
            raise EmulationError(f"FltCancelFileOpen on {fo.path} outside its post-create (phase {fo.phase})")
        if fo.node is None or fo.state != "open":
            raise EmulationError(f"FltCancelFileOpen on {fo.path}, whose create did not succeed (or was cancelled already)")
        fo.cancel_called = True
        fo.state = "cancelled"
        self.cancels.append({"path": fo.path, "t_ms": ms(m.now)})
        self.k.emit("api", name="FltCancelFileOpen", path=fo.path)
        return 0

    def api_FltGetFileNameInformation(self, m):
        data, options, out = m.args(3)
        cd = self._data(data, "FltGetFileNameInformation")
        fmt = options & 0xFF
        query = options & 0xFF00
        if fmt not in (FLT_FILE_NAME_NORMALIZED, FLT_FILE_NAME_OPENED):
            raise EmulationError(f"FltGetFileNameInformation format {fmt:#x}: not modelled")
        if query not in (0x100, 0x200, 0x300, 0x400):
            raise EmulationError(f"FltGetFileNameInformation query method {query:#x}")
        fo = cd.fo
        if fo.node is None:
            raise EmulationError("FltGetFileNameInformation in pre-create: not modelled")
        node = self._opened(fo, "FltGetFileNameInformation")
        full = node.volume.name + (node.path if fmt == FLT_FILE_NAME_NORMALIZED else fo.path)
        blob = full.encode("utf-16-le")
        info = m.system.alloc(L.FFNI_SIZE + len(blob), tag=b"FMfn")
        m.write(info, b"\0" * L.FFNI_SIZE)
        buf = info + L.FFNI_SIZE
        m.write(buf, blob)
        m.w16(info + L.FFNI_SIZE_FIELD, L.FFNI_SIZE)
        m.w16(info + L.FFNI_NAMES_PARSED, 0)
        m.w32(info + L.FFNI_FORMAT, fmt)
        m.write(info + L.FFNI_NAME, struct.pack("<HHIQ", len(blob), len(blob), 0, buf))
        vol = len(node.volume.name) * 2
        m.write(info + L.FFNI_VOLUME, struct.pack("<HHIQ", vol, vol, 0, buf))
        self.names[info] = {"refs": 1, "text": full}
        m.w64(out, info)
        return STATUS_SUCCESS

    def api_FltParseFileNameInformation(self, m):
        (info,) = m.args(1)
        n = self.names.get(info)
        if n is None or n["refs"] <= 0:
            raise EmulationError(f"FltParseFileNameInformation({info:#x}): not a referenced name from FltGetFileNameInformation")
        full = n["text"]
        buf = m.r64(info + L.FFNI_NAME + 8)
        vol = m.r16(info + L.FFNI_VOLUME) // 2
        rest = full[vol:]
        last = rest.rfind("\\")
        parent_at, final_at = vol, vol + last + 1
        final = full[final_at:]
        colon = final.find(":")
        if colon >= 0:
            stream_at, final_end = final_at + colon, final_at + colon
        else:
            stream_at, final_end = len(full), len(full)
        base = full[final_at:final_end]
        dot = base.rfind(".")
        ext_at, ext_end = (final_at + dot + 1, final_end) if dot >= 0 else (final_end, final_end)

        def us(start, end):
            return struct.pack("<HHIQ", (end - start) * 2, (end - start) * 2, 0, buf + start * 2)

        m.write(info + L.FFNI_SHARE, struct.pack("<HHIQ", 0, 0, 0, 0))
        m.write(info + L.FFNI_EXTENSION, us(ext_at, ext_end))
        m.write(info + L.FFNI_STREAM, us(stream_at, len(full)))
        m.write(info + L.FFNI_FINAL_COMPONENT, us(final_at, final_end))
        m.write(info + L.FFNI_PARENT_DIR, us(parent_at, final_at))
        m.w16(info + L.FFNI_NAMES_PARSED, 0xF)  # FINAL_COMPONENT | EXTENSION | STREAM | PARENT_DIR
        return STATUS_SUCCESS

    def api_FltReleaseFileNameInformation(self, m):
        (info,) = m.args(1)
        n = self.names.get(info)
        if n is None or n["refs"] <= 0:
            raise EmulationError(f"FltReleaseFileNameInformation({info:#x}): not a referenced name (released twice?)")
        n["refs"] -= 1
        if n["refs"] == 0:
            m.system.free(info)
        return 0

    def live_names(self):
        return [n["text"] for n in self.names.values() if n["refs"] > 0]

    def api_FltQueryInformationFile(self, m):
        inst_addr, fo_addr, buf, length, klass, returned = m.args(6)
        self._instance(inst_addr, "FltQueryInformationFile")
        node = self._opened(self._file_object(fo_addr, "FltQueryInformationFile"), "FltQueryInformationFile")
        klass &= 0xFFFFFFFF
        length &= 0xFFFFFFFF
        rec = {"path": node.path, "class": klass, "thread": self._thread_name(), "t_ms": ms(m.now)}
        self.info_queries.append(rec)
        if klass == L.FILE_STANDARD_INFORMATION_CLASS:
            rec["end_of_file"] = len(node.data)
            self.k.emit("flt-query-info", **rec)
        if klass == L.FILE_ID_INFORMATION_CLASS:
            data = struct.pack("<QQQ", node.volume.serial, node.file_id, 0)
        elif klass == L.FILE_INTERNAL_INFORMATION_CLASS:
            data = struct.pack("<Q", node.file_id)
        elif klass == L.FILE_STANDARD_INFORMATION_CLASS:
            pending = 1 if node.delete_pending or node.unlinked else 0
            data = struct.pack("<qqIBBxx", node.allocation_size(), len(node.data), 1, pending, 1 if node.directory else 0)
        elif klass == L.FILE_BASIC_INFORMATION_CLASS:
            attrs = FILE_ATTRIBUTE_DIRECTORY if node.directory else FILE_ATTRIBUTE_ARCHIVE
            if node.reparse:
                attrs |= FILE_ATTRIBUTE_REPARSE_POINT
            data = struct.pack("<qqqqI4x", node.creation, node.last_access, node.last_write, node.change, attrs)
        else:
            raise EmulationError(f"FltQueryInformationFile class {klass}: not modelled")
        if length < len(data):
            return STATUS_INFO_LENGTH_MISMATCH
        m.write(buf, data)
        if returned:
            m.w32(returned, len(data))
        return STATUS_SUCCESS

    def _thread_name(self):
        return self.m.current.name if self.m.current is not None else None

    # -- reads by the driver (the host's ReadRequests) ----------------------------

    def api_FltReadFile(self, m):
        """A synchronous FltReadFile as a file system answers it
        (Windows-driver-samples filesys/fastfat/read.c and filesys/cdfs/read.c,
        FatCommonRead / CdCommonRead; NTFS alike): a read starting at or past
        the end of file fails with STATUS_END_OF_FILE and 0 bytes; otherwise
        the length is cut to the end of file and BytesRead
        (IoStatus.Information) is the cut count, not rounded up to a sector,
        though a non-cached read transfers whole sectors (the tail of the
        last one is zero). Non-cached reads must be sector-aligned in offset
        and length, and the buffer aligned to the device's alignment."""
        inst_addr, fo_addr, offset_ptr, length, buf, flags, read_out, callback, cb_ctx = m.args(9)
        inst, fo, node = self._opened_file(inst_addr, fo_addr, "FltReadFile")
        length &= 0xFFFFFFFF
        flags &= 0xFFFFFFFF
        if callback:
            raise EmulationError("asynchronous FltReadFile (a completion callback): not modelled")
        if flags & FLTFL_IO_OPERATION_PAGING:
            raise EmulationError("FltReadFile with FLTFL_IO_OPERATION_PAGING: not modelled")
        if offset_ptr:
            offset = m.r64(offset_ptr)
        else:
            offset = m.r64(fo.addr + L.FO_CURRENT_BYTE_OFFSET)
        rec = {
            "path": node.path, "offset": offset, "length": length, "flags": flags,
            "thread": self._thread_name(), "t_ms": ms(m.now),
        }
        self.reads.append(rec)
        sector = inst.volume.sector
        if flags & FLTFL_IO_OPERATION_NON_CACHED and (
            offset % sector or length % sector or buf & inst.volume.alignment
        ):
            # What NTFS answers a misaligned non-cached read.
            rec["status"] = STATUS_INVALID_PARAMETER
            self.k.emit("flt-read", **rec)
            if read_out:
                m.w32(read_out, 0)
            return STATUS_INVALID_PARAMETER
        if node.grow_before_read is not None:
            node.data.extend(node.grow_before_read)
            node.grow_before_read = None
            self.k.emit("file-grew", path=node.path, size=len(node.data))
        size = len(node.data)
        if offset >= size:
            status, n = STATUS_END_OF_FILE, 0
        else:
            n = min(length, size - offset)
            m.write(buf, bytes(node.data[offset : offset + n]))
            if flags & FLTFL_IO_OPERATION_NON_CACHED:
                # whole sectors are transferred: the tail of the last one is zero
                tail = min(length, (n + sector - 1) // sector * sector) - n
                m.write(buf + n, b"\0" * tail)
            status = STATUS_SUCCESS
        if read_out:
            m.w32(read_out, n)
        if not flags & FLTFL_IO_OPERATION_DO_NOT_UPDATE_BYTE_OFFSET:
            m.w64(fo.addr + L.FO_CURRENT_BYTE_OFFSET, offset + n)
        rec["status"] = status
        rec["read"] = n
        self.k.emit("flt-read", **rec)
        return status

    # -- the driver's own opens (host actions) -----------------------------------

    def api_FltGetVolumeFromName(self, m):
        f, name_ptr, out = m.args(3)
        if f != self.filter:
            raise EmulationError("FltGetVolumeFromName with a handle FltRegisterFilter did not return")
        name = m.unicode_string(name_ptr)
        self.volume_lookups.append(name)
        # The forms the documentation lists: "\Device\HarddiskVolume1",
        # "\DosDevices\D:", "\??\D:", "D:"; and a volume GUID name.
        vol = self._volume_named(name)
        if vol is None:
            return STATUS_FLT_VOLUME_NOT_FOUND
        self.flt_objects[vol.addr]["refs"] += 1
        m.w64(out, vol.addr)
        return STATUS_SUCCESS

    def api_FltGetVolumeName(self, m):
        vol_addr, us, needed_out = m.args(3)
        vol = next((v for v in self.volumes if v.addr == vol_addr), None)
        if vol is None:
            raise EmulationError("FltGetVolumeName: not a volume Filter Manager gave")
        if self.flt_objects[vol_addr]["refs"] < 2:
            raise EmulationError("FltGetVolumeName on a volume the caller holds no reference to")
        data = vol.name.encode("utf-16-le")
        if needed_out:
            m.w32(needed_out, len(data))
        if not us:
            return STATUS_INVALID_PARAMETER
        maximum = m.r16(us + 2)
        if maximum < len(data):
            return STATUS_BUFFER_TOO_SMALL
        m.write(m.r64(us + 8), data)
        m.w16(us, len(data))
        return STATUS_SUCCESS

    def api_FltGetVolumeInstanceFromName(self, m):
        f, vol_addr, name_ptr, out = m.args(4)
        vol = next((v for v in self.volumes if v.addr == vol_addr), None)
        if f != self.filter or vol is None:
            raise EmulationError("FltGetVolumeInstanceFromName: not our filter or volume")
        o = self.flt_objects[vol_addr]
        if o["refs"] < 2:
            raise EmulationError("FltGetVolumeInstanceFromName on a volume the caller holds no reference to")
        inst = next((i for i in self.instances if i.volume is vol), None)
        if inst is None or not inst.attached or inst.torn_down:
            return STATUS_FLT_INSTANCE_NOT_FOUND
        self.flt_objects[inst.addr]["refs"] += 1
        m.w64(out, inst.addr)
        return STATUS_SUCCESS

    def _resolve(self, vol, path, options, parent_only=False):
        """The file system's path walk for an open below the filter: the
        node, or an error status. A reparse point on the way (or at the
        end without FILE_OPEN_REPARSE_POINT) would be followed: the model
        refuses that outright, so a driver that could loop through a
        junction fails the scenario. "\\" is the root directory. With
        ``parent_only`` the walk stops at the last component's directory
        (a create): that directory's node, or an error."""
        parts = [p for p in path.split("\\") if p]
        if not parts:
            return (None, STATUS_OBJECT_NAME_INVALID) if parent_only else (vol.root, STATUS_SUCCESS)
        if parent_only:
            parts = parts[:-1]
            if not parts:
                return vol.root, STATUS_SUCCESS
        cur = ""
        node = None
        for i, part in enumerate(parts):
            cur += "\\" + part
            node = vol.lookup(cur)
            last = i == len(parts) - 1 and not parent_only
            if node is None:
                return None, STATUS_OBJECT_NAME_NOT_FOUND if last else STATUS_OBJECT_PATH_NOT_FOUND
            if node.reparse and (not last or not options & FILE_OPEN_REPARSE_POINT):
                raise EmulationError(f"an open below the filter would follow the reparse point {cur} -> {node.reparse[1]}")
            if not last and not node.directory:
                return None, STATUS_OBJECT_PATH_NOT_FOUND
        return node, STATUS_SUCCESS

    def api_FltCreateFileEx2(self, m):
        (f, inst_addr, handle_out, fo_out, access, oa, iosb, alloc, attrs, share, disposition, options,
         ea, ea_len, flags, driver_ctx) = m.args(16)
        if f != self.filter:
            raise EmulationError("FltCreateFileEx2 with a handle FltRegisterFilter did not return")
        inst = self._instance(inst_addr, "FltCreateFileEx2")
        if self.flt_objects[inst.addr]["refs"] < 2:
            raise EmulationError("FltCreateFileEx2 on an instance the caller holds no reference to")
        name = m.unicode_string(m.r64(oa + L.OA_OBJECT_NAME))
        if not m.r32(oa + L.OA_ATTRIBUTES) & OBJ_KERNEL_HANDLE:
            raise EmulationError(f"FltCreateFileEx2({name}) without OBJ_KERNEL_HANDLE")
        if fo_out == 0:
            raise EmulationError("FltCreateFileEx2 without a FileObject pointer: not modelled")
        access &= 0xFFFFFFFF
        options &= 0xFFFFFFFF
        disposition &= 0xFFFFFFFF
        flags &= 0xFFFFFFFF
        vol = inst.volume
        root = m.r64(oa + L.OA_ROOT_DIRECTORY)
        if root:
            # Relative to a directory the driver holds open (a kernel handle
            # of its own open on this volume): one component.
            parent = self._own_handle(root, f"FltCreateFileEx2({name}) RootDirectory")
            if not parent.node.directory:
                raise EmulationError(f"FltCreateFileEx2({name}) relative to {parent.node.path}, not a directory")
            if "\\" in name or not name:
                raise EmulationError(f"FltCreateFileEx2 relative name {name!r}: one component expected")
            path = parent.node.path.rstrip("\\") + "\\" + name
            full = vol.name + path
        else:
            full = name
            if not name.lower().startswith(vol.name.lower() + "\\"):
                raise EmulationError(f"FltCreateFileEx2({name}): not a name on the instance's volume {vol.name}")
            path = name[len(vol.name):]
        rec = {"path": full, "access": access, "options": options, "flags": flags, "disposition": disposition,
               "relative": bool(root), "thread": self._thread_name(), "t_ms": ms(m.now)}
        self.own_opens.append(rec)
        if disposition not in (FILE_OPEN, FILE_CREATE):
            raise EmulationError(f"FltCreateFileEx2 disposition {disposition}: not modelled")
        created = False
        if disposition == FILE_CREATE:
            parent, status = self._resolve(vol, path, options, parent_only=True)
            node = None
            if parent is not None:
                if not parent.directory or parent.reparse:
                    status = STATUS_OBJECT_PATH_NOT_FOUND
                elif vol.lookup(path) is not None:
                    status = STATUS_OBJECT_NAME_COLLISION
                elif options & FILE_DIRECTORY_FILE:
                    raise EmulationError("FltCreateFileEx2 creating a directory: not modelled")
                else:
                    node = vol.add_file(path, b"")
                    created = True
                    self.k.emit("file-created", path=path)
        else:
            node, status = self._resolve(vol, path, options)
        if node is not None and not created:
            if node.delete_pending:
                status = STATUS_DELETE_PENDING
            elif node.directory and options & FILE_NON_DIRECTORY_FILE:
                status = STATUS_FILE_IS_A_DIRECTORY
            elif not node.directory and options & FILE_DIRECTORY_FILE:
                status = STATUS_NOT_A_DIRECTORY
        rec["status"] = status
        self.k.emit("flt-create", **rec)
        m.w32(iosb, status)
        if status != STATUS_SUCCESS:
            return status
        fo = self._new_file_object(inst, node.path, 4)
        fo.node = node
        fo.state = "open"
        fo.own = True
        fo.read = bool(access & (FILE_READ_DATA | FILE_EXECUTE))
        fo.write = bool(access & (FILE_WRITE_DATA | FILE_APPEND_DATA))
        fo.delete = bool(access & DELETE)
        m.w64(fo.addr + L.FO_FS_CONTEXT, node.scb)
        o = self.k.objects[fo.addr]
        o.refs = 2  # the handle's and the one returned in FileObject
        o.device = _OwnFileCloser(self, fo)
        h = self.k.new_handle(fo.addr)
        fo.handle = h
        m.w64(handle_out, h)
        m.w64(fo_out, fo.addr)
        m.w64(iosb + 8, FILE_CREATED if created else FILE_OPENED)
        return STATUS_SUCCESS

    def _own_handle(self, h, what):
        """The open FileObj behind a kernel handle FltCreateFileEx2 gave."""
        target = self.k.handles.get(h)
        fo = self.file_objects.get(target) if isinstance(target, int) else None
        if fo is None or not fo.own or fo.state != "open":
            raise EmulationError(f"{what}: {h:#x} is not an open handle FltCreateFileEx2 returned")
        return fo

    def api_FltWriteFile(self, m):
        """A synchronous cached FltWriteFile on a file the driver opened
        itself (a restore's temporary file): the data lands at the offset,
        the file grows as needed."""
        inst_addr, fo_addr, offset_ptr, length, buf, flags, written_out, callback, cb_ctx = m.args(9)
        _inst, fo, node = self._opened_file(inst_addr, fo_addr, "FltWriteFile")
        length &= 0xFFFFFFFF
        flags &= 0xFFFFFFFF
        if callback:
            raise EmulationError("asynchronous FltWriteFile (a completion callback): not modelled")
        if flags:
            raise EmulationError(f"FltWriteFile flags {flags:#x}: not modelled")
        if not fo.own:
            raise EmulationError(f"FltWriteFile on {node.path}: not a file the driver opened")
        if not offset_ptr:
            raise EmulationError("FltWriteFile without a byte offset: not modelled")
        offset = m.r64(offset_ptr)
        rec = {"path": node.path, "offset": offset, "length": length, "thread": self._thread_name(), "t_ms": ms(m.now)}
        self.writes.append(rec)
        if not fo.write:
            status, n = STATUS_ACCESS_DENIED, 0
        else:
            data = m.read(buf, length)
            if len(node.data) < offset:
                node.data.extend(b"\0" * (offset - len(node.data)))
            node.data[offset : offset + length] = data
            node.last_write = node.change = self.system_time()
            status, n = STATUS_SUCCESS, length
        if written_out:
            m.w32(written_out, n)
        rec["status"] = status
        self.k.emit("flt-write", **rec)
        if node.volume.write_latency_ms:
            # A slow disk: the caller's thread waits that long.
            w = Wait([], m.now + int(node.volume.write_latency_ms * 10_000))
            w.on_wake = lambda _status: status
            raise Park(w)
        return status

    def api_FltFlushBuffers(self, m):
        inst_addr, fo_addr = m.args(2)
        _inst, fo, node = self._opened_file(inst_addr, fo_addr, "FltFlushBuffers")
        self.flushes.append(node.path)
        return STATUS_SUCCESS if fo.write else STATUS_ACCESS_DENIED

    def api_FltClose(self, m):
        (h,) = m.args(1)
        target = self.k.handles.get(h)
        fo = self.file_objects.get(target) if isinstance(target, int) else None
        if fo is None or not fo.own:
            raise EmulationError(f"FltClose({h:#x}): not a handle FltCreateFileEx2 returned")
        del self.k.handles[h]
        fo.handle = None
        self.k.dereference(fo.addr)
        return STATUS_SUCCESS

    def api_FltSetInformationFile(self, m):
        inst_addr, fo_addr, buf, length, klass = m.args(5)
        _inst, fo, node = self._opened_file(inst_addr, fo_addr, "FltSetInformationFile")
        klass &= 0xFFFFFFFF
        length &= 0xFFFFFFFF
        rec = {"path": node.path, "class": klass, "thread": self._thread_name(), "t_ms": ms(m.now)}
        self.set_infos.append(rec)
        vol = node.volume
        if klass == FILE_DISPOSITION_INFORMATION_EX_CLASS:
            if length < 4:
                status = STATUS_INFO_LENGTH_MISMATCH
            elif not vol.posix_delete:
                status = STATUS_INVALID_PARAMETER
            else:
                flags = m.r32(buf)
                rec["flags"] = flags
                if not fo.delete:
                    status = STATUS_ACCESS_DENIED
                elif flags & FILE_DISPOSITION_DELETE and flags & FILE_DISPOSITION_POSIX_SEMANTICS:
                    # POSIX semantics: the name goes now; open handles keep the file
                    vol.remove(node.path)
                    self.k.emit("file-removed", path=node.path, how="posix")
                    status = STATUS_SUCCESS
                elif flags & FILE_DISPOSITION_DELETE:
                    node.delete_pending = True
                    status = STATUS_SUCCESS
                else:
                    node.delete_pending = False
                    status = STATUS_SUCCESS
        elif klass == FILE_DISPOSITION_INFORMATION_CLASS:
            if not fo.delete:
                status = STATUS_ACCESS_DENIED
            else:
                node.delete_pending = bool(m.read(buf, 1)[0])
                rec["delete"] = node.delete_pending
                status = STATUS_SUCCESS
        elif klass == L.FILE_END_OF_FILE_INFORMATION_CLASS:
            if not fo.write:
                status = STATUS_ACCESS_DENIED
            else:
                eof = s64(m.r64(buf))
                rec["end_of_file"] = eof
                if eof < len(node.data):
                    del node.data[eof:]
                else:
                    node.data.extend(b"\0" * (eof - len(node.data)))
                node.last_write = node.change = self.system_time()
                status = STATUS_SUCCESS
        elif klass == L.FILE_RENAME_INFORMATION_CLASS:
            status = self._rename(m, fo, node, buf, length, rec)
        else:
            raise EmulationError(f"FltSetInformationFile class {klass}: not modelled")
        rec["status"] = status
        self.k.emit("flt-set-info", **rec)
        return status

    def _rename(self, m, fo, node, buf, length, rec):
        """FileRenameInformation as NTFS answers it: the new name relative
        to RootDirectory (or a full name on this volume); an existing
        target fails with STATUS_OBJECT_NAME_COLLISION unless
        ReplaceIfExists. The target's directory is walked like an open
        (no reparse point followed)."""
        if length < L.RENAME_NAME:
            return STATUS_INFO_LENGTH_MISMATCH
        replace = m.read(buf, 1)[0] != 0
        root = m.r64(buf + L.RENAME_ROOT_DIRECTORY)
        nlen = m.r32(buf + L.RENAME_NAME_LENGTH)
        if L.RENAME_NAME + nlen > length:
            return STATUS_INFO_LENGTH_MISMATCH
        name = m.read(buf + L.RENAME_NAME, nlen).decode("utf-16-le")
        vol = node.volume
        if root:
            parent = self._own_handle(root, "FileRenameInformation RootDirectory")
            if "\\" in name or not name:
                raise EmulationError(f"rename relative name {name!r}: one component expected")
            target = parent.node.path.rstrip("\\") + "\\" + name
        else:
            if not name.lower().startswith(vol.name.lower() + "\\"):
                raise EmulationError(f"rename to {name}: not a full name on this volume")
            target = name[len(vol.name):]
        rec["target"] = target
        rec["replace"] = replace
        if not fo.delete:
            return STATUS_ACCESS_DENIED
        parent, status = self._resolve(vol, target, FILE_OPEN_REPARSE_POINT, parent_only=True)
        if parent is None:
            return status
        if not parent.directory or parent.reparse:
            return STATUS_OBJECT_PATH_NOT_FOUND
        existing = vol.lookup(target)
        if existing is not None and existing is not node:
            if not replace:
                return STATUS_OBJECT_NAME_COLLISION
            raise EmulationError("a rename replacing a file: not modelled")
        vol.files.pop(node.path.lower(), None)
        old = node.path
        node.path = target
        vol.files[target.lower()] = node
        self.k.emit("file-renamed", path=old, target=target)
        return STATUS_SUCCESS

    def api_FltFsControlFile(self, m):
        """FSCTL_GET_REPARSE_POINT as NTFS answers it for a name-surrogate
        mount point (junction or volume mount point): a REPARSE_DATA_BUFFER
        with the MountPointReparseBuffer (substitute name, then print name,
        each NUL-terminated), STATUS_BUFFER_OVERFLOW when it does not fit,
        STATUS_NOT_A_REPARSE_POINT on anything else."""
        inst_addr, fo_addr, code, inbuf, inlen, outbuf, outlen, returned = m.args(8)
        _inst, fo, node = self._opened_file(inst_addr, fo_addr, "FltFsControlFile")
        code &= 0xFFFFFFFF
        outlen &= 0xFFFFFFFF
        if code != FSCTL_GET_REPARSE_POINT:
            raise EmulationError(f"FltFsControlFile code {code:#x}: not modelled")
        self.fs_controls.append({"path": node.path, "code": code, "thread": self._thread_name()})
        if returned:
            m.w32(returned, 0)
        if not node.reparse:
            return STATUS_NOT_A_REPARSE_POINT
        tag, target = node.reparse
        if tag != IO_REPARSE_TAG_MOUNT_POINT:
            raise EmulationError(f"FSCTL_GET_REPARSE_POINT of tag {tag:#x}: not modelled")
        subst = target.encode("utf-16-le")
        printed = b""
        path = subst + b"\0\0" + printed + b"\0\0"
        body = struct.pack("<HHHH", 0, len(subst), len(subst) + 2, len(printed)) + path
        data = struct.pack("<IHH", tag, len(body), 0) + body
        if outlen < len(data):
            return STATUS_BUFFER_OVERFLOW
        m.write(outbuf, data)
        if returned:
            m.w32(returned, len(data))
        return STATUS_SUCCESS

    def api_FltQueryDirectoryFile(self, m):
        inst_addr, fo_addr, buf, length, klass, single, name_ptr, restart, returned = m.args(9)
        _inst, fo, node = self._opened_file(inst_addr, fo_addr, "FltQueryDirectoryFile")
        klass &= 0xFFFFFFFF
        length &= 0xFFFFFFFF
        if klass != FILE_DIRECTORY_INFORMATION_CLASS:
            raise EmulationError(f"FltQueryDirectoryFile class {klass}: not modelled")
        if name_ptr:
            raise EmulationError("FltQueryDirectoryFile with a file-name filter: not modelled")
        if not single & 0xFF:
            raise EmulationError("FltQueryDirectoryFile returning several entries: not modelled")
        if not node.directory:
            return STATUS_INVALID_PARAMETER
        self.dir_queries += 1
        if restart & 0xFF:
            fo.dir_pos = 0
        # "." and ".." first, as NTFS lists them, then the children by name
        entries = [(".", node), ("..", node)] + [(c.path.rsplit("\\", 1)[1], c) for c in node.volume.children(node.path)]
        if fo.dir_pos >= len(entries):
            if returned:
                m.w32(returned, 0)
            return STATUS_NO_MORE_FILES
        name, child = entries[fo.dir_pos]
        encoded = name.encode("utf-16-le")
        attrs = FILE_ATTRIBUTE_DIRECTORY if child.directory else FILE_ATTRIBUTE_ARCHIVE
        if child.reparse:
            attrs |= FILE_ATTRIBUTE_REPARSE_POINT
        data = struct.pack(
            "<IIqqqqqqII", 0, 0, child.creation, child.last_access, child.last_write, child.change,
            len(child.data), child.allocation_size(), attrs, len(encoded),
        ) + encoded
        if len(data) > length:
            return STATUS_BUFFER_OVERFLOW
        fo.dir_pos += 1
        m.write(buf, data)
        if returned:
            m.w32(returned, len(data))
        if node.volume.list_latency_ms:
            # A slow disk: the caller's thread waits that long for the entry.
            w = Wait([], m.now + int(node.volume.list_latency_ms * 10_000))
            w.on_wake = lambda status: STATUS_SUCCESS
            raise Park(w)
        return STATUS_SUCCESS

    # -- push locks -------------------------------------------------------------

    def _push_lock(self, addr, what):
        lock = self.push_locks.get(addr)
        if lock is None:
            raise EmulationError(f"{what}({addr:#x}): FltInitializePushLock never initialised it")
        return lock

    def api_FltInitializePushLock(self, m):
        (addr,) = m.args(1)
        m.w64(addr, 0)
        self.push_locks[addr] = {"shared": [], "exclusive": None}
        return 0

    def api_FltDeletePushLock(self, m):
        (addr,) = m.args(1)
        lock = self._push_lock(addr, "FltDeletePushLock")
        if lock["shared"] or lock["exclusive"] is not None:
            raise EmulationError("FltDeletePushLock on a held push lock")
        del self.push_locks[addr]
        return 0

    def api_FltAcquirePushLockShared(self, m):
        (addr,) = m.args(1)
        lock = self._push_lock(addr, "FltAcquirePushLockShared")
        tid = m.current.tid if m.current else None
        if lock["exclusive"] is not None or tid in lock["shared"]:
            # Emulated threads run until they wait: a holder exists only if
            # it waited while holding the lock, or this is recursion.
            raise EmulationError("FltAcquirePushLockShared on a push lock held across a wait or recursively")
        lock["shared"].append(tid)
        return 0

    def api_FltAcquirePushLockExclusive(self, m):
        (addr,) = m.args(1)
        lock = self._push_lock(addr, "FltAcquirePushLockExclusive")
        if lock["exclusive"] is not None or lock["shared"]:
            raise EmulationError("FltAcquirePushLockExclusive on a push lock held across a wait or recursively")
        lock["exclusive"] = m.current.tid if m.current else None
        return 0

    def api_FltReleasePushLock(self, m):
        (addr,) = m.args(1)
        lock = self._push_lock(addr, "FltReleasePushLock")
        tid = m.current.tid if m.current else None
        if lock["exclusive"] is not None:
            if lock["exclusive"] != tid:
                raise EmulationError("FltReleasePushLock by a thread that does not hold it")
            lock["exclusive"] = None
        elif tid in lock["shared"]:
            lock["shared"].remove(tid)
        else:
            raise EmulationError("FltReleasePushLock of a push lock this thread does not hold")
        return 0

    def push_locks_held(self):
        return [hex(a) for a, l in self.push_locks.items() if l["shared"] or l["exclusive"] is not None]

    # -- operations -----------------------------------------------------------------

    def _new_file_object(self, inst, path, pid):
        m = self.m
        fo = m.system.alloc(L.FILE_OBJECT_SIZE, tag=b"File")
        m.w16(fo + L.FO_TYPE, 5)
        m.w16(fo + L.FO_SIZE, L.FILE_OBJECT_SIZE)
        m.w64(fo + L.FO_DEVICE_OBJECT, inst.volume.device_object)
        m.w32(fo + L.FO_FLAGS, L.FO_SYNCHRONOUS_IO)
        name = path.encode("utf-16-le")
        nbuf = m.system.alloc(len(name) + 2, tag=b"FoNm")
        m.write(nbuf, name + b"\0\0")
        m.write(fo + L.FO_FILE_NAME, struct.pack("<HHIQ", len(name), len(name) + 2, 0, nbuf))
        obj = FileObj(fo, inst, path, pid)
        obj.name_buffer = nbuf
        self.file_objects[fo] = obj
        self.k.objects[fo] = KObject("file", fo, path)
        return obj

    def _free_file_object(self, fo):
        """IRP_MJ_CLOSE reached the file system and the I/O manager frees
        the FILE_OBJECT."""
        fo.state = "closed"
        node = fo.node
        if node is not None and node.delete_pending and not any(
            f.node is node and f.state == "open" and f is not fo for f in self.file_objects.values()
        ):
            # the last handle of a delete-pending file: the name goes now
            if node.volume.files.get(node.path.lower()) is node:
                node.volume.remove(node.path)
            node.unlinked = True
            self.k.emit("file-removed", path=node.path, how="last-close")
        if node is not None and node.unlinked:
            self.drop_stream_if_unused(node, closing=fo)
        o = self.k.objects[fo.addr]
        self.k.dereference(fo.addr)
        if o.refs != 0:
            raise EmulationError(f"FILE_OBJECT of {fo.path} closed with {o.refs} reference(s) left")
        del self.k.objects[fo.addr]
        self.m.system.free(fo.name_buffer)
        self.m.system.free(fo.addr)

    def _new_callback_data(self, major, fo, thread_obj, irp_flags):
        m = self.m
        inst = fo.instance
        data = m.system.alloc(L.FCD_SIZE, tag=b"FMcd")
        iopb = m.system.alloc(L.FIOPB_SIZE, tag=b"FMio")
        objs = self._related_objects(inst, fo.addr)
        completion = m.system.alloc(8, tag=b"FMcc")
        m.write(data, b"\0" * L.FCD_SIZE)
        m.w32(data + L.FCD_FLAGS, FLTFL_CALLBACK_DATA_IRP_OPERATION)
        m.w64(data + L.FCD_THREAD, thread_obj)
        m.w64(data + L.FCD_IOPB, iopb)
        m.w8(data + L.FCD_REQUESTOR_MODE, USER_MODE)
        m.write(iopb, b"\0" * L.FIOPB_SIZE)
        m.w32(iopb + L.FIOPB_IRP_FLAGS, irp_flags)
        m.w8(iopb + L.FIOPB_MAJOR, major)
        m.w64(iopb + L.FIOPB_TARGET_FILE_OBJECT, fo.addr)
        m.w64(iopb + L.FIOPB_TARGET_INSTANCE, inst.addr)
        cd = CallbackData(data, iopb, objs, completion, major, fo, inst, fo.pid)
        self.callback_data[data] = cd
        return cd

    def _free_callback_data(self, cd):
        del self.callback_data[cd.addr]
        for a in (cd.addr, cd.iopb, cd.objects, cd.completion):
            self.m.system.free(a)

    def _status(self, cd):
        return self.m.r32(cd.addr + L.FCD_IOSTATUS_STATUS)

    def _set_status(self, cd, status, information):
        self.m.w32(cd.addr + L.FCD_IOSTATUS_STATUS, status)
        self.m.w64(cd.addr + L.FCD_IOSTATUS_INFORMATION, information)

    def _pre(self, cd, major, what):
        """Runs the registered pre-operation (a generator step); returns its
        FLT_PREOP_CALLBACK_STATUS (NO_CALLBACK when none is registered)."""
        op = self.registration.operations.get(major)
        if op is None or not op["pre"]:
            return FLT_PREOP_SUCCESS_NO_CALLBACK
        cd.fo.phase = "pre-" + what
        self.m.w64(cd.completion, 0)
        status = (yield ("call", op["pre"], [cd.addr, cd.objects, cd.completion])) & 0xFFFFFFFF
        cd.fo.phase = None
        if status not in (FLT_PREOP_SUCCESS_WITH_CALLBACK, FLT_PREOP_SUCCESS_NO_CALLBACK):
            raise EmulationError(f"pre-{what} returned FLT_PREOP_CALLBACK_STATUS {status}: not modelled")
        return status

    def _post(self, cd, major, what, pre_status):
        op = self.registration.operations.get(major)
        if pre_status != FLT_PREOP_SUCCESS_WITH_CALLBACK or op is None or not op["post"]:
            return None
        m = self.m
        m.w32(cd.addr + L.FCD_FLAGS, m.r32(cd.addr + L.FCD_FLAGS) | FLTFL_CALLBACK_DATA_POST_OPERATION)
        cd.fo.phase = "post-" + what
        status = (yield ("call", op["post"], [cd.addr, cd.objects, m.r64(cd.completion), 0])) & 0xFFFFFFFF
        cd.fo.phase = None
        if status != FLT_POSTOP_FINISHED_PROCESSING:
            raise EmulationError(f"post-{what} returned FLT_POSTOP_CALLBACK_STATUS {status}: not modelled")
        return status

    def _fs_create(self, fo, access, disposition, options):
        """The file system's IRP_MJ_CREATE: returns (status, information)."""
        vol = fo.instance.volume
        node = vol.lookup(fo.path)
        info = FILE_OPENED
        if node is None:
            if disposition in (FILE_OPEN, FILE_OVERWRITE):
                return STATUS_OBJECT_NAME_NOT_FOUND, 0
            node = vol.add_file(fo.path, b"", directory=bool(options & FILE_DIRECTORY_FILE))
            info = FILE_CREATED
        else:
            if disposition == FILE_CREATE:
                return STATUS_OBJECT_NAME_COLLISION, 0
            if node.directory and options & FILE_NON_DIRECTORY_FILE:
                return STATUS_FILE_IS_A_DIRECTORY, 0
            if disposition in (FILE_SUPERSEDE, FILE_OVERWRITE, FILE_OVERWRITE_IF):
                node.data = bytearray()
                node.last_write = node.change = self.system_time()
                info = FILE_SUPERSEDED if disposition == FILE_SUPERSEDE else FILE_OVERWRITTEN
        m = self.m
        fo.node = node
        fo.state = "open"
        fo.read = bool(access & (FILE_READ_DATA | FILE_EXECUTE))
        fo.write = bool(access & (FILE_WRITE_DATA | FILE_APPEND_DATA))
        m.w64(fo.addr + L.FO_FS_CONTEXT, node.scb)
        m.w8(fo.addr + L.FO_READ_ACCESS, 1 if fo.read else 0)
        m.w8(fo.addr + L.FO_WRITE_ACCESS, 1 if fo.write else 0)
        m.w8(fo.addr + L.FO_DELETE_ACCESS, 1 if access & DELETE else 0)
        m.w8(fo.addr + L.FO_SHARED_READ, 1)
        return STATUS_SUCCESS, info

    def open(self, path, access=FILE_GENERIC_READ, disposition=FILE_OPEN, pid=4242, name=None):
        """Opens ``path`` on the volume from user mode through the filter,
        on a thread of its own. Returns the operation's record; its
        ``handle`` (if allowed) is for :meth:`write` and :meth:`close`."""
        rec = {"op": "open", "path": path, "access": access, "disposition": disposition, "pid": pid, "done": False}
        self.ops.append(rec)
        self.run_sequence(name or f"opener-{len(self.ops)}", self._open_steps(rec, path, access, disposition, pid))
        return rec

    def _open_steps(self, rec, path, access, disposition, pid):
        m = self.m
        inst = self.instance
        if inst is None or not inst.attached or inst.torn_down:
            raise EmulationError("open on a volume the filter is not attached to")
        if access & GENERIC_ALL_BITS:
            raise EmulationError("generic access rights: the I/O manager maps them before the create (use FILE_GENERIC_*)")
        rec["t_start_ms"] = ms(m.now)
        options = (disposition << 24) | FILE_NON_DIRECTORY_FILE | FILE_SYNCHRONOUS_IO_NONALERT
        fo = self._new_file_object(inst, path, pid)
        sc = m.system.alloc(L.IOSC_SIZE, tag=b"FMsc")
        access_state = m.system.alloc(0xA0, tag=b"FMas")
        m.write(sc, struct.pack("<QQII", 0, access_state, access, options & 0xFFFFFF))
        cd = self._new_callback_data(L.IRP_MJ_CREATE, fo, m.current.object, IRP_CREATE_OPERATION | IRP_SYNCHRONOUS_API)
        p = cd.iopb + L.FIOPB_PARAMETERS
        m.w64(p + L.FP_CREATE_SECURITY_CONTEXT, sc)
        m.w32(p + L.FP_CREATE_OPTIONS, options)
        m.w16(p + L.FP_CREATE_FILE_ATTRIBUTES, 0x80)  # FILE_ATTRIBUTE_NORMAL
        m.w16(p + L.FP_CREATE_SHARE_ACCESS, FILE_SHARE_READ)
        pre = yield from self._pre(cd, L.IRP_MJ_CREATE, "create")
        rec["pre"] = pre
        status, info = self._fs_create(fo, access, disposition, options)
        rec["fs_status"] = status
        self._set_status(cd, status, info)
        post = yield from self._post(cd, L.IRP_MJ_CREATE, "create", pre)
        rec["post_called"] = post is not None
        final = self._status(cd)
        rec["status"] = final
        rec["cancelled"] = fo.cancel_called
        rec["t_end_ms"] = ms(m.now)
        if fo.cancel_called:
            if nt_success(final):
                raise EmulationError(f"FltCancelFileOpen on {path}, but the create's IoStatus.Status left at {final:#x}")
            self._free_file_object(fo)  # Filter Manager sent cleanup and close below the filter
        elif not nt_success(status):
            if nt_success(final):
                raise EmulationError(f"post-create turned the failed create of {path} ({status:#x}) into success")
            self._free_file_object(fo)
        elif not nt_success(final):
            raise EmulationError(
                f"post-create failed the successful create of {path} with {final:#x} without FltCancelFileOpen "
                "(the file system's file object would leak)"
            )
        else:
            m.w32(fo.addr + L.FO_FLAGS, m.r32(fo.addr + L.FO_FLAGS) | L.FO_HANDLE_CREATED)
            h = self.next_handle
            self.next_handle += 1
            self.handles[h] = fo
            rec["handle"] = h
        rec["allowed"] = "handle" in rec
        self._free_callback_data(cd)
        m.system.free(sc)
        m.system.free(access_state)
        rec["done"] = True
        self.k.emit(
            "file-open", path=path, status=final, allowed=rec["allowed"], cancelled=rec["cancelled"],
            started_ms=rec["t_start_ms"],
        )

    def write(self, handle, data, offset=0, name=None):
        """Writes ``data`` at ``offset`` through the handle (IRP_MJ_WRITE,
        the registered pre-write first), on a thread of its own."""
        rec = {"op": "write", "handle": handle, "offset": offset, "length": len(data), "done": False}
        self.ops.append(rec)
        self.run_sequence(name or f"writer-{len(self.ops)}", self._write_steps(rec, handle, bytes(data), offset))
        return rec

    def _write_steps(self, rec, handle, data, offset):
        m = self.m
        fo = self.handles.get(handle)
        if fo is None:
            raise EmulationError(f"write through handle {handle}, which is not open")
        if not fo.write:
            raise EmulationError("write through a handle without write access (NtWriteFile fails before any IRP)")
        rec["path"] = fo.path
        rec["t_start_ms"] = ms(m.now)
        buf = m.system.alloc(len(data), tag=b"FMwb")
        m.write(buf, data)
        cd = self._new_callback_data(L.IRP_MJ_WRITE, fo, m.current.object, IRP_WRITE_OPERATION | IRP_SYNCHRONOUS_API)
        p = cd.iopb + L.FIOPB_PARAMETERS
        m.w32(p + L.FP_RW_LENGTH, len(data))
        m.w32(p + L.FP_RW_KEY, 0)
        m.w64(p + L.FP_RW_BYTE_OFFSET, offset)
        m.w64(p + L.FP_RW_BUFFER, buf)
        pre = yield from self._pre(cd, L.IRP_MJ_WRITE, "write")
        node = fo.node
        end = offset + len(data)
        if len(node.data) < end:
            node.data.extend(b"\0" * (end - len(node.data)))
        node.data[offset:end] = data
        node.last_write = node.change = self.system_time()
        m.w64(fo.addr + L.FO_CURRENT_BYTE_OFFSET, end)
        self._set_status(cd, STATUS_SUCCESS, len(data))
        yield from self._post(cd, L.IRP_MJ_WRITE, "write", pre)
        rec["pre"] = pre
        rec["status"] = self._status(cd)
        self._free_callback_data(cd)
        m.system.free(buf)
        rec["t_end_ms"] = ms(m.now)
        rec["done"] = True
        self.k.emit("file-write", path=fo.path, offset=offset, length=len(data))

    def close(self, handle, name=None):
        """Closes the handle: IRP_MJ_CLEANUP (the registered pre-cleanup
        first), then IRP_MJ_CLOSE, on a thread of its own."""
        rec = {"op": "close", "handle": handle, "done": False}
        self.ops.append(rec)
        self.run_sequence(name or f"closer-{len(self.ops)}", self._close_steps(rec, handle))
        return rec

    def _close_steps(self, rec, handle):
        m = self.m
        fo = self.handles.pop(handle, None)
        if fo is None:
            raise EmulationError(f"close of handle {handle}, which is not open")
        rec["path"] = fo.path
        rec["t_start_ms"] = ms(m.now)
        cd = self._new_callback_data(L.IRP_MJ_CLEANUP, fo, m.current.object, IRP_CLOSE_OPERATION | IRP_SYNCHRONOUS_API)
        pre = yield from self._pre(cd, L.IRP_MJ_CLEANUP, "cleanup")
        self._set_status(cd, STATUS_SUCCESS, 0)
        yield from self._post(cd, L.IRP_MJ_CLEANUP, "cleanup", pre)
        rec["pre"] = pre
        m.w32(fo.addr + L.FO_FLAGS, m.r32(fo.addr + L.FO_FLAGS) | L.FO_CLEANUP_COMPLETE)
        self._free_callback_data(cd)
        # IRP_MJ_CLOSE: the filter registers no callback for it.
        if L.IRP_MJ_CLOSE in self.registration.operations:
            raise EmulationError("the filter registers IRP_MJ_CLOSE: not modelled")
        self._free_file_object(fo)
        rec["t_end_ms"] = ms(m.now)
        rec["done"] = True
        self.k.emit("file-close", path=fo.path)
