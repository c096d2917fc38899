"""Filter Manager (fltmgr.sys) as the driver sees it: registration,
filtering start, unregistration, and the registration tables read back from
the driver's memory so scenarios can call the registered callbacks."""

import struct

from . import layouts as L
from .machine import EmulationError

STATUS_SUCCESS = 0
STATUS_FLT_DO_NOT_DETACH = 0xC01C0010


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
                ctype, cflags, cleanup, size_, tag = struct.unpack("<HHxxxxQQI", m.read(a, 28))
                if ctype == 0xFFFF:  # FLT_CONTEXT_END
                    break
                self.contexts.append({"type": ctype, "size": size_, "tag": tag, "cleanup": cleanup})
                a += L.FCTXREG_SIZE


class FilterManager:
    def __init__(self, kernel):
        self.k = kernel
        self.m = kernel.m
        self.registration = None
        self.filter = None
        self.filtering = False
        self.unregistered = False
        for name in dir(self):
            if name.startswith("api_"):
                self.m.handlers[name[4:]] = getattr(self, name)

    def api_FltRegisterFilter(self, m):
        driver, reg, out = m.args(3)
        if self.filter is not None:
            raise EmulationError("FltRegisterFilter called twice")
        r = Registration(m, reg)
        if r.size != L.FREG_SIZE or r.version != 0x0203:
            self.k.emit("api", name="FltRegisterFilter", status=0xC000000D, size=r.size, version=r.version)
            return 0xC000000D
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
        self.unregistered = True
        self.filtering = False
        m.system.free(f)
        return 0
