"""VMware's vSockets device as the seed describes it: ``\\Device\\vmci``,
owned by ``\\Driver\\vsock`` (vsock.sys), answering the provider-capture
IOCTL 0x810320C0 and the address-family IOCTL 0x81032068.

How it answers the capture is the scenario's choice:

* ``ready``: success at once, with a reply holding a WSK_PROVIDER_NPI
  ``{Client, Dispatch}`` pair whose dispatch table lies inside vsock.sys's
  image (hypothesis (a) of docs/km-sys.md);
* ``busy_until=K``: ``STATUS_DEVICE_BUSY`` (0x80000011) for the first K
  attempts, as on the incident's machine while vmci.sys has no device
  objects, then ready;
* ``never``: always busy;
* ``hang_first=K``: the first K capture IRPs stay pending until cancelled
  (then complete with STATUS_CANCELLED), later ones are answered.
"""

import struct

from . import layouts as L
from .kernel import STATUS_CANCELLED, STATUS_PENDING, STATUS_SUCCESS, Device
from .machine import PROVIDER_IMAGE, EmulationError

IOCTL_CAPTURE = 0x810320C0
IOCTL_GET_AF = 0x81032068
STATUS_DEVICE_BUSY = 0x80000011
CAPTURE_LEN = 0x5C
AF_VSOCK_VMWARE = 28  # what vmci_sockets.h's VMCISock_GetAFValue returns on Windows guests


class VmciDevice(Device):
    name = "\\Device\\vmci"

    def __init__(self, busy_until=0, never=False, hang_first=0, provider=None, present=True):
        self.busy_until = busy_until
        self.never = never
        self.hang_first = hang_first
        self.provider = provider  # WskProvider (its NPI goes in the reply)
        self.present = present
        self.capture_irps = 0
        self.pending = {}
        self.requests = []  # (t_ms, code, status)

    def dispatch(self, k, irp, sl):
        m = k.m
        major = m.r8(sl + L.ISL_MAJOR)
        if major != L.IRP_MJ_DEVICE_CONTROL:
            k.complete_irp(irp, 0xC0000010, 0)  # STATUS_INVALID_DEVICE_REQUEST
            return 0xC0000010
        code = m.r32(sl + L.ISL_IOCTL_CODE)
        in_len = m.r32(sl + L.ISL_IOCTL_INPUT_LENGTH)
        out_len = m.r32(sl + L.ISL_IOCTL_OUTPUT_LENGTH)
        buf = m.r64(irp + L.IRP_SYSTEM_BUFFER)
        fo = m.r64(sl + L.ISL_FILE_OBJECT)
        if fo == 0 or fo not in k.objects:
            raise EmulationError(f"IOCTL {code:#x} to \\Device\\vmci without a referenced file object in the stack location")
        if code == IOCTL_CAPTURE:
            self.capture_irps += 1
            n = self.capture_irps
            if in_len != CAPTURE_LEN or out_len != CAPTURE_LEN:
                status, info = 0xC000000D, 0
            else:
                req = m.read(buf, CAPTURE_LEN)
                first = struct.unpack_from("<I", req, 0)[0]
                if first != 1 or any(req[4:]):
                    status, info = 0xC000000D, 0
                elif n <= self.hang_first:
                    self.pending[irp] = n
                    self.requests.append((k.m.now, code, "pending"))
                    m.w64(irp + L.IRP_CANCEL_ROUTINE, PROVIDER_IMAGE + 0x20)
                    sl_control = m.r8(sl + L.ISL_CONTROL)
                    m.w8(sl + L.ISL_CONTROL, sl_control | L.SL_PENDING_RETURNED)
                    return STATUS_PENDING
                elif self.never or n <= self.busy_until:
                    status, info = STATUS_DEVICE_BUSY, 0
                else:
                    reply = bytearray(CAPTURE_LEN)
                    struct.pack_into("<I", reply, 0, 1)
                    if self.provider is not None:
                        # the NPI at +8: {Client, Dispatch}
                        struct.pack_into("<QQ", reply, 8, self.provider.client, self.provider.dispatch)
                    m.write(buf, bytes(reply))
                    status, info = STATUS_SUCCESS, CAPTURE_LEN
            self.requests.append((k.m.now, code, status))
            k.emit("capture-ioctl", attempt=n, status=status)
            k.complete_irp(irp, status, info)
            return status
        if code == IOCTL_GET_AF:
            if out_len >= 4:
                m.w32(buf, AF_VSOCK_VMWARE)
                k.complete_irp(irp, STATUS_SUCCESS, 4)
                return STATUS_SUCCESS
            k.complete_irp(irp, 0xC0000023, 0)
            return 0xC0000023
        k.complete_irp(irp, 0xC0000010, 0)
        return 0xC0000010

    def cancel(self, k, irp):
        if irp not in self.pending:
            return False
        del self.pending[irp]
        k.emit("capture-ioctl", attempt=self.capture_irps, status=STATUS_CANCELLED, cancelled=True)
        k.complete_irp(irp, STATUS_CANCELLED, 0)
        return True


