"""The emulated NT kernel: the routines the driver imports from
ntoskrnl.exe and fltmgr.sys, with the object, handle, registry, I/O and
dispatcher models behind them.

Each handler reads its arguments as the x64 calling convention passes them,
checks what the real routine's documentation requires (IRQL-free checks:
argument validity, reference and handle balance, pool tags), and returns the
NTSTATUS or value. Anything the real kernel would bug-check on raises
:class:`EmulationError`.
"""

import struct

from . import layouts as L
from .machine import STATUS_SUCCESS, STATUS_TIMEOUT, DispatcherObject, EmulationError, Park, Wait, s32, s64, u32

STATUS_PENDING = 0x103
STATUS_CANCELLED = 0xC0000120
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_INVALID_HANDLE = 0xC0000008
STATUS_OBJECT_TYPE_MISMATCH = 0xC0000024
STATUS_BUFFER_OVERFLOW = 0x80000005
STATUS_BUFFER_TOO_SMALL = 0xC0000023
STATUS_MORE_PROCESSING_REQUIRED = 0xC0000016
STATUS_INSUFFICIENT_RESOURCES = 0xC000009A
STATUS_OBJECT_NAME_COLLISION = 0xC0000035

REG_SZ = 1
REG_DWORD = 4


class KObject:
    """A kernel object with a reference count and its type name."""

    def __init__(self, kind, addr, name=None, refs=1):
        self.kind = kind
        self.addr = addr
        self.name = name
        self.refs = refs


class Device:
    """A device the emulated kernel owns (not the driver's). Subclasses
    answer IRPs: ``dispatch(kernel, irp, stack)`` returns a status, and may
    keep the IRP pending (returning STATUS_PENDING after marking it)."""

    name = None
    stack_size = 1

    def dispatch(self, k, irp, stack):
        k.complete_irp(irp, 0xC0000010, 0)  # STATUS_INVALID_DEVICE_REQUEST
        return 0xC0000010

    def cancel(self, k, irp):
        """IoCancelIrp reached a pending IRP of this device."""
        return False


