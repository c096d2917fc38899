"""The captured vSockets provider: a Winsock Kernel provider whose dispatch
tables and functions live inside vsock.sys's image (fake code at kernel
addresses with hooks), and whose connection sockets are bridged to real TCP
connections to a running thinagent-scanner.

Layouts (wsk.h, x64): WSK_PROVIDER_DISPATCH is Version (USHORT),
Reserved (USHORT), then six pointers (WskSocket, WskSocketConnect,
WskControlClient, WskGetAddressInfo, WskFreeAddressInfo, WskGetNameInfo);
WSK_PROVIDER_CONNECTION_DISPATCH is Basic {WskControlSocket, WskCloseSocket},
WskBind, WskConnect, WskGetLocalAddress, WskGetRemoteAddress, WskSend,
WskReceive, WskDisconnect, WskRelease; WSK_SOCKET is {Dispatch};
WSK_BUF is {Mdl, Offset (SIZE_T), Length (SIZE_T)}; SOCKADDR_VM is
{family u16, reserved u16, port u32, cid u32, zero[4]}.
"""

import socket
import struct

from . import layouts as L
from .bridge import BridgedSocket, poll_all
from .kernel import STATUS_CANCELLED, STATUS_PENDING, STATUS_SUCCESS
from .machine import PROVIDER_IMAGE, EmulationError

STATUS_CONNECTION_REFUSED = 0xC0000236
STATUS_CONNECTION_RESET = 0xC000020D
STATUS_INVALID_PARAMETER = 0xC000000D
SOCK_STREAM = 1
WSK_VERSION_1_0 = 0x0100


