"""virtio-win's viosock.sys as its sources describe it (viosock/sys/Socket.c,
public.h, vio_sockets.h): a device interface of class
GUID_DEVINTERFACE_VIOSOCK whose symbolic link resolves to \\Device\\Viosock;
a create without an extended attribute opens a control file (IOCTL_GET_CONFIG
gives the guest CID), a create with a FILE_FULL_EA_INFORMATION whose value is
VIRTIO_VSOCK_PARAMS {Socket = 0, Type = STREAM} opens a new socket; the
socket connects with IOCTL_SOCKET_CONNECT (a sockaddr_vm, family 40), moves
data with IRP_MJ_WRITE / IRP_MJ_READ (direct I/O: MdlAddress) and shuts down
with IOCTL_SOCKET_SHUTDOWN. Each socket is bridged to a real TCP connection
to thinagent-scanner. sockaddr_vm is vio_sockets.h's 12 bytes (no zero
padding, unlike VMware's)."""

import socket
import struct

from . import layouts as L
from .bridge import BridgedSocket, poll_all
from .kernel import STATUS_CANCELLED, STATUS_PENDING, STATUS_SUCCESS, Device
from .machine import EmulationError

GUID_DEVINTERFACE_VIOSOCK = bytes.fromhex("1fdc586bc3010f44be1cb95d000f1ff5")
GUID_DEVICE_INTERFACE_ARRIVAL = bytes.fromhex("04403acbf046d011b08f00609713053f")
LINK = "\\??\\ROOT#VIOSOCK#0000#{6b58dc1f-01c3-440f-be1c-b95d000f1ff5}"
IOCTL_GET_CONFIG = 0x08013004
AF_VSOCK = 40
GUEST_CID = 3
STATUS_CONNECTION_REFUSED = 0xC0000236
STATUS_INVALID_DEVICE_REQUEST = 0xC0000010


def ctl_code(dev, fn, method, access):
    return (dev << 16) | (access << 14) | (fn << 2) | method


FILE_DEVICE_SOCKET = 0x0801
IOCTL_SOCKET_CONNECT = ctl_code(FILE_DEVICE_SOCKET, 0x800 | 2, 0, 0)
IOCTL_SOCKET_SHUTDOWN = ctl_code(FILE_DEVICE_SOCKET, 0x800 | 4, 0, 0)