class Kernel:
    def __init__(self, machine, registry=None, log=None):
        self.m = machine
        self.registry = registry or {}  # lower-case key path -> {name: (type, bytes)}
        self.log = log if log is not None else []
        self.objects = {}  # addr -> KObject
        self.handles = {}  # handle -> object addr (or ('key', path))
        self.next_handle = 0x80000004
        self.namespace = {}  # lower-case device name -> Device
        self.devices_by_addr = {}  # device object addr -> Device (ours)
        self.symlinks = {}
        self.driver_symlinks = set()  # the links the driver created
        self.driver_devices = []  # device objects the driver created
        self.irps = {}  # irp addr -> dict(device=..., pending=bool)
        self.spinlocks = {}  # lock addr -> holder (tid) or None
        self.queued_handles = {}
        self.rundowns = {}
        self.filter = None  # what FltRegisterFilter got
        self.reinit = []  # boot re-init routines (fn, context)
        self.pnp = []  # PnP notification registrations
        self.security_set = {}
        self.driver_object = None
        m = machine
        for name in dir(self):
            if name.startswith("api_"):
                m.handlers[name[4:]] = getattr(self, name)

    # -- helpers ------------------------------------------------------

    def emit(self, kind, **fields):
        fields["t_ms"] = (self.m.now - 50_000_000) / 10_000
        fields["kind"] = kind
        self.log.append(fields)

    def new_handle(self, target):
        h = self.next_handle
        self.next_handle += 4
        self.handles[h] = target
        return h

    def dereference(self, addr):
        o = self.objects.get(addr)
        if o is None:
            raise EmulationError(f"ObfDereferenceObject({addr:#x}): not an object the kernel knows")
        if o.refs <= 0:
            raise EmulationError(f"ObfDereferenceObject({addr:#x}) ({o.kind} {o.name}): reference count already 0")
        o.refs -= 1
        if o.refs == 0 and o.kind == "file":
            device = getattr(o, "device", None)
            if device is not None and hasattr(device, "closed_file"):
                device.closed_file(addr)

    def new_event_object(self, addr, kind, signalled):
        self.m.dispatcher[addr] = DispatcherObject(kind, signalled)

    def rel_deadline(self, timeout_ptr):
        if timeout_ptr == 0:
            return None
        t = s64(self.m.r64(timeout_ptr))
        if t < 0:
            return self.m.now + (-t)
        # absolute system time: the emulated boot starts at 0
        return max(self.m.now, t)

    # -- debug output --------------------------------------------------

    def api_DbgPrintEx(self, m):
        component, level, fmt, a0 = m.args(4)
        f = m.cstring(fmt)
        if f != "%s":
            raise EmulationError(f"DbgPrintEx with format {f!r}: the driver prints with \"%s\" only")
        text = m.cstring(a0, 1024)
        self.emit("dbgprint", component=component, level=level, line=text.rstrip("\n"))
        return 0

    # -- pool -------------------------------------------------------------

    def api_ExAllocatePool2(self, m):
        flags, size, tag = m.args(3)
        if tag == 0:
            raise EmulationError("ExAllocatePool2 with tag 0")
        if flags & ~0x1FF:
            raise EmulationError(f"ExAllocatePool2 flags {flags:#x}")
        return m.pool.alloc(size, tag=struct.pack("<I", tag))

    def api_ExFreePoolWithTag(self, m):
        p, tag = m.args(2)
        m.pool.free(p, tag=struct.pack("<I", tag & 0xFFFFFFFF))
        return 0

    def api_ExFreePool(self, m):
        (p,) = m.args(1)
        m.pool.free(p)
        return 0

    # -- registry ---------------------------------------------------------

    def api_ZwOpenKey(self, m):
        out, access, oa = m.args(3)
        name = m.unicode_string(m.r64(oa + L.OA_OBJECT_NAME))
        attrs = m.r32(oa + L.OA_ATTRIBUTES)
        if not attrs & 0x200:  # OBJ_KERNEL_HANDLE
            raise EmulationError(f"ZwOpenKey({name}) without OBJ_KERNEL_HANDLE")
        key = name.lower()
        self.emit("api", name="ZwOpenKey", path=name)
        if key not in self.registry:
            return STATUS_OBJECT_NAME_NOT_FOUND
        m.w64(out, self.new_handle(("key", key)))
        return STATUS_SUCCESS

    def api_ZwQueryValueKey(self, m):
        h, value_name, info_class, buf, length, result_len = m.args(6)
        target = self.handles.get(h)
        if not (isinstance(target, tuple) and target[0] == "key"):
            return STATUS_INVALID_HANDLE
        if info_class != 2:  # KeyValuePartialInformation
            raise EmulationError(f"ZwQueryValueKey class {info_class}")
        name = m.unicode_string(value_name)
        values = self.registry[target[1]]
        found = None
        for k, v in values.items():
            if k.lower() == name.lower():
                found = v
        if found is None:
            return STATUS_OBJECT_NAME_NOT_FOUND
        vtype, data = found
        need = L.KVPI_DATA + len(data)
        m.w32(result_len, need)
        if length < L.KVPI_DATA:
            return STATUS_BUFFER_TOO_SMALL
        m.write(buf, struct.pack("<III", 0, vtype, len(data)))
        if length < need:
            return STATUS_BUFFER_OVERFLOW
        m.write(buf + L.KVPI_DATA, data)
        return STATUS_SUCCESS

    def api_ZwClose(self, m):
        (h,) = m.args(1)
        if h not in self.handles:
            raise EmulationError(f"ZwClose({h:#x}): not an open handle (double close?)")
        target = self.handles.pop(h)
        if isinstance(target, int) and target in self.objects:
            self.dereference(target)
        return STATUS_SUCCESS

    # -- objects and devices ---------------------------------------------

    def make_driver_object(self, name, start=0, size=0):
        d = self.m.system.alloc(L.DRIVER_OBJECT_SIZE, tag=b"Driv")
        self.m.w16(d + L.DO_TYPE, 4)
        self.m.w16(d + L.DO_SIZE, L.DRIVER_OBJECT_SIZE)
        self.m.w64(d + L.DO_DRIVER_START, start)
        self.m.w32(d + L.DO_DRIVER_SIZE, size)
        us = self.m.new_unicode_string(name)
        self.m.write(d + L.DO_DRIVER_NAME, self.m.read(us, 16))
        self.objects[d] = KObject("driver", d, name)
        return d

    def make_device_object(self, driver_obj, name, stack_size=1, device_type=0x22):
        dev = self.m.system.alloc(L.DEVICE_OBJECT_SIZE, tag=b"Devi")
        self.m.w16(dev + L.DEV_TYPE, 3)
        self.m.w16(dev + L.DEV_SIZE, L.DEVICE_OBJECT_SIZE)
        self.m.w64(dev + L.DEV_DRIVER_OBJECT, driver_obj)
        self.m.w32(dev + L.DEV_DEVICE_TYPE, device_type)
        self.m.w8(dev + L.DEV_STACK_SIZE, stack_size)
        first = self.m.r64(driver_obj + L.DO_DEVICE_OBJECT)
        self.m.w64(dev + L.DEV_NEXT_DEVICE, first)
        self.m.w64(driver_obj + L.DO_DEVICE_OBJECT, dev)
        self.objects[dev] = KObject("device", dev, name)
        return dev

    def add_device(self, device, driver_name, image_start=0, image_size=0):
        """Puts an emulated device into the namespace under ``device.name``."""
        drv = self.make_driver_object(driver_name, image_start, image_size)
        dev = self.make_device_object(drv, device.name, device.stack_size)
        device.driver_object = drv
        device.device_object = dev
        self.namespace[device.name.lower()] = device
        self.devices_by_addr[dev] = device
        return dev

    def resolve(self, name):
        n = name
        for _ in range(8):
            low = n.lower()
            if low.startswith("\\dosdevices\\") or low.startswith("\\??\\"):
                n = "\\GLOBAL??\\" + n.split("\\", 2)[2]
                low = n.lower()
            if low in self.symlinks:
                n = self.symlinks[low]
                continue
            return self.namespace.get(low)
        return None

    def new_file_object(self, device):
        fo = self.m.system.alloc(L.FILE_OBJECT_SIZE, tag=b"File")
        self.m.w16(fo + L.FO_TYPE, 5)
        self.m.w16(fo + L.FO_SIZE, L.FILE_OBJECT_SIZE)
        self.m.w64(fo + L.FO_DEVICE_OBJECT, device.device_object)
        self.objects[fo] = KObject("file", fo, device.name)
        self.objects[fo].device = device
        return fo

    def api_IoGetDeviceObjectPointer(self, m):
        name_ptr, access, file_out, dev_out = m.args(4)
        name = m.unicode_string(name_ptr)
        device = self.resolve(name)
        self.emit("api", name="IoGetDeviceObjectPointer", path=name, found=device is not None)
        if device is None or not getattr(device, "present", True):
            return STATUS_OBJECT_NAME_NOT_FOUND
        open_status = device.open_status(self) if hasattr(device, "open_status") else STATUS_SUCCESS
        if open_status != STATUS_SUCCESS:
            return open_status
        # a device with a create path (viosock) opens its control file here
        fo = device.create(self, 0, 0) if hasattr(device, "create") else self.new_file_object(device)
        m.w64(file_out, fo)
        m.w64(dev_out, device.device_object)
        return STATUS_SUCCESS

    def api_ZwCreateFile(self, m):
        (out, access, oa, iosb, alloc, attrs, share, disposition, options, ea, ea_len) = m.args(11)
        name = m.unicode_string(m.r64(oa + L.OA_OBJECT_NAME))
        if not m.r32(oa + L.OA_ATTRIBUTES) & 0x200:
            raise EmulationError(f"ZwCreateFile({name}) without OBJ_KERNEL_HANDLE")
        device = self.resolve(name)
        self.emit("api", name="ZwCreateFile", path=name, found=device is not None, ea_len=ea_len)
        if device is None or not hasattr(device, "create"):
            m.w32(iosb, STATUS_OBJECT_NAME_NOT_FOUND)
            return STATUS_OBJECT_NAME_NOT_FOUND
        fo = device.create(self, ea, ea_len)
        m.w64(out, self.new_handle(fo))
        m.w32(iosb, STATUS_SUCCESS)
        m.w64(iosb + 8, 1)  # FILE_OPENED
        return STATUS_SUCCESS

    def api_ObfDereferenceObject(self, m):
        (obj,) = m.args(1)
        self.dereference(obj)
        return 0

    def api_ObReferenceObjectByHandle(self, m):
        h, access, otype, mode, out, info = m.args(6)
        target = self.handles.get(h)
        if target is None:
            return STATUS_INVALID_HANDLE
        o = self.objects.get(target)
        if o is None:
            return STATUS_INVALID_HANDLE
        expected = {
            "thread": m.data_imports.get("PsThreadType"),
            "file": m.data_imports.get("IoFileObjectType"),
        }.get(o.kind)
        if otype != 0 and otype != expected:
            raise EmulationError(
                f"ObReferenceObjectByHandle: ObjectType {otype:#x} is not the {o.kind} type object "
                f"{expected:#x} (an extern data import read through one pointer too many or too few?)"
            )
        o.refs += 1
        m.w64(out, target)
        return STATUS_SUCCESS

    def api_IoCreateDevice(self, m):
        drv, ext, name_ptr, dtype, chars, exclusive, out = m.args(7)
        name = m.unicode_string(name_ptr)
        if name and name.lower() in self.namespace:
            return STATUS_OBJECT_NAME_COLLISION
        dev = self.make_device_object(drv, name, 1, dtype)
        m.w32(dev + L.DEV_CHARACTERISTICS, chars)
        m.w32(dev + L.DEV_FLAGS, L.DO_DEVICE_INITIALIZING)
        if ext:
            m.w64(dev + L.DEV_DEVICE_EXTENSION, m.system.alloc(ext, tag=b"DExt"))
        self.driver_devices.append(dev)
        if name:
            self.namespace[name.lower()] = DriverDevice(name, dev)
        m.w64(out, dev)
        self.emit("api", name="IoCreateDevice", device=name, characteristics=chars)
        return STATUS_SUCCESS

    def api_IoDeleteDevice(self, m):
        (dev,) = m.args(1)
        if dev not in self.driver_devices:
            raise EmulationError(f"IoDeleteDevice({dev:#x}): not a device the driver created")
        self.driver_devices.remove(dev)
        o = self.objects.pop(dev)
        for k, v in list(self.namespace.items()):
            if isinstance(v, DriverDevice) and v.device_object == dev:
                del self.namespace[k]
        self.emit("api", name="IoDeleteDevice", device=o.name)
        return 0

    def api_IoCreateSymbolicLink(self, m):
        link_ptr, target_ptr = m.args(2)
        link = m.unicode_string(link_ptr)
        target = m.unicode_string(target_ptr)
        key = link.lower().replace("\\dosdevices\\", "\\global??\\").replace("\\??\\", "\\global??\\")
        if key in self.symlinks:
            return STATUS_OBJECT_NAME_COLLISION
        self.symlinks[key] = target
        self.driver_symlinks.add(key)
        return STATUS_SUCCESS

    def api_IoDeleteSymbolicLink(self, m):
        (link_ptr,) = m.args(1)
        link = m.unicode_string(link_ptr)
        key = link.lower().replace("\\dosdevices\\", "\\global??\\").replace("\\??\\", "\\global??\\")
        if key not in self.symlinks:
            return STATUS_OBJECT_NAME_NOT_FOUND
        del self.symlinks[key]
        return STATUS_SUCCESS

    def api_ObOpenObjectByPointer(self, m):
        obj, attrs, access_state, access, otype, mode, out = m.args(7)
        if obj not in self.objects:
            raise EmulationError(f"ObOpenObjectByPointer({obj:#x}): unknown object")
        if not attrs & 0x200:
            raise EmulationError("ObOpenObjectByPointer without OBJ_KERNEL_HANDLE")
        self.objects[obj].refs += 1
        m.w64(out, self.new_handle(obj))
        return STATUS_SUCCESS

    def api_ZwSetSecurityObject(self, m):
        h, info, sd = m.args(3)
        target = self.handles.get(h)
        if target is None:
            return STATUS_INVALID_HANDLE
        sd_obj = self.security_descriptors.get(sd) if hasattr(self, "security_descriptors") else None
        self.security_set[target] = {"information": info, "descriptor": sd_obj}
        return STATUS_SUCCESS

    def api_FltBuildDefaultSecurityDescriptor(self, m):
        out, access = m.args(2)
        sd = m.system.alloc(0x100, tag=b"FlSD")
        if not hasattr(self, "security_descriptors"):
            self.security_descriptors = {}
        self.security_descriptors[sd] = {"grants": ["SYSTEM", "Administrators"], "access": access, "live": True}
        m.w64(out, sd)
        return STATUS_SUCCESS

    def api_FltFreeSecurityDescriptor(self, m):
        (sd,) = m.args(1)
        d = getattr(self, "security_descriptors", {}).get(sd)
        if d is None or not d["live"]:
            raise EmulationError(f"FltFreeSecurityDescriptor({sd:#x}): not a live descriptor")
        d["live"] = False
        m.system.free(sd)
        return 0

    # -- rundown protection -------------------------------------------------

    def api_ExInitializeRundownProtection(self, m):
        (r,) = m.args(1)
        self.rundowns[r] = {"count": 0, "active": True}
        m.w64(r, 0)
        return 0

    def api_ExAcquireRundownProtection(self, m):
        (r,) = m.args(1)
        rd = self.rundowns.get(r)
        if rd is None:
            raise EmulationError("ExAcquireRundownProtection on an uninitialised EX_RUNDOWN_REF")
        if not rd["active"]:
            return 0
        rd["count"] += 1
        return 1

    def api_ExReleaseRundownProtection(self, m):
        (r,) = m.args(1)
        rd = self.rundowns[r]
        if rd["count"] <= 0:
            raise EmulationError("ExReleaseRundownProtection without a matching acquire")
        rd["count"] -= 1
        return 0

    def api_ExWaitForRundownProtectionRelease(self, m):
        (r,) = m.args(1)
        rd = self.rundowns.get(r)
        if rd is None:
            raise EmulationError("ExWaitForRundownProtectionRelease on an uninitialised EX_RUNDOWN_REF")
        rd["active"] = False
        if rd["count"]:
            raise EmulationError("rundown wait with protection held: the emulation does not model this wait")
        return 0

    # -- IRPs ---------------------------------------------------------------

    def api_IoAllocateIrp(self, m):
        stack_size, charge_quota = m.args(2)
        stack_size = s32(stack_size) & 0xFF
        if stack_size < 1:
            raise EmulationError("IoAllocateIrp with StackSize 0")
        size = L.IRP_SIZE + stack_size * L.ISL_SIZE
        irp = m.system.alloc(size, tag=b"Irp ")
        self._init_irp(irp, stack_size, size)
        self.irps[irp] = {"stack": stack_size, "device": None, "pending": False, "freed": False}
        return irp

    def _init_irp(self, irp, stack_size, size):
        m = self.m
        m.write(irp, b"\0" * size)
        m.w16(irp + L.IRP_TYPE, L.IO_TYPE_IRP)
        m.w16(irp + L.IRP_SIZE_FIELD, size)
        m.w8(irp + L.IRP_STACK_COUNT, stack_size)
        m.w8(irp + L.IRP_CURRENT_LOCATION, stack_size + 1)
        m.w64(irp + L.IRP_CURRENT_STACK_LOCATION, irp + L.IRP_SIZE + stack_size * L.ISL_SIZE)

    def api_IoReuseIrp(self, m):
        irp, status = m.args(2)
        info = self.irps.get(irp)
        if info is None:
            raise EmulationError(f"IoReuseIrp({irp:#x}): not an IRP from IoAllocateIrp")
        if info["pending"]:
            raise EmulationError("IoReuseIrp on an IRP still pending in a lower driver")
        size = m.r16(irp + L.IRP_SIZE_FIELD)
        self._init_irp(irp, info["stack"], size)
        m.w32(irp + L.IRP_IOSTATUS_STATUS, status)
        return 0

    def api_IoFreeIrp(self, m):
        (irp,) = m.args(1)
        info = self.irps.get(irp)
        if info is None:
            raise EmulationError(f"IoFreeIrp({irp:#x}): not an IRP from IoAllocateIrp (or freed twice)")
        if info["pending"]:
            raise EmulationError("IoFreeIrp on an IRP a lower driver still holds")
        del self.irps[irp]
        m.system.free(irp)
        return 0

    def api_IofCallDriver(self, m):
        dev, irp = m.args(2)
        cur = m.r8(irp + L.IRP_CURRENT_LOCATION)
        if cur <= 1:
            raise EmulationError("IofCallDriver with no stack location left (NO_MORE_IRP_STACK_LOCATIONS)")
        m.w8(irp + L.IRP_CURRENT_LOCATION, cur - 1)
        sl = m.r64(irp + L.IRP_CURRENT_STACK_LOCATION) - L.ISL_SIZE
        m.w64(irp + L.IRP_CURRENT_STACK_LOCATION, sl)
        m.w64(sl + L.ISL_DEVICE_OBJECT, dev)
        device = self.devices_by_addr.get(dev)
        if device is None:
            raise EmulationError(f"IofCallDriver to {dev:#x}, a device the emulated kernel does not own")
        self.irps.setdefault(irp, {"stack": 0, "pending": False})
        self.irps[irp]["device"] = device
        self.irps[irp]["pending"] = True
        status = device.dispatch(self, irp, sl)
        return status

    def complete_irp(self, irp, status, information):
        """IoCompleteRequest by a lower (emulated) driver: sets IoStatus and
        runs the completion routines up the stack, in the emulator."""
        m = self.m
        m.w32(irp + L.IRP_IOSTATUS_STATUS, status)
        m.w64(irp + L.IRP_IOSTATUS_INFORMATION, information)
        info = self.irps.get(irp)
        if info is not None:
            info["pending"] = False
        m.w64(irp + L.IRP_CANCEL_ROUTINE, 0)
        stack_count = m.r8(irp + L.IRP_STACK_COUNT)
        while True:
            cur = m.r8(irp + L.IRP_CURRENT_LOCATION)
            if cur > stack_count:
                raise EmulationError(
                    "an IRP completed past its top stack location without STATUS_MORE_PROCESSING_REQUIRED "
                    "(a driver-allocated IRP must be kept by its completion routine)"
                )
            sl = m.r64(irp + L.IRP_CURRENT_STACK_LOCATION)
            control = m.r8(sl + L.ISL_CONTROL)
            routine = m.r64(sl + L.ISL_COMPLETION_ROUTINE)
            context = m.r64(sl + L.ISL_CONTEXT)
            m.w8(irp + L.IRP_PENDING_RETURNED, control & L.SL_PENDING_RETURNED)
            # move up one location
            m.w8(irp + L.IRP_CURRENT_LOCATION, cur + 1)
            m.w64(irp + L.IRP_CURRENT_STACK_LOCATION, sl + L.ISL_SIZE)
            cancelled = m.r8(irp + L.IRP_CANCEL)
            ok = s32(status) >= 0
            invoke = routine and (
                (ok and control & L.SL_INVOKE_ON_SUCCESS)
                or (not ok and control & L.SL_INVOKE_ON_ERROR)
                or (cancelled and control & L.SL_INVOKE_ON_CANCEL)
            )
            upper_dev = m.r64(sl + L.ISL_SIZE + L.ISL_DEVICE_OBJECT) if cur + 1 <= stack_count else 0
            if invoke:
                r = self.m.call(routine, upper_dev, irp, context)
                if u32(r) == STATUS_MORE_PROCESSING_REQUIRED:
                    return
            if cur + 1 > stack_count:
                raise EmulationError(
                    "a driver-allocated IRP finished completion without STATUS_MORE_PROCESSING_REQUIRED"
                )

    def api_IofCompleteRequest(self, m):
        """The driver completes an IRP the I/O manager sent to its own
        device (the control device): record the result."""
        irp, boost = m.args(2)
        info = self.irps.get(irp)
        if info is None or not info.get("to_driver"):
            raise EmulationError(f"IofCompleteRequest({irp:#x}): not an IRP the I/O manager sent to the driver")
        if info.get("completed"):
            raise EmulationError("IofCompleteRequest twice on the same IRP")
        info["completed"] = (s32(m.r32(irp + L.IRP_IOSTATUS_STATUS)) & 0xFFFFFFFF, m.r64(irp + L.IRP_IOSTATUS_INFORMATION))
        return 0

    def api_IoCancelIrp(self, m):
        (irp,) = m.args(1)
        info = self.irps.get(irp)
        if info is None:
            raise EmulationError(f"IoCancelIrp({irp:#x}): not an IRP the kernel knows")
        m.w8(irp + L.IRP_CANCEL, 1)
        if not info.get("pending"):
            return 0
        device = info["device"]
        self.emit("api", name="IoCancelIrp", device=device.name)
        return 1 if device.cancel(self, irp) else 0

    def api_IoAllocateMdl(self, m):
        va, length, secondary, charge, irp = m.args(5)
        if irp:
            raise EmulationError("IoAllocateMdl with an IRP")
        mdl = m.system.alloc(L.MDL_SIZE + 8 * (((length + 0xFFF) >> 12) + 1), tag=b"Mdl ")
        m.w16(mdl + L.MDL_SIZE_FIELD, L.MDL_SIZE)
        m.w64(mdl + L.MDL_START_VA, va & ~0xFFF)
        m.w32(mdl + L.MDL_BYTE_COUNT, length)
        m.w32(mdl + L.MDL_BYTE_OFFSET, va & 0xFFF)
        self.objects[mdl] = KObject("mdl", mdl, None)
        return mdl

    def api_MmBuildMdlForNonPagedPool(self, m):
        (mdl,) = m.args(1)
        va = m.r64(mdl + L.MDL_START_VA) + m.r32(mdl + L.MDL_BYTE_OFFSET)
        m.w64(mdl + L.MDL_MAPPED_SYSTEM_VA, va)
        m.w16(mdl + L.MDL_FLAGS, L.MDL_SOURCE_IS_NONPAGED_POOL)
        return 0

    def api_IoFreeMdl(self, m):
        (mdl,) = m.args(1)
        if mdl not in self.objects or self.objects[mdl].kind != "mdl":
            raise EmulationError(f"IoFreeMdl({mdl:#x}): not an MDL")
        del self.objects[mdl]
        m.system.free(mdl)
        return 0

    def mdl_buffer(self, mdl):
        m = self.m
        return m.r64(mdl + L.MDL_MAPPED_SYSTEM_VA), m.r32(mdl + L.MDL_BYTE_COUNT)

    # -- threads, events, time ---------------------------------------------

    def api_PsGetCurrentThread(self, m):
        return m.current.object

    def api_PsGetCurrentThreadId(self, m):
        return m.current.tid * 4

    def api_PsCreateSystemThread(self, m):
        out, access, oa, process, client_id, start, context = m.args(7)
        if process != 0:
            raise EmulationError("PsCreateSystemThread into a process handle")
        t = m.spawn(f"system-thread-{len(m.threads) + 1}", start, context)
        self.objects[t.object] = KObject("thread", t.object, t.name, refs=2)  # the handle, and the running thread itself
        t.on_exit = self._thread_exit
        m.w64(out, self.new_handle(t.object))
        self.emit("api", name="PsCreateSystemThread", thread=t.name)
        return STATUS_SUCCESS

    def _thread_exit(self, t):
        # the running thread's own reference is dropped when it terminates
        self.dereference(t.object)

    def api_KeInitializeEvent(self, m):
        ev, etype, state = m.args(3)
        m.write(ev, b"\0" * 0x18)
        m.w8(ev, etype & 0xFF)
        self.new_event_object(ev, "notification" if etype & 0xFF == 0 else "sync", bool(state & 0xFF))
        return 0

    def _event(self, ev):
        d = self.m.dispatcher.get(ev)
        if d is None or d.kind == "thread":
            raise EmulationError(f"event routine on {ev:#x}, which KeInitializeEvent never initialised")
        return d

    def api_KeSetEvent(self, m):
        ev, incr, wait = m.args(3)
        d = self._event(ev)
        prev = 1 if d.signalled else 0
        d.signalled = True
        m.wake_ready()
        return prev

    def api_KeClearEvent(self, m):
        (ev,) = m.args(1)
        self._event(ev).signalled = False
        return 0

    def api_KeResetEvent(self, m):
        (ev,) = m.args(1)
        d = self._event(ev)
        prev = 1 if d.signalled else 0
        d.signalled = False
        return prev

    def _wait(self, m, objects, wait_all, timeout_ptr):
        for o in objects:
            m.signalled(o)  # validates the object
        w = Wait(objects, self.rel_deadline(timeout_ptr), wait_all)
        status = m.try_wait(w)
        if status is not None:
            return status
        if timeout_ptr and s64(m.r64(timeout_ptr)) == 0:
            return STATUS_TIMEOUT
        if m.current is None or m.nesting > 1:
            raise EmulationError("a wait that would block outside a thread (DISPATCH_LEVEL code?)")
        raise Park(w)

    def api_KeWaitForSingleObject(self, m):
        obj, reason, mode, alertable, timeout = m.args(5)
        return self._wait(m, [obj], False, timeout)

    def api_KeWaitForMultipleObjects(self, m):
        count, arr, wait_type, reason, mode, alertable, timeout, blocks = m.args(8)
        if count > 3 and blocks == 0:
            raise EmulationError("KeWaitForMultipleObjects with more than THREAD_WAIT_OBJECTS and no wait blocks")
        objects = [m.r64(arr + 8 * i) for i in range(count)]
        return self._wait(m, objects, wait_type == 0, timeout)

    def api_KeDelayExecutionThread(self, m):
        mode, alertable, interval = m.args(3)
        w = Wait([], self.rel_deadline(interval))
        if w.deadline is None or w.deadline <= m.now:
            return STATUS_SUCCESS
        w.on_wake = lambda status: STATUS_SUCCESS
        raise Park(w)

    def api_KeQueryInterruptTimePrecise(self, m):
        (qpc,) = m.args(1)
        if qpc:
            m.w64(qpc, m.now)
        return m.now

    def api_KeInitializeSpinLock(self, m):
        (lock,) = m.args(1)
        m.w64(lock, 0)
        self.spinlocks[lock] = None
        return 0

    def api_KeAcquireInStackQueuedSpinLock(self, m):
        lock, handle = m.args(2)
        if lock not in self.spinlocks:
            raise EmulationError(f"KeAcquireInStackQueuedSpinLock on {lock:#x}: never initialised")
        if self.spinlocks[lock] is not None:
            raise EmulationError(f"spin lock {lock:#x} acquired twice (deadlock at DISPATCH_LEVEL)")
        tid = m.current.tid if m.current else 0
        self.spinlocks[lock] = tid
        self.queued_handles[handle] = lock
        m.w64(handle + 0x10, 0)  # OldIrql slot
        return 0

    def api_KeReleaseInStackQueuedSpinLock(self, m):
        (handle,) = m.args(1)
        lock = self.queued_handles.pop(handle, None)
        if lock is None:
            raise EmulationError("KeReleaseInStackQueuedSpinLock with a handle no acquire filled")
        self.spinlocks[lock] = None
        return 0

    def held_spinlocks(self):
        return [hex(a) for a, h in self.spinlocks.items() if h is not None]

    def api_IoGetStackLimits(self, m):
        low, high = m.args(2)
        t = m.current
        m.w64(low, t.stack_top - 24 * 1024)
        m.w64(high, t.stack_top)
        return 0

    def api_MmIsAddressValid(self, m):
        (va,) = m.args(1)
        return 1 if m.is_mapped(va) else 0

    # -- boot and PnP -----------------------------------------------------------

    def api_IoRegisterBootDriverReinitialization(self, m):
        drv, routine, context = m.args(3)
        self.reinit.append((drv, routine, context))
        self.emit("api", name="IoRegisterBootDriverReinitialization")
        return 0

    def api_IoRegisterPlugPlayNotification(self, m):
        category, flags, data, drv, callback, context, out = m.args(7)
        guid = m.read(data, 16)
        entry = m.system.alloc(0x40, tag=b"PnpN")
        self.pnp.append({"entry": entry, "guid": guid, "callback": callback, "context": context, "flags": flags, "live": True})
        m.w64(out, entry)
        self.emit("api", name="IoRegisterPlugPlayNotification", flags=flags)
        return STATUS_SUCCESS

    def api_IoUnregisterPlugPlayNotificationEx(self, m):
        (entry,) = m.args(1)
        for p in self.pnp:
            if p["entry"] == entry and p["live"]:
                p["live"] = False
                m.system.free(entry)
                return STATUS_SUCCESS
        raise EmulationError(f"IoUnregisterPlugPlayNotificationEx({entry:#x}): not a live registration")



class DriverDevice:
    """A device object the driver created (its control device)."""

    def __init__(self, name, dev):
        self.name = name
        self.device_object = dev