class WskProvider:
    def __init__(self, world, scanner, host_cid=2, host_port=None, family=28):
        self.w = world
        self.m = world.m
        self.k = world.k
        self.scanner = scanner  # (host, port) or None
        self.family = family
        self.expected = (host_cid, host_port)
        m = self.m
        fns = {}
        for name in [
            "WskSocket",
            "WskSocketConnect",
            "WskControlClient",
            "WskGetAddressInfo",
            "WskFreeAddressInfo",
            "WskGetNameInfo",
            "WskControlSocket",
            "WskCloseSocket",
            "WskBind",
            "WskConnect",
            "WskGetLocalAddress",
            "WskGetRemoteAddress",
            "WskSend",
            "WskReceive",
            "WskDisconnect",
            "WskRelease",
        ]:
            handler = getattr(self, "fn_" + name, None) or self._unsupported(name)
            fns[name] = m.provider_function(name, handler)
        # data inside the image: the client context, the two tables
        self.client = PROVIDER_IMAGE + 0x30000
        self.dispatch = PROVIDER_IMAGE + 0x30100
        self.connection_dispatch = PROVIDER_IMAGE + 0x30200
        m.write(
            self.dispatch,
            struct.pack(
                "<HHI6Q",
                WSK_VERSION_1_0,
                0,
                0,
                fns["WskSocket"],
                fns["WskSocketConnect"],
                fns["WskControlClient"],
                fns["WskGetAddressInfo"],
                fns["WskFreeAddressInfo"],
                fns["WskGetNameInfo"],
            ),
        )
        m.write(
            self.connection_dispatch,
            struct.pack(
                "<10Q",
                fns["WskControlSocket"],
                fns["WskCloseSocket"],
                fns["WskBind"],
                fns["WskConnect"],
                fns["WskGetLocalAddress"],
                fns["WskGetRemoteAddress"],
                fns["WskSend"],
                fns["WskReceive"],
                fns["WskDisconnect"],
                fns["WskRelease"],
            ),
        )
        self.sockets = {}
        self.connects = []

    def _unsupported(self, name):
        def fail(m):
            raise EmulationError(f"the driver called the provider's {name}, which ThinAgent should not need")

        return fail

    # -- IRP completion for a WSK request -------------------------------------

    def complete(self, irp, status, info):
        """The WSK subsystem completes a client IRP: the client's completion
        routine sits in the IRP's next stack location (IoSetCompletionRoutine
        on a freshly allocated IRP), so step into it first."""
        m = self.m
        cur = m.r8(irp + L.IRP_CURRENT_LOCATION)
        if cur <= 1:
            raise EmulationError("WSK request IRP has no stack location for its completion routine")
        m.w8(irp + L.IRP_CURRENT_LOCATION, cur - 1)
        m.w64(irp + L.IRP_CURRENT_STACK_LOCATION, m.r64(irp + L.IRP_CURRENT_STACK_LOCATION) - L.ISL_SIZE)
        self.k.irps.setdefault(irp, {"stack": 1, "pending": False})
        self.k.complete_irp(irp, status, info)

    def _pend(self, irp, cancel):
        info = self.k.irps.setdefault(irp, {"stack": 1})
        info["pending"] = True
        info["device"] = _CancelHook(cancel)

    # -- provider functions ---------------------------------------------------

    def fn_WskSocketConnect(self, m):
        (client, stype, proto, local, remote, flags, sctx, sdispatch, proc, thread, sd, irp) = m.args(12)
        if client != self.client:
            raise EmulationError(f"WskSocketConnect with client {client:#x}, not the captured NPI's {self.client:#x}")
        stype &= 0xFFFF  # USHORT SocketType
        flags &= 0xFFFFFFFF
        fam, _r, port, cid = struct.unpack("<HHII", m.read(remote, 12))
        lfam, _r2, lport, lcid = struct.unpack("<HHII", m.read(local, 12))
        self.connects.append({"family": fam, "cid": cid, "port": port, "local_cid": lcid, "local_port": lport, "type": stype})
        self.k.emit("wsk-connect", family=fam, cid=cid, port=port, local_cid=lcid, local_port=lport, socket_type=stype)
        if stype != SOCK_STREAM or fam != self.family:
            self.complete(irp, STATUS_INVALID_PARAMETER, 0)
            return STATUS_INVALID_PARAMETER
        if self.scanner is None or (self.expected[1] is not None and (cid, port) != self.expected):
            self.complete(irp, STATUS_CONNECTION_REFUSED, 0)
            return STATUS_CONNECTION_REFUSED
        try:
            s = socket.create_connection(self.scanner, timeout=5)
            s.setblocking(False)
        except OSError as e:
            self.k.emit("wsk-connect-failed", error=str(e))
            self.complete(irp, STATUS_CONNECTION_REFUSED, 0)
            return STATUS_CONNECTION_REFUSED
        wsk_socket = m.system.alloc(0x10, tag=b"WskS")
        m.w64(wsk_socket, self.connection_dispatch)
        self.sockets[wsk_socket] = BridgedSocket(s)
        self.complete(irp, STATUS_SUCCESS, wsk_socket)
        return STATUS_SUCCESS

    def _socket(self, addr):
        s = self.sockets.get(addr)
        if s is None or s.closed:
            raise EmulationError(f"WSK call on {addr:#x}, which is not an open socket of this provider")
        return s

    def _buf(self, wsk_buf):
        mdl, offset, length = struct.unpack("<QQQ", self.m.read(wsk_buf, 24))
        va, count = self.k.mdl_buffer(mdl)
        if va == 0:
            raise EmulationError("WSK_BUF's MDL has no system address (MmBuildMdlForNonPagedPool not called?)")
        if offset + length > count:
            raise EmulationError(f"WSK_BUF Offset {offset} + Length {length} beyond the MDL's {count} bytes")
        return va + offset, length

    def fn_WskSend(self, m):
        sock_addr, wsk_buf, flags, irp = m.args(4)
        s = self._socket(sock_addr)
        va, length = self._buf(wsk_buf)
        data = m.read(va, length)
        if not s.send(data):
            self.complete(irp, STATUS_CONNECTION_RESET, 0)
            return STATUS_CONNECTION_RESET
        self.complete(irp, STATUS_SUCCESS, length)
        return STATUS_SUCCESS

    def fn_WskReceive(self, m):
        sock_addr, wsk_buf, flags, irp = m.args(4)
        s = self._socket(sock_addr)
        if s.pending is not None:
            raise EmulationError("a second WskReceive while one is pending on the same socket")
        s.pending = (irp, wsk_buf)
        self._pend(irp, lambda k, i: self._cancel_receive(s, i))
        self.pump(s)
        if s.pending is None:
            return STATUS_SUCCESS
        return STATUS_PENDING

    def _cancel_receive(self, s, irp):
        if s.pending is None or s.pending[0] != irp:
            return False
        s.pending = None
        self.complete(irp, STATUS_CANCELLED, 0)
        return True

    def fn_WskDisconnect(self, m):
        sock_addr, wsk_buf, flags, irp = m.args(4)
        s = self._socket(sock_addr)
        s.shutdown(socket.SHUT_WR)
        self.k.emit("wsk-disconnect", flags=flags)
        self.complete(irp, STATUS_SUCCESS, 0)
        return STATUS_SUCCESS

    def fn_WskCloseSocket(self, m):
        sock_addr, irp = m.args(2)
        s = self._socket(sock_addr)
        if s.pending is not None:
            raise EmulationError("WskCloseSocket with a receive still pending")
        s.close()
        self.k.emit("wsk-close")
        self.complete(irp, STATUS_SUCCESS, 0)
        return STATUS_SUCCESS

    # -- the real side ----------------------------------------------------------

    def pump(self, s, wait=0.0):
        """Completes ``s``'s pending receive if the scanner sent something
        (waiting up to ``wait`` s of real time). True if it did."""
        if s.pending is None:
            return False
        irp, wsk_buf = s.pending
        va, length = self._buf(wsk_buf)
        chunk = s.take(length, wait)
        if chunk is None:
            return False
        self.m.write(va, chunk)
        s.pending = None
        self.k.irps[irp]["pending"] = False
        self.k.emit("wsk-receive", bytes=len(chunk), head=chunk[:24].hex())
        self.complete(irp, STATUS_SUCCESS, len(chunk))
        return True

    def poll(self, wait):
        """Called by the world when no thread can run."""
        return poll_all(self.sockets.values(), self.pump, wait)

    def stall_host(self):
        """The host stops answering on every open connection (nothing it
        sends reaches the guest any more); the connections stay up."""
        for s in self.sockets.values():
            s.stalled = True

    def unstall_host(self):
        """The host answers again (what it sent meanwhile arrives now)."""
        for s in self.sockets.values():
            s.stalled = False

    def kill_host(self):
        for s in self.sockets.values():
            if not s.closed:
                s.shutdown()


class _CancelHook:
    name = "wsk"

    def __init__(self, fn):
        self.fn = fn

    def cancel(self, k, irp):
        return self.fn(k, irp)
