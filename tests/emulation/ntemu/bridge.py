"""The real side of an emulated guest socket: a TCP connection to a running
thinagent-scanner, shared by the two transports (wsk.py for the captured
VMCI provider, viosock.py for virtio-vsock)."""

import select
import socket


class BridgedSocket:
    """One guest socket bridged to one TCP connection. ``pending`` is the
    transport's pending receive (whatever it needs to complete it), None
    when no receive waits."""

    def __init__(self, sock=None):
        self.sock = sock
        self.pending = None
        self.buffered = b""
        self.eof = False
        self.awaiting_reply = False  # the guest sent; the scanner has not answered yet
        self.stalled = False  # the host stopped answering (a scenario's fault)
        self.closed = False
        self.sent = []  # raw bytes the guest sent
        self.received = []  # raw bytes delivered to the guest

    def send(self, data):
        """Sends the guest's bytes; False if the connection is gone."""
        self.sent.append(data)
        try:
            self.sock.setblocking(True)
            self.sock.sendall(data)
            self.sock.setblocking(False)
        except OSError:
            return False
        self.awaiting_reply = True
        return True

    def shutdown(self, how=socket.SHUT_RDWR):
        if self.sock is not None:
            try:
                self.sock.shutdown(how)
            except OSError:
                pass

    def close(self):
        if self.sock is not None and not self.closed:
            self.sock.close()
        self.closed = True

    def take(self, capacity, wait=0.0):
        """Bytes for a pending receive of ``capacity`` bytes: waits up to
        ``wait`` seconds of real time for the scanner when nothing is
        buffered. Returns the chunk (b"" at end of stream) or None when
        there is nothing to deliver (yet)."""
        if self.sock is None or self.closed or self.pending is None or self.stalled:
            return None
        if not self.buffered and not self.eof:
            readable, _, _ = select.select([self.sock], [], [], wait)
            if readable:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    self.buffered += data
                    self.awaiting_reply = False
                else:
                    self.eof = True
        if not self.buffered and not self.eof:
            return None
        chunk, self.buffered = self.buffered[:capacity], self.buffered[capacity:]
        self.received.append(chunk)
        return chunk


def poll_all(sockets, deliver, wait):
    """Completes every pending receive whose data arrived; waits up to
    ``wait`` seconds of real time on a socket whose reply is expected.
    ``deliver(s)`` completes ``s``'s pending receive. True if any did."""
    progressed = False
    for s in list(sockets):
        if s.pending is not None and not s.closed and not s.stalled:
            if deliver(s, wait if s.awaiting_reply else 0.0):
                progressed = True
    return progressed
