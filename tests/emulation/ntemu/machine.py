"""The emulated machine: unicorn (x86-64) with a PE loader, kernel-address
memory regions, import stubs, calls into guest code, threads that park on
waits, and a virtual clock.

This is a test tool. unicorn is GPL-2.0 and is never a dependency of
anything ThinAgent ships.

Conventions
-----------
* Every import of the driver is bound to a one-byte stub (``ret``) in the
  STUBS region; a code hook on the stub runs the Python handler, which either
  returns a value (written to RAX, then the ``ret`` runs) or parks the thread
  (the handler raises :class:`Park`; the thread resumes later with RAX set
  and the return address popped by hand).
* Guest code is called from Python with :meth:`Machine.call`, which may nest
  (a completion routine run from inside ``IofCallDriver``): the registers are
  saved and restored around the nested run, and the hook then returns by
  hand. A nested call may not park.
* Time is virtual: 100 ns units, advanced only when every thread is waiting
  and no real I/O is due.
"""

import struct

import pefile
from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_TLB_FILL,
    UC_TLB_VIRTUAL,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_PROT_READ,
    UC_PROT_EXEC,
    Uc,
    UcError,
)
from unicorn.x86_const import (
    UC_X86_REG_R8,
    UC_X86_REG_R9,
    UC_X86_REG_RAX,
    UC_X86_REG_RCX,
    UC_X86_REG_RDX,
    UC_X86_REG_RIP,
    UC_X86_REG_RSP,
)

PAGE = 0x1000

# Kernel-half addresses, like a real x64 kernel's.
IMAGE_BASE = 0xFFFFF805_10000000  # thinagent.sys
PROVIDER_IMAGE = 0xFFFFF805_20000000  # vsock.sys (fake code with hooks)
PROVIDER_IMAGE_SIZE = 0x40000
STUBS = 0xFFFFF805_30000000  # import stubs
STUBS_SIZE = 0x10000
EXIT_STUB = STUBS + STUBS_SIZE - 0x10  # return address of every top-level run
POOL_BASE = 0xFFFFA000_00000000  # pool: page-granular, never reused
SYSTEM_BASE = 0xFFFFA800_00000000  # objects the emulated kernel owns
STACK_BASE = 0xFFFFB000_00000000
KERNEL_STACK = 24 * 1024  # KERNEL_STACK_SIZE on x64

STATUS_SUCCESS = 0
STATUS_TIMEOUT = 0x102

# Without paging, unicorn's x86-64 cannot reach the kernel half of the
# address space. The machine runs with unicorn's virtual TLB instead: a
# canonical virtual address translates to the physical address with its
# sign-extension bits cleared (0xFFFFF805_10000000 -> 0xF805_10000000), and
# every region is mapped in physical memory there. Python reads and writes
# through the same translation (phys()).
PHYS_MASK = (1 << 48) - 1


def phys(addr):
    return addr & PHYS_MASK


def u32(v):
    return v & 0xFFFFFFFF


def s32(v):
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def s64(v):
    v &= 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v & (1 << 63) else v


class EmulationError(Exception):
    """The driver did something the emulated kernel treats as fatal (a bug
    check on real Windows), or the harness met something it cannot model."""


class Park(Exception):
    """Raised by an API handler to park the calling thread. ``wait`` is the
    :class:`Wait` the thread blocks on."""

    def __init__(self, wait):
        super().__init__("park")
        self.wait = wait


class Wait:
    """What a parked thread waits for: any (or all) of ``objects`` to be
    signalled, or ``deadline`` (virtual 100 ns; None = forever)."""

    def __init__(self, objects, deadline, wait_all=False, on_wake=None):
        self.objects = list(objects)
        self.deadline = deadline
        self.wait_all = wait_all
        self.on_wake = on_wake  # callback(status) -> value for RAX