class ViosockDevice(Device):
    name = "\\Device\\Viosock"

    def __init__(self, world, scanner, expected):
        self.w = world
        self.k = world.k
        self.m = world.m
        self.scanner = scanner
        self.expected = expected  # (cid, port)
        self.sockets = {}  # file object -> Sock
        self.controls = set()
        self.connects = []

    def arrive(self):
        """The interface arrives: every live PnP registration for its class
        gets the arrival callback, on a system thread (PASSIVE_LEVEL)."""
        self.k.symlinks[LINK.lower().replace("\\??\\", "\\global??\\")] = self.name
        for reg in self.k.pnp:
            if reg["live"] and reg["guid"] == GUID_DEVINTERFACE_VIOSOCK:
                n = self.m.system.alloc(L.DICN_SIZE, tag=b"PnpE")
                self.m.write(n, struct.pack("<HH", 1, L.DICN_SIZE))
                self.m.write(n + L.DICN_EVENT, GUID_DEVICE_INTERFACE_ARRIVAL)
                self.m.write(n + L.DICN_CLASS, GUID_DEVINTERFACE_VIOSOCK)
                self.m.w64(n + L.DICN_LINK, self.m.new_unicode_string(LINK))
                self.w.call_in_thread("pnp-arrival", reg["callback"], n, reg["context"])
        self.k.emit("viosock-arrival", link=LINK)

    # -- the create path (ZwCreateFile) ---------------------------------------

    def create(self, k, ea, ea_len):
        fo = k.new_file_object(self)
        if ea == 0:
            self.controls.add(fo)
            return fo
        raw = k.m.read(ea, ea_len)
        nxt, flags, name_len, value_len = struct.unpack_from("<IBBH", raw, 0)
        value_at = 8 + 1 + name_len
        if nxt != 0 or value_len < 16 or value_at + value_len > ea_len:
            raise EmulationError(f"viosock create EA malformed: next {nxt}, name {name_len}, value {value_len}, buffer {ea_len}")
        sock_handle, stype = struct.unpack_from("<QI", raw, value_at)
        if sock_handle != 0 or stype != 1:
            raise EmulationError(f"viosock create EA asks Socket {sock_handle:#x} Type {stype} (a new stream socket is 0, 1)")
        self.sockets[fo] = BridgedSocket()
        return fo

    def open_status(self, k):
        return STATUS_SUCCESS

    # -- IRPs -----------------------------------------------------------------------

    def dispatch(self, k, irp, sl):
        m = k.m
        major = m.r8(sl + L.ISL_MAJOR)
        fo = m.r64(sl + L.ISL_FILE_OBJECT)
        if major == L.IRP_MJ_DEVICE_CONTROL:
            code = m.r32(sl + L.ISL_IOCTL_CODE)
            buf = m.r64(irp + L.IRP_SYSTEM_BUFFER)
            in_len = m.r32(sl + L.ISL_IOCTL_INPUT_LENGTH)
            out_len = m.r32(sl + L.ISL_IOCTL_OUTPUT_LENGTH)
            if code == IOCTL_GET_CONFIG:
                if fo not in self.controls:
                    return self._done(irp, STATUS_INVALID_DEVICE_REQUEST, 0)
                if out_len < 4:
                    return self._done(irp, 0xC0000023, 0)
                m.w32(buf, GUEST_CID)
                return self._done(irp, STATUS_SUCCESS, 4)
            s = self.sockets.get(fo)
            if s is None:
                return self._done(irp, 0xE0040001, 0)  # STATUS_NOT_SOCKET
            if code == IOCTL_SOCKET_CONNECT:
                fam, _r, port, cid = struct.unpack("<HHII", m.read(buf, 12))
                self.connects.append({"family": fam, "cid": cid, "port": port})
                k.emit("viosock-connect", family=fam, cid=cid, port=port)
                if in_len < 12 or fam != AF_VSOCK or (cid, port) != self.expected or self.scanner is None:
                    return self._done(irp, STATUS_CONNECTION_REFUSED, 0)
                try:
                    s.sock = socket.create_connection(self.scanner, timeout=5)
                    s.sock.setblocking(False)
                except OSError:
                    return self._done(irp, STATUS_CONNECTION_REFUSED, 0)
                return self._done(irp, STATUS_SUCCESS, 0)
            if code == IOCTL_SOCKET_SHUTDOWN:
                s.shutdown()
                return self._done(irp, STATUS_SUCCESS, 0)
            return self._done(irp, STATUS_INVALID_DEVICE_REQUEST, 0)
        s = self.sockets.get(fo)
        if major in (L.IRP_MJ_READ, L.IRP_MJ_WRITE):
            if s is None or s.sock is None:
                return self._done(irp, 0xC0000184, 0)  # STATUS_INVALID_DEVICE_STATE
            mdl = m.r64(irp + L.IRP_MDL_ADDRESS)
            length = m.r32(sl + L.ISL_RW_LENGTH)
            va, count = k.mdl_buffer(mdl)
            if length > count:
                raise EmulationError(f"read/write Length {length} beyond its MDL's {count} bytes")
            if major == L.IRP_MJ_WRITE:
                if not s.send(m.read(va, length)):
                    return self._done(irp, 0xC000020D, 0)  # STATUS_CONNECTION_RESET
                return self._done(irp, STATUS_SUCCESS, length)
            if s.pending is not None:
                raise EmulationError("a second read while one is pending on the same viosock socket")
            s.pending = (irp, va, length)
            m.w8(sl + L.ISL_CONTROL, m.r8(sl + L.ISL_CONTROL) | L.SL_PENDING_RETURNED)
            self.pump(s)
            return STATUS_PENDING if s.pending is not None else STATUS_SUCCESS
        return self._done(irp, STATUS_INVALID_DEVICE_REQUEST, 0)

    def _done(self, irp, status, info):
        self.k.complete_irp(irp, status, info)
        return status

    def cancel(self, k, irp):
        for s in self.sockets.values():
            if s.pending is not None and s.pending[0] == irp:
                s.pending = None
                k.complete_irp(irp, STATUS_CANCELLED, 0)
                return True
        return False

    def closed_file(self, fo):
        s = self.sockets.get(fo)
        if s is not None and not s.closed:
            if s.pending is not None:
                raise EmulationError("a viosock socket closed with a read still pending")
            s.close()

    # -- the real side --------------------------------------------------------------

    def pump(self, s, wait=0.0):
        """Completes ``s``'s pending read if the scanner sent something."""
        if s.pending is None:
            return False
        irp, va, length = s.pending
        chunk = s.take(length, wait)
        if chunk is None:
            return False
        self.m.write(va, chunk)
        s.pending = None
        self.k.complete_irp(irp, STATUS_SUCCESS, len(chunk))
        return True

    def poll(self, wait):
        return poll_all(self.sockets.values(), self.pump, wait)


__all__ = ["ViosockDevice"]