class Thread:
    def __init__(self, tid, name, stack_top, object_addr):
        self.tid = tid
        self.name = name
        self.stack_top = stack_top
        self.object = object_addr  # the ETHREAD-like object other code sees
        self.context = None  # unicorn context while parked or not started
        self.state = "ready"  # ready | waiting | done
        self.wait = None
        self.resume_value = None
        self.started = False
        self.entry = None
        self.on_exit = None
        self.result = None


class Machine:
    """One emulated kernel with one driver image loaded."""

    def __init__(self, driver_path):
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        self.uc.hook_add(UC_HOOK_TLB_FILL, self._tlb_fill)
        self.now = 50_000_000  # virtual 100 ns units since boot (5 s)
        self.handlers = {}  # (module, name) -> fn(machine, args) -> value
        self.stub_names = {}  # stub address -> (module, name)
        self.code_hooks = {}  # address -> (name, fn(machine)): hooked code outside the stubs
        self.api_calls = {}  # name -> count
        self.next_stub = STUBS
        self.threads = []
        self.current = None
        self.nesting = 0
        self.dispatcher = {}  # object address -> DispatcherObject
        self.instructions_budget = None
        self.fault = None
        self.pending_unmaps = []
        self.dpc_stack = None
        self._map(STUBS, STUBS_SIZE, UC_PROT_READ | UC_PROT_EXEC)
        self.write(EXIT_STUB, b"\xc3")
        self._map(PROVIDER_IMAGE, PROVIDER_IMAGE_SIZE, UC_PROT_READ | UC_PROT_EXEC)
        self.next_provider_code = PROVIDER_IMAGE + 0x1000
        self.pool = Pool(self, POOL_BASE)
        self.system = Pool(self, SYSTEM_BASE, owner="system")
        self.next_stack = STACK_BASE
        self.uc.hook_add(UC_HOOK_CODE, self._on_stub, begin=STUBS, end=STUBS + STUBS_SIZE - 1)
        self.uc.hook_add(
            UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED,
            self._on_unmapped,
        )
        self._load(driver_path)

    # ------------------------------------------------------------------
    # memory

    @staticmethod
    def _tlb_fill(uc, vaddr, access, entry, _ud):
        top = vaddr >> 47
        if top not in (0, 0x1FFFF):
            return False  # non-canonical: #GP on real hardware
        entry.paddr = phys(vaddr)
        entry.perms = UC_PROT_ALL
        return True

    def _map(self, addr, size, prot=UC_PROT_ALL):
        size = (size + PAGE - 1) & ~(PAGE - 1)
        self.uc.mem_map(phys(addr), size, prot)

    def flush_unmaps(self):
        while self.pending_unmaps:
            addr, size = self.pending_unmaps.pop()
            self.unmap(addr, size)

    def unmap(self, addr, size):
        self.uc.mem_unmap(phys(addr), size)

    def read(self, addr, n):
        return bytes(self.uc.mem_read(phys(addr), n))

    def write(self, addr, data):
        self.uc.mem_write(phys(addr), bytes(data))

    def r8(self, a):
        return self.read(a, 1)[0]

    def r16(self, a):
        return struct.unpack("<H", self.read(a, 2))[0]

    def r32(self, a):
        return struct.unpack("<I", self.read(a, 4))[0]

    def r64(self, a):
        return struct.unpack("<Q", self.read(a, 8))[0]

    def w8(self, a, v):
        self.write(a, struct.pack("<B", v & 0xFF))

    def w16(self, a, v):
        self.write(a, struct.pack("<H", v & 0xFFFF))

    def w32(self, a, v):
        self.write(a, struct.pack("<I", v & 0xFFFFFFFF))

    def w64(self, a, v):
        self.write(a, struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF))

    def is_mapped(self, addr, n=1):
        p = phys(addr)
        for start, end, _perms in self.uc.mem_regions():
            if start <= p and p + n - 1 <= end:
                return True
        return False

    def unicode_string(self, addr):
        """Reads a UNICODE_STRING at ``addr`` (Length, MaximumLength, Buffer)."""
        if addr == 0:
            return None
        length = self.r16(addr)
        buf = self.r64(addr + 8)
        return self.read(buf, length).decode("utf-16-le") if length else ""

    def new_unicode_string(self, text, pool=None):
        """A UNICODE_STRING and its buffer in system memory; returns its address."""
        pool = pool or self.system
        data = text.encode("utf-16-le")
        buf = pool.alloc(len(data) + 2, tag=b"Str ")
        self.write(buf, data + b"\0\0")
        us = pool.alloc(16, tag=b"Str ")
        self.write(us, struct.pack("<HHIQ", len(data), len(data) + 2, 0, buf))
        return us

    def cstring(self, addr, limit=4096):
        out = b""
        while len(out) < limit:
            chunk = self.read(addr + len(out), 16 - ((addr + len(out)) % 16))
            if b"\0" in chunk:
                return (out + chunk.split(b"\0", 1)[0]).decode("latin-1")
            out += chunk
        return out.decode("latin-1")

    # ------------------------------------------------------------------
    # the driver image

    def _load(self, path):
        pe = pefile.PE(path)
        size = pe.OPTIONAL_HEADER.SizeOfImage
        pe.relocate_image(IMAGE_BASE)
        self._map(IMAGE_BASE, size)
        self.write(IMAGE_BASE, pe.get_memory_mapped_image(ImageBase=IMAGE_BASE))
        self.imports = {}
        self.data_imports = {}  # name -> the kernel variable's value (e.g. the type object)
        for entry in pe.DIRECTORY_ENTRY_IMPORT:
            module = entry.dll.decode().lower()
            for imp in entry.imports:
                name = imp.name.decode()
                self.imports[name] = module
                if name in DATA_IMPORTS:
                    addr = self.system.alloc(8, tag=b"Data")
                    self.data_imports[name] = DATA_IMPORTS[name](self)
                    self.w64(addr, self.data_imports[name])
                    self.w64(imp.address, addr)
                else:
                    stub = self._new_stub(module, name)
                    self.w64(imp.address, stub)
        entry_rva = pe.OPTIONAL_HEADER.AddressOfEntryPoint
        self.entry_point = IMAGE_BASE + entry_rva
        self.image_size = size
        self.pe = pe
        return pe

    def _new_stub(self, module, name):
        stub = self.next_stub
        self.next_stub += 1
        self.write(stub, b"\xc3")
        self.stub_names[stub] = (module, name)
        return stub

    def provider_function(self, name, handler):
        """Places a function of the fake provider image (vsock.sys) at a
        kernel address inside that image: one ``ret`` with a code hook that
        runs ``handler(machine, args)``. Returns its address."""
        addr = self.next_provider_code
        self.next_provider_code += 0x10
        self.write(addr, b"\xc3")
        self.hook_code(addr, name, handler)
        return addr

    def hook_code(self, addr, name, handler):
        """Runs ``handler(machine)`` as the function at ``addr`` (a ``ret``
        the caller placed there): its return value goes to RAX, or it parks
        the thread, exactly as an import stub's handler does."""
        self.code_hooks[addr] = (name, handler)
        self.uc.hook_add(UC_HOOK_CODE, self._on_code_hook, begin=addr, end=addr)

    # ------------------------------------------------------------------
    # calls and hooks

    def args(self, n):
        """The first ``n`` integer arguments of a call just made (the
        return address is at RSP)."""
        regs = [UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_R8, UC_X86_REG_R9]
        out = [self.uc.reg_read(r) for r in regs[: min(n, 4)]]
        rsp = self.uc.reg_read(UC_X86_REG_RSP)
        for i in range(4, n):
            out.append(self.r64(rsp + 8 + 8 * i))
        return out

    def _return_by_hand(self, value):
        rsp = self.uc.reg_read(UC_X86_REG_RSP)
        ret = self.r64(rsp)
        self.uc.reg_write(UC_X86_REG_RSP, rsp + 8)
        self.uc.reg_write(UC_X86_REG_RIP, ret)
        self.uc.reg_write(UC_X86_REG_RAX, (value or 0) & 0xFFFFFFFFFFFFFFFF)

    def _dispatch(self, name, handler):
        self.api_calls[name] = self.api_calls.get(name, 0) + 1
        try:
            value = handler(self)
        except Park as p:
            if self.nesting != 1 or self.current is None:
                self.fault = EmulationError(f"{name} would block at raised IRQL (a completion routine or DPC)")
                self.uc.emu_stop()
                return
            self.current.wait = p.wait
            self.current.state = "waiting"
            self.uc.emu_stop()
            return
        except EmulationError as e:
            self.fault = e
            self.uc.emu_stop()
            return
        self._return_by_hand(value)

    def _on_stub(self, uc, addr, size, _ud):
        if addr == EXIT_STUB:
            return
        module, name = self.stub_names.get(addr, ("?", "?"))
        handler = self.handlers.get(name)
        if handler is None:
            self.fault = EmulationError(f"the driver called {module}!{name}, which the emulated kernel does not model")
            uc.emu_stop()
            return
        self._dispatch(name, handler)

    def _on_code_hook(self, uc, addr, size, _ud):
        hook = self.code_hooks.get(addr)
        if hook is None:
            return
        name, handler = hook
        self._dispatch(name, handler)

    def _on_unmapped(self, uc, access, addr, size, value, _ud):
        rip = uc.reg_read(UC_X86_REG_RIP)
        kind = {19: "read", 20: "write", 21: "fetch"}.get(access, str(access))
        freed = self.pool.freed_block(addr) or self.system.freed_block(addr)
        note = f" (inside freed pool block {freed})" if freed else ""
        self.fault = EmulationError(
            f"page fault: {kind} of {size} bytes at {addr:#x}{note}, rip {rip:#x} ({self.symbolize(rip)})"
        )
        return False

    def symbolize(self, addr):
        if IMAGE_BASE <= addr < IMAGE_BASE + self.image_size:
            return f"thinagent.sys+{addr - IMAGE_BASE:#x}"
        if addr in self.stub_names:
            return "!".join(self.stub_names[addr])
        return "?"

    def call(self, fn, *args):
        """Calls guest function ``fn`` with integer ``args`` and returns RAX.

        Inside a hook it nests on the current thread's stack below its red
        zone; at top level (no emulation running) it runs in an
        arbitrary-thread context (a DPC's) on a stack of its own. Either way
        the call may not park."""
        if self.nesting > 0:
            ctx = self.uc.context_save()
            rsp = (self.uc.reg_read(UC_X86_REG_RSP) - 0x200) & ~0xF
            value = self._run_frame(fn, args, rsp, nested=True)
            self.uc.context_restore(ctx)
            return value
        # Top level (no thread running): an arbitrary-thread context such as
        # a DPC, on a stack of its own. It may not wait.
        if self.dpc_stack is None:
            self.dpc_stack = self.new_stack()
        saved = self.current
        self.current = None
        try:
            return self._run_frame(fn, args, self.dpc_stack - 0x40, nested=True)
        finally:
            self.current = saved

    def _setup_frame(self, fn, args, rsp):
        """Writes a call frame: args in registers and the stack, return
        address EXIT_STUB. Returns the new RSP."""
        n = len(args)
        extra = max(0, n - 4)
        frame = 0x20 + 8 * extra
        rsp = (rsp - frame - 8) & ~0xF  # after the push below rsp % 16 == 8
        rsp -= 8
        self.w64(rsp, EXIT_STUB)
        for i in range(4, n):
            self.w64(rsp + 8 + 8 * i, args[i])
        regs = [UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_R8, UC_X86_REG_R9]
        for i, a in enumerate(args[:4]):
            self.uc.reg_write(regs[i], a & 0xFFFFFFFFFFFFFFFF)
        self.uc.reg_write(UC_X86_REG_RSP, rsp)
        self.uc.reg_write(UC_X86_REG_RIP, fn)
        return rsp

    def _run_frame(self, fn, args, rsp, nested):
        self._setup_frame(fn, args, rsp)
        self.nesting += 1
        try:
            self._emu(fn, nested)
        finally:
            self.nesting -= 1
        if self.current is not None and self.current.state == "waiting" and nested:
            raise EmulationError("a call at raised IRQL (completion routine, DPC) tried to wait")
        return self.uc.reg_read(UC_X86_REG_RAX)

    def _emu(self, start, nested):
        self.fault = None
        try:
            self.uc.emu_start(start, EXIT_STUB, count=self.instructions_budget or 0)
            if not nested or self.nesting == 1:
                self.flush_unmaps()
        except UcError as e:
            if self.fault is None:
                rip = self.uc.reg_read(UC_X86_REG_RIP)
                self.fault = EmulationError(f"CPU fault {e} at rip {rip:#x} ({self.symbolize(rip)})")
        if self.fault is not None:
            fault, self.fault = self.fault, None
            raise fault
        rip = self.uc.reg_read(UC_X86_REG_RIP)
        if rip != EXIT_STUB and (self.current is None or self.current.state != "waiting"):
            raise EmulationError(f"emulation stopped at {rip:#x} ({self.symbolize(rip)}): instruction budget exhausted (a spinning panic handler?)")

    # ------------------------------------------------------------------
    # threads and time

    def new_stack(self):
        base = self.next_stack + PAGE  # one unmapped guard page below
        self.next_stack += KERNEL_STACK + 2 * PAGE
        self._map(base, KERNEL_STACK)
        return base + KERNEL_STACK

    def spawn(self, name, fn, *args, on_exit=None):
        """A new thread that will run ``fn(*args)``; returns it (ready)."""
        obj = self.system.alloc(0x500, tag=b"Thre")  # an ETHREAD-sized block
        t = Thread(len(self.threads) + 1, name, self.new_stack(), obj)
        t.entry = (fn, args)
        t.on_exit = on_exit
        self.threads.append(t)
        self.dispatcher[obj] = DispatcherObject("thread", signalled=False)
        return t

    def run_thread(self, t):
        """Runs ``t`` until it parks or ends."""
        self.current = t
        self.nesting = 1
        try:
            if not t.started:
                t.started = True
                fn, args = t.entry
                self._setup_frame(fn, args, t.stack_top - 0x40)
                start = fn
            else:
                self.uc.context_restore(t.context)
                self._return_by_hand(t.resume_value)
                start = self.uc.reg_read(UC_X86_REG_RIP)
            t.state = "running"
            self._emu(start, nested=False)
            if t.state == "waiting":
                t.context = self.uc.context_save()
            else:
                t.state = "done"
                t.result = self.uc.reg_read(UC_X86_REG_RAX)
                self.dispatcher[t.object].signalled = True
                if t.on_exit:
                    t.on_exit(t)
        finally:
            self.nesting = 0
            self.current = None

    def signalled(self, obj):
        d = self.dispatcher.get(obj)
        if d is None:
            raise EmulationError(f"wait on {obj:#x}, which is not a dispatcher object the kernel knows (uninitialised event?)")
        return d.signalled

    def satisfy(self, obj):
        """A waiter was released by ``obj``: a synchronization event resets."""
        d = self.dispatcher[obj]
        if d.kind == "sync":
            d.signalled = False

    def try_wait(self, wait):
        """Returns the wait's status if it can complete now, else None."""
        if wait.wait_all:
            if all(self.signalled(o) for o in wait.objects):
                for o in wait.objects:
                    self.satisfy(o)
                return STATUS_SUCCESS
        else:
            for i, o in enumerate(wait.objects):
                if self.signalled(o):
                    self.satisfy(o)
                    return STATUS_SUCCESS + i
        if wait.deadline is not None and self.now >= wait.deadline:
            return STATUS_TIMEOUT
        return None

    def wake_ready(self):
        """Moves every waiting thread whose wait completes now to ready."""
        woke = False
        for t in self.threads:
            if t.state == "waiting":
                status = self.try_wait(t.wait)
                if status is not None:
                    w = t.wait
                    t.wait = None
                    t.state = "ready"
                    t.resume_value = w.on_wake(status) if w.on_wake else status
                    woke = True
        return woke

    def next_deadline(self):
        ds = [t.wait.deadline for t in self.threads if t.state == "waiting" and t.wait.deadline is not None]
        return min(ds) if ds else None


class DispatcherObject:
    def __init__(self, kind, signalled):
        self.kind = kind  # notification | sync | thread
        self.signalled = signalled


class Pool:
    """Page-granular allocations that are never reused: a freed block is
    unmapped, so any later access faults (and is reported as use after free).
    Counts outstanding allocations by tag."""

    def __init__(self, machine, base, owner="driver"):
        self.m = machine
        self.next = base
        self.live = {}  # addr -> (size, tag)
        self.freed = {}  # addr -> (size, tag)
        self.owner = owner
        self.allocs = 0
        self.frees = 0

    def alloc(self, size, tag=b"None", fill=0):
        size = max(size, 1)
        pages = (size + PAGE - 1) // PAGE
        addr = self.next
        self.next += (pages + 1) * PAGE  # an unmapped page after each block
        self.m._map(addr, pages * PAGE)
        if fill:
            self.m.write(addr, bytes([fill]) * size)
        self.live[addr] = (size, tag)
        self.allocs += 1
        return addr

    def free(self, addr, tag=None):
        if addr not in self.live:
            if addr in self.freed:
                raise EmulationError(f"double free of pool block {addr:#x} (tag {self.freed[addr][1]!r})")
            raise EmulationError(f"free of {addr:#x}, which is not the start of a pool block")
        size, t = self.live.pop(addr)
        if tag is not None and tag != t:
            raise EmulationError(f"ExFreePoolWithTag({addr:#x}) with tag {tag!r}, allocated with {t!r}")
        pages = (size + PAGE - 1) // PAGE
        # Poisoned at once; unmapped when the current run of the emulator
        # stops (unmapping from inside a hook faults unicorn itself), so a
        # later access faults and is reported as a use after free.
        self.m.write(addr, b"\xdd" * (pages * PAGE))
        self.m.pending_unmaps.append((addr, pages * PAGE))
        self.freed[addr] = (size, t)
        self.frees += 1

    def freed_block(self, addr):
        for a, (size, tag) in self.freed.items():
            if a <= addr < a + ((size + PAGE - 1) // PAGE) * PAGE:
                return f"{a:#x} tag {tag.decode('latin-1')!r}"
        return None

    def outstanding_by_tag(self):
        out = {}
        for size, tag in self.live.values():
            k = tag.decode("latin-1")
            out[k] = out.get(k, 0) + 1
        return out


def _object_type(m):
    # An OBJECT_TYPE starts with its TypeList LIST_ENTRY, linking the
    # objects of that type: a non-zero value that is not the type, so code
    # that reads the type object instead of passing its address hands a
    # wrong, non-NULL type on.
    t = m.system.alloc(0x100, tag=b"ObjT")
    first = m.system.alloc(0x40, tag=b"ObjH")
    m.write(t, struct.pack("<QQ", first, first))
    return t


# Data exports the driver imports: each IAT slot points at a kernel variable
# whose value is returned by the function here.
DATA_IMPORTS = {
    "PsThreadType": _object_type,
    "IoFileObjectType": _object_type,
    "IoDeviceObjectType": _object_type,
}
