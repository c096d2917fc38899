#!/usr/bin/env python3
"""Writes session.toml: the protocol's test vectors (docs/protocol.md §12).

The frames are encoded here, independently of the Rust encoder, so the
vectors also check the Rust decoder against a second implementation of §2-§5
(crates/protocol/tests/vectors.rs decodes every frame and compares it with the
vector's `decodes`). Run `python3 generate.py` in this directory after
changing a vector, and commit both files.
"""
import struct
from pathlib import Path

# ----- encoding (§2-§5) ---------------------------------------------------------

TYPES = {"Hello": 0x01, "HelloAck": 0x02, "FileEvent": 0x10, "Verdict": 0x11,
         "ReadRequest": 0x20, "ReadData": 0x21, "Ping": 0x30, "Pong": 0x31,
         "Error": 0xF0, "Goodbye": 0xF1}
READ_CONTENT = 1


def frame(msg_type, rid, payload, version=1, flags=0, payload_len=None):
    t = TYPES.get(msg_type, msg_type)
    n = len(payload) if payload_len is None else payload_len
    return b"TAGT" + struct.pack("<HHIQI", version, t, flags, rid, n) + payload


def hello(vmin=1, vmax=1, caps=READ_CONTENT, name=b"vm-1", max_frame=65536, reads=4):
    return struct.pack("<HHHHHHHHQII", vmin, vmax, 2, len(name), 0, 1, 0, 0, caps,
                       max_frame, reads) + name


def hello_ack(version=1, max_frame=65536, events=64, chunk=65480, hb=10000, idle=30000, qt=1500):
    return struct.pack("<HHIIIIIII", version, 0, max_frame, events, chunk, hb, idle, qt, 0)


def file_event(size=10, path=b"/a", kind=1, encoding=1):
    return struct.pack("<BBHIII", kind, encoding, len(path), 1, 1, 1) + \
        struct.pack("<Q", 9) + b"\x01" * 16 + struct.pack("<QQ", size, 5) + path


DECISIONS = {"Allow": 1, "Deny": 2, "AllowNoCache": 3}


def verdict(decision, ttl=0, threat=b""):
    return struct.pack("<BBHI", DECISIONS[decision], 0, len(threat), ttl) + threat


def read_request(event, offset, length):
    return struct.pack("<QQII", event, offset, length, 0)


STATUS = {"Data": 1, "EndOfFile": 2, "Error": 3, "Cancelled": 4}


def read_data(event, offset, status, data=b"", space=0, code=0, data_len=None):
    n = len(data) if data_len is None else data_len
    return struct.pack("<QQBBHIII", event, offset, STATUS[status], space, 0, code, n, 0) + data


def heartbeat(nonce, ts):
    return struct.pack("<QQ", nonce, ts)


CODES = {"VersionUnsupported": 1, "UnknownMessageType": 2, "MalformedFrame": 3,
         "UnexpectedMessage": 4, "LimitExceeded": 5, "Internal": 6}


def error(code, text=b"", text_len=None):
    n = len(text) if text_len is None else text_len
    return struct.pack("<HH", CODES[code], n) + text


REASONS = {"Shutdown": 1, "ProtocolError": 2, "VersionUnsupported": 3, "Timeout": 4,
           "Overloaded": 5, "Restarting": 6}


def goodbye(reason, reserved=0):
    return struct.pack("<HH", REASONS[reason], reserved)

# ----- expected outputs ---------------------------------------------------------


def out(t, rid, **kw):
    """An expected frame; rid None means "any nonzero request id" (one the
    receiver chose itself, e.g. the id of its own Ping)."""
    if rid is None:
        return dict(type=t, **kw)
    return dict(type=t, request_id=rid, **kw)


def err(rid, code):
    return out("Error", rid, code=code)


def bye(reason="ProtocolError"):
    return out("Goodbye", 0, reason=reason)


def fatal(rid, code):
    return [err(rid, code), bye()]


def v(rid, decision="AllowNoCache", ttl=0):
    return out("Verdict", rid, decision=decision, ttl=ttl)

# ----- steps --------------------------------------------------------------------


def recv(data, decodes, expect=(), decode_limit=None, note=None):
    s = {"recv": data.hex(), "decodes": decodes}
    if decode_limit is not None:
        s["decode_limit"] = decode_limit
    if note:
        s["note"] = note
    s["expect"] = list(expect)
    return s


def app(action, expect=(), **kw):
    return dict(app=action, **kw, expect=list(expect))


HELLO_STEP = recv(frame("Hello", 1, hello()), "Hello", [out("HelloAck", 1, version=1)])
ACK_STEP = recv(frame("HelloAck", 1, hello_ack()), "HelloAck")


def host_connected(*steps):
    return [HELLO_STEP, *steps]


def guest_connected(*steps):
    return [ACK_STEP, *steps]


def fe(rid, size=10, expect=()):
    return recv(frame("FileEvent", rid, file_event(size)), "FileEvent", expect)


def fetch(event, read_id, offset, length):
    return app("fetch", [out("ReadRequest", read_id, event_id=event, offset=offset, length=length)],
               id=event)


def ping(rid, nonce=0xFEED, ts=123, expect=None):
    if expect is None:
        expect = [out("Pong", rid, nonce=nonce, timestamp=ts)]
    return recv(frame("Ping", rid, heartbeat(nonce, ts)), "Ping", expect)


def submit(rid):
    """Guest application submits a query; once connected it is sent at once."""
    return app("submit", [out("FileEvent", rid)])

# ----- the vectors --------------------------------------------------------------


V = []


def vec(name, section, receiver, rule, steps, closed, **extra):
    V.append(dict(name=name, section=section, receiver=receiver, rule=rule, closed=closed,
                  **extra, steps=steps))


GARBAGE = b"XXXX" + bytes(20)
HUGE_HEADER = frame("Ping", 5, b"", payload_len=65536 - 24 + 1)[:24]

for side, start in (("host", host_connected), ("guest", guest_connected)):
    g = side == "guest"
    vec(f"{side}_bad_magic_is_fatal", "9", side,
        "Bad magic is fatal: Error(MalformedFrame) with request id 0, Goodbye(ProtocolError), close.",
        start(recv(GARBAGE, "BadMagic", fatal(0, "MalformedFrame"))), True)
    vec(f"{side}_frame_above_limit_is_fatal", "9", side,
        "A header announcing a frame above the receiver's limit is fatal: Error(LimitExceeded) "
        "with request id 0 (the header is not trusted), Goodbye(ProtocolError), close.",
        start(recv(HUGE_HEADER, "FrameTooLarge", fatal(0, "LimitExceeded"))), True)
    vec(f"{side}_unsupported_version_is_skipped", "9", side,
        "A frame of an unsupported header version is skipped and answered with "
        "Error(VersionUnsupported) carrying its request id; the session goes on.",
        start(recv(frame("Ping", 5, heartbeat(1, 2), version=2), "UnsupportedVersion",
                   [err(5, "VersionUnsupported")]), ping(6)), False)
    vec(f"{side}_flags_not_checked_on_unsupported_version", "9", side,
        "The flags check comes after the version check: a frame of an unsupported version "
        "with nonzero flags is skipped (recoverable), not fatal.",
        start(recv(frame("Ping", 5, heartbeat(1, 2), version=2, flags=1), "UnsupportedVersion",
                   [err(5, "VersionUnsupported")]), ping(6)), False)
    vec(f"{side}_reserved_flags_are_fatal", "9", side,
        "Nonzero flags in a supported version are fatal: Error(MalformedFrame) echoing the "
        "frame's request id, Goodbye(ProtocolError), close.",
        start(recv(frame("Ping", 5, heartbeat(1, 2), flags=0x80000000), "ReservedFlags",
                   fatal(5, "MalformedFrame"))), True)
    vec(f"{side}_flags_checked_before_message_type", "9", side,
        "The flags check comes before the message-type check: an unknown type with nonzero "
        "flags is fatal.",
        start(recv(frame(0x7777, 5, b"", flags=1), "ReservedFlags", fatal(5, "MalformedFrame"))),
        True)
    vec(f"{side}_unknown_message_type_is_skipped", "9", side,
        "An unknown msg_type is skipped and answered with Error(UnknownMessageType) carrying "
        "its request id; the session goes on.",
        start(recv(frame(0x7777, 9, b"abc"), "UnknownMessageType", [err(9, "UnknownMessageType")]),
              ping(10)), False)
    vec(f"{side}_malformed_payload_is_fatal", "9", side,
        "A payload breaking §5 (here a 15-byte Ping) is fatal: Error(MalformedFrame) echoing the "
        "frame's request id, Goodbye(ProtocolError), close.",
        start(recv(frame("Ping", 5, bytes(15)), "Malformed", fatal(5, "MalformedFrame"))), True)
    vec(f"{side}_reserved_field_nonzero_is_fatal", "2", side,
        "A nonzero reserved field (Goodbye.reserved) is a fatal Malformed error.",
        start(recv(frame("Goodbye", 0, goodbye("Shutdown", reserved=1)), "Malformed",
                   fatal(0, "MalformedFrame"))), True)
    vec(f"{side}_malformed_error_frame_gets_goodbye_only", "9", side,
        "An Error frame is never answered with an Error: a malformed Error closes with "
        "Goodbye(ProtocolError) alone.",
        start(recv(frame("Error", 3, error("Internal", b"abc", text_len=5)), "Malformed", [bye()])),
        True)
    vec(f"{side}_error_frame_with_flags_gets_goodbye_only", "9", side,
        "An Error frame with nonzero flags closes with Goodbye(ProtocolError) alone.",
        start(recv(frame("Error", 3, error("Internal"), flags=1), "ReservedFlags", [bye()])), True)
    vec(f"{side}_error_frame_of_unsupported_version_skipped_silently", "9", side,
        "An Error frame of an unsupported version is skipped without an answer.",
        start(recv(frame("Error", 3, error("Internal"), version=2), "UnsupportedVersion"),
              ping(6)), False)
    vec(f"{side}_error_is_ignored", "5.8", side,
        "A received Error is logged, completes nothing and is not answered; the session goes on.",
        start(recv(frame("Error", 3, error("UnknownMessageType", b"type 0x7777")), "Error"),
              ping(6)), False)
    vec(f"{side}_ping_is_answered", "5.7", side,
        "A Ping is answered at once with a Pong echoing its request id, nonce and timestamp_ms.",
        start(ping(9, 0xABCDEF, 424242)), False)
    vec(f"{side}_ping_with_request_id_0_is_fatal", "7", side,
        "A request (Hello, FileEvent, ReadRequest, Ping) with request id 0 is a fatal "
        "Error(UnexpectedMessage) with request id 0, Goodbye(ProtocolError), close.",
        start(recv(frame("Ping", 0, heartbeat(1, 2)), "Ping", fatal(0, "UnexpectedMessage"))), True)
    vec(f"{side}_pong_with_request_id_0_is_ignored", "7", side,
        "A response whose request id matches no outstanding request (0 never does) is ignored.",
        start(recv(frame("Pong", 0, heartbeat(0, 2)), "Pong"), ping(6)), False)
    vec(f"{side}_unsolicited_pong_is_ignored", "7", side,
        "A Pong matching no outstanding Ping is ignored.",
        start(recv(frame("Pong", 99, heartbeat(99, 2)), "Pong"), ping(6)), False)
    vec(f"{side}_goodbye_with_nonzero_request_id_closes", "5.9", side,
        "A Goodbye's request id is ignored by its receiver: any Goodbye closes the session and "
        "nothing more is sent.",
        start(recv(frame("Goodbye", 5, goodbye("Shutdown")), "Goodbye")), True)

# ----- host receives --------------------------------------------------------------

H = "host"
vec("host_frame_limit_applies_before_it_is_announced", "4", H,
    "A receiver enforces its own limit from the first byte, before announcing it: a 4 097-byte "
    "frame to a host with max_frame_len 4 096 is fatal even before Hello.",
    [recv(frame("FileEvent", 7, file_event(path=b"/" + b"a" * (4097 - 24 - 56 - 1))),
          "FrameTooLarge", fatal(0, "LimitExceeded"), decode_limit=4096)], True,
    host_limits={"max_frame_len": 4096})
vec("host_frame_above_announced_limit_is_fatal", "10", H,
    "A frame above the limit the host announced in HelloAck is fatal (LimitExceeded).",
    [recv(frame("Hello", 1, hello()), "Hello", [out("HelloAck", 1, version=1)]),
     recv(frame("FileEvent", 7, file_event(path=b"/" + b"a" * (4097 - 24 - 56 - 1))),
          "FrameTooLarge", fatal(0, "LimitExceeded"), decode_limit=4096)], True,
    host_limits={"max_frame_len": 4096})
vec("host_unknown_enum_value_is_fatal", "2", H,
    "An enumeration value not listed (FileEvent.kind 9) is a fatal Malformed error.",
    host_connected(recv(frame("FileEvent", 7, file_event(kind=9)), "Malformed",
                        fatal(7, "MalformedFrame"))), True)
vec("host_invalid_utf8_is_fatal", "2", H,
    "Invalid UTF-8 text (Hello.guest_name) is a fatal Malformed error.",
    [recv(frame("Hello", 1, hello(name=b"\xff\xfe")), "Malformed", fatal(1, "MalformedFrame"))],
    True)
vec("host_payload_length_mismatch_is_fatal", "2", H,
    "A payload longer than its fixed part plus declared variable lengths is a fatal Malformed "
    "error.",
    host_connected(recv(frame("FileEvent", 7, file_event() + b"x"), "Malformed",
                        fatal(7, "MalformedFrame"))), True)
vec("host_hello_version_min_0_is_malformed", "5.1", H,
    "Hello.version_min 0 is a fatal Malformed error (not a version negotiation failure).",
    [recv(frame("Hello", 1, hello(vmin=0, vmax=1)), "Malformed", fatal(1, "MalformedFrame"))],
    True)
vec("host_hello_version_max_below_min_is_malformed", "5.1", H,
    "Hello.version_max < version_min is a fatal Malformed error.",
    [recv(frame("Hello", 1, hello(vmin=3, vmax=2)), "Malformed", fatal(1, "MalformedFrame"))],
    True)
vec("host_hello_is_acked", "6", H,
    "The host answers Hello with HelloAck carrying the Hello's request id and the highest "
    "common version.",
    [recv(frame("Hello", 77, hello(vmin=1, vmax=3)), "Hello", [out("HelloAck", 77, version=2)])],
    False)
vec("host_no_common_version", "6", H,
    "No common version: Error(VersionUnsupported) with the Hello's request id, "
    "Goodbye(VersionUnsupported), close.",
    [recv(frame("Hello", 3, hello(vmin=3, vmax=5)), "Hello",
          [err(3, "VersionUnsupported"), bye("VersionUnsupported")])], True)
vec("host_hello_with_request_id_0_is_fatal", "7", H,
    "A Hello with request id 0 is a fatal Error(UnexpectedMessage) with request id 0.",
    [recv(frame("Hello", 0, hello()), "Hello", fatal(0, "UnexpectedMessage"))], True)
vec("host_second_hello_is_fatal", "6", H,
    "A second Hello is a fatal UnexpectedMessage echoing its request id.",
    host_connected(recv(frame("Hello", 2, hello()), "Hello", fatal(2, "UnexpectedMessage"))), True)
vec("host_hello_ack_from_guest_is_fatal", "6", H,
    "A HelloAck sent to the host is a fatal UnexpectedMessage echoing its request id.",
    host_connected(recv(frame("HelloAck", 1, hello_ack()), "HelloAck",
                        fatal(1, "UnexpectedMessage"))), True)
vec("host_file_event_before_hello_is_fatal_without_verdict", "6", H,
    "A FileEvent before Hello is a fatal UnexpectedMessage echoing its id; it is not accepted, "
    "so it gets no Verdict.",
    [recv(frame("FileEvent", 7, file_event()), "FileEvent", fatal(7, "UnexpectedMessage"))], True)
vec("host_ping_before_hello_is_fatal", "6", H,
    "Before HelloAck the host accepts only Hello, Error and Goodbye: a Ping is fatal.",
    [recv(frame("Ping", 5, heartbeat(1, 2)), "Ping", fatal(5, "UnexpectedMessage"))], True)
vec("host_error_before_hello_is_ignored", "6", H,
    "An Error before HelloAck is ignored; the handshake goes on.",
    [recv(frame("Error", 0, error("Internal")), "Error"), HELLO_STEP], False)
vec("host_unknown_type_before_hello_is_skipped", "6", H,
    "Recoverable decoding errors stay recoverable before HelloAck: the frame is skipped with "
    "Error(UnknownMessageType) and the handshake goes on.",
    [recv(frame(0x7777, 4, b""), "UnknownMessageType", [err(4, "UnknownMessageType")]), HELLO_STEP],
    False)
vec("host_hello_of_unsupported_header_version_is_skipped", "6", H,
    "A Hello whose header version is not 1 is skipped with Error(VersionUnsupported) and its "
    "request id; the guest may send a version-1 Hello.",
    [recv(frame("Hello", 1, hello(), version=2), "UnsupportedVersion",
          [err(1, "VersionUnsupported")]), HELLO_STEP], False)
vec("host_goodbye_before_hello_closes", "5.9", H,
    "A Goodbye closes in every state; nothing is sent after it.",
    [recv(frame("Goodbye", 0, goodbye("Shutdown")), "Goodbye")], True)
vec("host_handshake_timeout", "8", H,
    "No Hello within HANDSHAKE_TIMEOUT_MS: Goodbye(Timeout), close.",
    [app("advance_ms", [bye("Timeout")], ms=5000)], True)
vec("host_verdict_from_guest_is_fatal", "6", H,
    "A message in the wrong direction (Verdict to the host) is a fatal UnexpectedMessage echoing "
    "its request id.",
    host_connected(recv(frame("Verdict", 7, verdict("Allow", 5)), "Verdict",
                        fatal(7, "UnexpectedMessage"))), True)
vec("host_read_request_from_guest_is_fatal", "6", H,
    "A ReadRequest to the host is a fatal UnexpectedMessage echoing its request id.",
    host_connected(recv(frame("ReadRequest", 3, read_request(7, 0, 10)), "ReadRequest",
                        fatal(3, "UnexpectedMessage"))), True)
vec("host_file_event_with_request_id_0_is_fatal", "7", H,
    "A FileEvent with request id 0 is fatal (Error with request id 0) and gets no Verdict.",
    host_connected(recv(frame("FileEvent", 0, file_event()), "FileEvent",
                        fatal(0, "UnexpectedMessage"))), True)
vec("host_file_event_id_reused_while_outstanding_is_fatal", "7", H,
    "A FileEvent reusing an outstanding event id is fatal; the outstanding event still gets its "
    "policy Verdict, the duplicate gets none.",
    host_connected(fe(7), recv(frame("FileEvent", 7, file_event()), "FileEvent",
                               [v(7), *fatal(7, "UnexpectedMessage")])), True)
vec("host_event_id_may_be_reused_after_its_verdict", "7", H,
    "Ids are unique among outstanding requests only: an event id may be reused after its "
    "Verdict.",
    host_connected(fe(7), app("verdict", [v(7, "Deny", 300)], id=7, decision="Deny", ttl=300),
                   fe(7), app("verdict", [v(7, "Allow", 60)], id=7, decision="Allow", ttl=60)),
    False)
vec("host_read_data_for_unknown_read_id_is_ignored", "7", H,
    "A ReadData whose read id matches no outstanding ReadRequest is ignored.",
    host_connected(recv(frame("ReadData", 42, read_data(7, 0, "EndOfFile", b"ab")), "ReadData"),
                   ping(6)), False)
vec("host_read_data_after_verdict_is_ignored", "7", H,
    "ReadData arriving after its event's Verdict is ignored.",
    host_connected(fe(7), fetch(7, 1, 0, 10),
                   app("verdict", [v(7, "Allow", 60)], id=7, decision="Allow", ttl=60),
                   recv(frame("ReadData", 1, read_data(7, 0, "EndOfFile", b"0123456789")),
                        "ReadData"), ping(6)), False)
vec("host_read_data_with_wrong_event_id_is_fatal", "7", H,
    "A ReadData echoing another event_id than its ReadRequest is fatal: open queries get their "
    "policy Verdict, then Error(UnexpectedMessage) with the read id, Goodbye(ProtocolError).",
    host_connected(fe(7), fetch(7, 1, 0, 10),
                   recv(frame("ReadData", 1, read_data(8, 0, "EndOfFile", b"0123456789")),
                        "ReadData", [v(7), *fatal(1, "UnexpectedMessage")])), True)
vec("host_read_data_with_wrong_offset_is_fatal", "7", H,
    "A ReadData echoing another offset than its ReadRequest is fatal (UnexpectedMessage).",
    host_connected(fe(7), fetch(7, 1, 0, 10),
                   recv(frame("ReadData", 1, read_data(7, 5, "EndOfFile", b"01234")),
                        "ReadData", [v(7), *fatal(1, "UnexpectedMessage")])), True)
vec("host_read_data_longer_than_requested_is_fatal", "5.6", H,
    "ReadData with data_len above the requested length is fatal (UnexpectedMessage).",
    host_connected(fe(7, size=4), fetch(7, 1, 0, 4),
                   recv(frame("ReadData", 1, read_data(7, 0, "EndOfFile", b"01234")),
                        "ReadData", [v(7), *fatal(1, "UnexpectedMessage")])), True)
vec("host_read_data_data_with_no_bytes_is_malformed", "5.6", H,
    "ReadData with status Data and data_len 0 is a fatal Malformed error.",
    host_connected(fe(7), fetch(7, 1, 0, 10),
                   recv(frame("ReadData", 1, read_data(7, 0, "Data")), "Malformed",
                        [v(7), *fatal(1, "MalformedFrame")])), True)
vec("host_end_of_file_with_no_bytes_is_normal", "5.6", H,
    "A read at the end of the file is answered EndOfFile with data_len 0; not an error.",
    host_connected(fe(7, size=4), fetch(7, 1, 0, 4),
                   recv(frame("ReadData", 1, read_data(7, 0, "Data", b"abcd")), "ReadData",
                        [out("ReadRequest", 2, event_id=7, offset=4, length=65480)]),
                   recv(frame("ReadData", 2, read_data(7, 4, "EndOfFile")), "ReadData"),
                   app("verdict", [v(7, "Allow", 60)], id=7, decision="Allow", ttl=60)), False)
vec("host_no_reads_without_read_content", "7", H,
    "The host sends no ReadRequest to a guest without READ_CONTENT; it answers with its "
    "error-policy Verdict, cache_ttl_secs 0.",
    [recv(frame("Hello", 1, hello(caps=0)), "Hello", [out("HelloAck", 1, version=1)]),
     fe(7), app("fetch", [v(7, "Deny")], id=7)], False,
    host_policy={"error": "Deny"})
vec("host_excess_event_gets_policy_verdict", "9", H,
    "A FileEvent above max_events_in_flight is answered at once with the error-policy Verdict "
    "(cache_ttl_secs 0); the session goes on.",
    host_connected(fe(1), fe(2), fe(3, expect=[v(3, "Deny")])), False,
    host_limits={"max_events_in_flight": 2}, host_policy={"error": "Deny"})
vec("host_excess_run_longer_than_limit_is_fatal", "9", H,
    "A run of more than max_events_in_flight consecutive excess events is fatal; the event that "
    "makes it fatal still gets its Verdict, then every open query, then "
    "Error(LimitExceeded) echoing its id and Goodbye(ProtocolError).",
    host_connected(fe(1), fe(2), fe(3, expect=[v(3)]), fe(4, expect=[v(4)]),
                   fe(5, expect=[v(5), v(1), v(2), *fatal(5, "LimitExceeded")])), True,
    host_limits={"max_events_in_flight": 2})
vec("host_excess_run_is_reset_by_an_accepted_event", "9", H,
    "The excess run is reset only by a FileEvent the host accepts within the limit.",
    host_connected(fe(1), fe(2), fe(3, expect=[v(3)]), fe(4, expect=[v(4)]),
                   app("verdict", [v(1, "Allow", 60)], id=1, decision="Allow", ttl=60),
                   fe(5), fe(6, expect=[v(6)]), fe(7, expect=[v(7)])), False,
    host_limits={"max_events_in_flight": 2})
vec("host_excess_run_is_not_reset_by_other_frames", "9", H,
    "Frames other than an accepted FileEvent neither reset nor extend the excess run.",
    host_connected(fe(1), fe(2), fe(3, expect=[v(3)]), ping(9), fe(4, expect=[v(4)]),
                   fe(5, expect=[v(5), v(1), v(2), *fatal(5, "LimitExceeded")])), True,
    host_limits={"max_events_in_flight": 2})
vec("host_scan_budget_policy_verdict_has_ttl_0", "8", H,
    "When query_timeout_ms expires the host sends its timeout-policy Verdict with "
    "cache_ttl_secs 0, whatever the decision.",
    host_connected(fe(7), app("advance_ms", [v(7, "Deny")], ms=1500)), False,
    host_policy={"timeout": "Deny"})
vec("host_too_large_policy_verdict_has_ttl_0", "5.4", H,
    "Every policy Verdict (here: file too large) has cache_ttl_secs 0 and no threat name.",
    host_connected(fe(7, size=100), app("fetch", [v(7, "Deny")], id=7)), False,
    host_limits={"max_file_size": 50}, host_policy={"too_large": "Deny"})
vec("host_shutdown_answers_open_queries_first", "9", H,
    "Before any Goodbye (here an orderly Shutdown) the host answers every open query with its "
    "error-policy Verdict.",
    host_connected(fe(7), fe(8), app("close", [v(7), v(8), bye("Shutdown")], reason="Shutdown")),
    True)
vec("host_idle_timeout_answers_open_queries_first", "8", H,
    "Idle timeout: every open query gets its policy Verdict, then Goodbye(Timeout).",
    host_connected(fe(7), app("advance_ms", [v(7), bye("Timeout")], ms=30000)), True)
vec("host_peer_goodbye_sends_nothing", "5.9", H,
    "After receiving Goodbye the host sends nothing, not even Verdicts for open queries.",
    host_connected(fe(7), recv(frame("Goodbye", 0, goodbye("Shutdown")), "Goodbye")), True)
vec("host_sends_ping_after_send_silence", "8", H,
    "After heartbeat_interval_ms without sending, the host sends a Ping (nonzero request id).",
    host_connected(app("advance_ms", [out("Ping", None)], ms=10000)), False)
vec("host_pong_matching_its_ping_completes_it", "5.7", H,
    "A Pong echoing the outstanding Ping's request id and nonce completes it: the next Ping "
    "follows one heartbeat interval later.",
    host_connected(app("advance_ms", [out("Ping", 1, nonce=1, timestamp=10000)], ms=10000),
                   recv(frame("Pong", 1, heartbeat(1, 10000)), "Pong"),
                   app("advance_ms", [out("Ping", 2, nonce=2, timestamp=20000)], ms=10000)),
    False)
vec("host_pong_with_another_nonce_is_ignored", "5.7", H,
    "A Pong whose nonce differs from the outstanding Ping's matches nothing and is ignored: "
    "the Ping stays outstanding, so no new Ping is sent.",
    host_connected(app("advance_ms", [out("Ping", 1, nonce=1, timestamp=10000)], ms=10000),
                   recv(frame("Pong", 1, heartbeat(9, 10000)), "Pong"),
                   app("advance_ms", [], ms=10000)), False)
vec("host_pong_with_another_request_id_is_ignored", "5.7", H,
    "A Pong whose request id differs from the outstanding Ping's is ignored, even with the "
    "right nonce.",
    host_connected(app("advance_ms", [out("Ping", 1, nonce=1, timestamp=10000)], ms=10000),
                   recv(frame("Pong", 9, heartbeat(1, 10000)), "Pong"),
                   app("advance_ms", [], ms=10000)), False)
vec("host_unknown_capability_bits_are_ignored", "5.1", H,
    "Capability bits the receiver does not know are ignored, not rejected.",
    [recv(frame("Hello", 1, hello(caps=READ_CONTENT | (1 << 40))), "Hello",
          [out("HelloAck", 1, version=1)])], False)
vec("host_empty_path_is_malformed", "5.3", H,
    "A FileEvent with path_len 0 is a fatal Malformed error.",
    host_connected(recv(frame("FileEvent", 7, file_event(path=b"")), "Malformed",
                        fatal(7, "MalformedFrame"))), True)
vec("host_read_error_without_error_space_is_malformed", "5.6", H,
    "ReadData with status Error and error_space 0 is a fatal Malformed error.",
    host_connected(recv(frame("ReadData", 1, read_data(7, 0, "Error", code=5)), "Malformed",
                        fatal(1, "MalformedFrame"))), True)
vec("host_odd_utf16_path_is_malformed", "5.3", H,
    "A UTF-16LE path with an odd path_len is a fatal Malformed error.",
    host_connected(recv(frame("FileEvent", 7, file_event(path=b"a\0b", encoding=2)), "Malformed",
                        fatal(7, "MalformedFrame"))), True)

# ----- guest receives --------------------------------------------------------------

G = "guest"
vec("guest_events_wait_for_hello_ack", "6", G,
    "Before HelloAck the guest sends nothing but Hello (and Error, Goodbye): a query waits and "
    "is sent once HelloAck arrives.",
    [app("submit", []), recv(frame("HelloAck", 1, hello_ack()), "HelloAck", [out("FileEvent", 2)])],
    False)
vec("guest_hello_ack_with_wrong_request_id_is_fatal", "6", G,
    "A HelloAck whose request id is not the Hello's is a fatal UnexpectedMessage echoing it.",
    [recv(frame("HelloAck", 9, hello_ack()), "HelloAck", fatal(9, "UnexpectedMessage"))], True)
vec("guest_hello_ack_with_version_not_offered_is_fatal", "6", G,
    "A HelloAck choosing a version outside the Hello's range is a fatal "
    "Error(VersionUnsupported) echoing its request id.",
    [recv(frame("HelloAck", 1, hello_ack(version=3)), "HelloAck",
          fatal(1, "VersionUnsupported"))], True)
vec("guest_idle_timeout_not_above_heartbeat_is_malformed", "5.2", G,
    "A HelloAck whose nonzero idle_timeout_ms is not above a nonzero heartbeat_interval_ms is a "
    "fatal Malformed error.",
    [recv(frame("HelloAck", 1, hello_ack(hb=10000, idle=10000)), "Malformed",
          fatal(1, "MalformedFrame"))], True)
vec("guest_second_hello_ack_is_fatal", "6", G,
    "A HelloAck after the first is a fatal UnexpectedMessage.",
    guest_connected(recv(frame("HelloAck", 1, hello_ack()), "HelloAck",
                         fatal(1, "UnexpectedMessage"))), True)
vec("guest_verdict_before_hello_ack_is_fatal", "6", G,
    "Before HelloAck the guest accepts only HelloAck, Error and Goodbye: a Verdict is fatal.",
    [recv(frame("Verdict", 2, verdict("Allow", 5)), "Verdict", fatal(2, "UnexpectedMessage"))],
    True)
vec("guest_error_before_hello_ack_is_ignored", "6", G,
    "An Error before HelloAck is ignored; the handshake goes on.",
    [recv(frame("Error", 1, error("Internal")), "Error"), app("submit", []),
     recv(frame("HelloAck", 1, hello_ack()), "HelloAck", [out("FileEvent", 2)])], False)
vec("guest_unknown_type_before_hello_ack_is_skipped", "6", G,
    "Recoverable decoding errors stay recoverable before HelloAck.",
    [recv(frame(0x7777, 4, b""), "UnknownMessageType", [err(4, "UnknownMessageType")]),
     ACK_STEP, ping(5)], False)
vec("guest_goodbye_before_hello_ack_closes", "5.9", G,
    "A Goodbye closes in every state; nothing is sent after it.",
    [recv(frame("Goodbye", 0, goodbye("VersionUnsupported")), "Goodbye")], True)
vec("guest_hello_from_host_is_fatal", "6", G,
    "A guest-to-host message (Hello) sent to the guest is a fatal UnexpectedMessage.",
    guest_connected(recv(frame("Hello", 3, hello()), "Hello", fatal(3, "UnexpectedMessage"))), True)
vec("guest_verdict_is_matched", "7", G,
    "A Verdict answers the outstanding FileEvent with its request id; nothing is sent back.",
    guest_connected(submit(2), recv(frame("Verdict", 2, verdict("Deny", 300, b"EICAR")),
                                    "Verdict")), False)
vec("guest_verdict_for_unknown_id_is_ignored", "7", G,
    "A Verdict matching no outstanding FileEvent is ignored.",
    guest_connected(recv(frame("Verdict", 99, verdict("Allow", 5)), "Verdict"), ping(5)), False)
vec("guest_verdict_with_request_id_0_is_ignored", "7", G,
    "A Verdict with request id 0 matches nothing and is ignored.",
    guest_connected(recv(frame("Verdict", 0, verdict("Allow", 5)), "Verdict"), ping(5)), False)
vec("guest_allow_no_cache_with_ttl_is_malformed", "5.4", G,
    "AllowNoCache with a nonzero cache_ttl_secs is a fatal Malformed error.",
    guest_connected(recv(frame("Verdict", 2, verdict("AllowNoCache", 5)), "Malformed",
                         fatal(2, "MalformedFrame"))), True)
vec("guest_late_verdict_is_ignored", "8", G,
    "After the guest's own deadline the query is decided locally; a later Verdict is ignored "
    "and a later ReadRequest for it is answered Cancelled.",
    guest_connected(submit(2), app("advance_ms", [], ms=2000),
                    recv(frame("Verdict", 2, verdict("Deny", 5)), "Verdict"),
                    recv(frame("ReadRequest", 3, read_request(2, 0, 10)), "ReadRequest",
                         [out("ReadData", 3, event_id=2, offset=0, status="Cancelled")])), False)
vec("guest_read_request_with_request_id_0_is_fatal", "7", G,
    "A ReadRequest with request id 0 is a fatal Error(UnexpectedMessage) with request id 0.",
    guest_connected(submit(2), recv(frame("ReadRequest", 0, read_request(2, 0, 10)),
                                    "ReadRequest", fatal(0, "UnexpectedMessage"))), True)
vec("guest_read_request_for_unknown_event_is_cancelled", "7", G,
    "A ReadRequest for an event not outstanding on the guest is answered ReadData(Cancelled) "
    "echoing event_id and offset.",
    guest_connected(recv(frame("ReadRequest", 3, read_request(77, 8, 10)), "ReadRequest",
                         [out("ReadData", 3, event_id=77, offset=8, status="Cancelled")])), False)
vec("guest_read_request_above_read_chunk_is_fatal", "5.5", G,
    "A ReadRequest.length above the negotiated max_read_chunk is a fatal LimitExceeded echoing "
    "the read id.",
    [recv(frame("HelloAck", 1, hello_ack(chunk=4096)), "HelloAck"), submit(2),
     recv(frame("ReadRequest", 3, read_request(2, 0, 4097)), "ReadRequest",
          fatal(3, "LimitExceeded"))], True)
vec("guest_read_request_without_read_content_is_fatal", "7", G,
    "A ReadRequest to a guest that did not announce READ_CONTENT is a fatal UnexpectedMessage.",
    guest_connected(submit(2), recv(frame("ReadRequest", 3, read_request(2, 0, 10)),
                                    "ReadRequest", fatal(3, "UnexpectedMessage"))), True,
    guest_read_content=False)
vec("guest_read_id_reused_while_outstanding_is_fatal", "7", G,
    "A ReadRequest reusing an outstanding read id is a fatal UnexpectedMessage.",
    guest_connected(submit(2), recv(frame("ReadRequest", 3, read_request(2, 0, 10)),
                                    "ReadRequest"),
                    recv(frame("ReadRequest", 3, read_request(2, 10, 10)), "ReadRequest",
                         fatal(3, "UnexpectedMessage"))), True)
vec("guest_reads_above_max_reads_in_flight_are_fatal", "10", G,
    "More outstanding ReadRequests than the guest's max_reads_in_flight (4) is a fatal "
    "LimitExceeded echoing the read id.",
    guest_connected(submit(2), *[recv(frame("ReadRequest", r, read_request(2, r * 10, 10)),
                                      "ReadRequest") for r in (3, 4, 5, 6)],
                    recv(frame("ReadRequest", 7, read_request(2, 70, 10)), "ReadRequest",
                         fatal(7, "LimitExceeded"))), True)
vec("guest_read_at_end_of_file_is_end_of_file_with_no_bytes", "5.6", G,
    "A ReadRequest at or past the end of the file is answered EndOfFile with data_len 0, echoing "
    "event_id and offset.",
    guest_connected(submit(2), recv(frame("ReadRequest", 3, read_request(2, 100, 10)),
                                    "ReadRequest"),
                    app("read_completed", [out("ReadData", 3, event_id=2, offset=100,
                                               status="EndOfFile", data_len=0)],
                        read_id=3, status="EndOfFile", data="")), False)
vec("guest_pong_matching_its_ping_completes_it", "5.7", G,
    "A Pong echoing the outstanding Ping's request id and nonce completes it: the next Ping "
    "follows one heartbeat interval later.",
    guest_connected(app("advance_ms", [out("Ping", 2, nonce=2, timestamp=10000)], ms=10000),
                    recv(frame("Pong", 2, heartbeat(2, 10000)), "Pong"),
                    app("advance_ms", [out("Ping", 3, nonce=3, timestamp=20000)], ms=10000)),
    False)
vec("guest_pong_with_another_nonce_is_ignored", "5.7", G,
    "A Pong whose nonce differs from the outstanding Ping's is ignored: without a matching "
    "Pong within two heartbeat intervals the guest closes with Goodbye(Timeout).",
    guest_connected(app("advance_ms", [out("Ping", 2, nonce=2, timestamp=10000)], ms=10000),
                    recv(frame("Pong", 2, heartbeat(9, 10000)), "Pong"),
                    app("advance_ms", [], ms=10000),
                    app("advance_ms", [bye("Timeout")], ms=10000)), True)
vec("guest_pong_with_another_request_id_is_ignored", "5.7", G,
    "A Pong whose request id differs from the outstanding Ping's is ignored, even with the "
    "right nonce.",
    guest_connected(app("advance_ms", [out("Ping", 2, nonce=2, timestamp=10000)], ms=10000),
                    recv(frame("Pong", 9, heartbeat(2, 10000)), "Pong"),
                    app("advance_ms", [], ms=10000),
                    app("advance_ms", [bye("Timeout")], ms=10000)), True)
vec("guest_read_request_of_length_0_is_malformed", "5.5", G,
    "A ReadRequest with length 0 is a fatal Malformed error.",
    guest_connected(submit(2), recv(frame("ReadRequest", 3, read_request(2, 0, 0)), "Malformed",
                                    fatal(3, "MalformedFrame"))), True)
vec("guest_close_says_goodbye", "5.9", G,
    "An orderly stop sends Goodbye(Shutdown) with request id 0 and closes.",
    guest_connected(submit(2), app("close", [bye("Shutdown")], reason="Shutdown")), True)

# ----- guest, version 2 (docs/protocol.md §5.3.1, §6.6) ---------------------------


def guest_v2_vectors():
    """The guest's side of version 2: it offers versions 1..2, takes the one the
    HelloAck chooses, puts it on every later frame (the guest runner checks
    every frame's header against the session version), skips frames of any
    other version but the frozen types, and sends inline content only as
    §5.3.1 allows. Submits with `content` pass the file's first bytes; the
    expected FileEvent names `content_len` and `whole_file`."""
    INLINE = 65447

    def ack2(inline=INLINE, max_frame=65536, events=64, chunk=65480, version=2):
        return hello_ack(version=version, max_frame=max_frame, events=events,
                         chunk=chunk)[:-4] + struct.pack("<I", inline)

    def ack2_step(inline=INLINE, expect=(), **kw):
        return recv(frame("HelloAck", 1, ack2(inline, **kw)), "HelloAck", expect)

    def v2(*steps, inline=INLINE):
        return [ack2_step(inline), *steps]

    def f2(t, rid, payload):
        return frame(t, rid, payload, version=2)

    def sub(rid, data, whole, size, content_len, sent_whole):
        return app("submit", [out("FileEvent", rid, content_len=content_len,
                                  whole_file=sent_whole)],
                   content=data.hex(), whole_file=whole, size=size)

    def ping2(rid, nonce=0xFEED, ts=123):
        return recv(f2("Ping", rid, heartbeat(nonce, ts)), "Ping",
                    [out("Pong", rid, nonce=nonce, timestamp=ts)])

    vec("guest_hello_ack_choosing_version_2_is_accepted", "6", G,
        "The guest offers versions 1..2; a HelloAck choosing 2 is accepted and every later frame "
        "in both directions carries version 2.",
        v2(app("submit", [out("FileEvent", 2, content_len=0, whole_file=False)]), ping2(5),
           recv(f2("Verdict", 2, verdict("Allow", 5)), "Verdict")), False)
    vec("guest_v2_frame_of_version_1_is_skipped", "6", G,
        "In a version-2 session a frame of version 1 (not Hello, HelloAck, Error, Goodbye) is "
        "skipped with Error(VersionUnsupported) echoing its request id; the session goes on.",
        v2(recv(frame("Ping", 5, heartbeat(1, 2)), "UnsupportedVersion",
                [err(5, "VersionUnsupported")]), ping2(6)), False,
        guest_inline_content=True)
    vec("guest_v2_verdict_of_version_1_does_not_answer", "6", G,
        "A Verdict of version 1 in a version-2 session is skipped: it answers nothing, the "
        "version-2 Verdict does.",
        v2(sub(2, b"abc", True, 3, 3, True),
           recv(frame("Verdict", 2, verdict("Deny", 5)), "UnsupportedVersion",
                [err(2, "VersionUnsupported")]),
           recv(f2("Verdict", 2, verdict("Allow", 5)), "Verdict"),
           recv(f2("Verdict", 2, verdict("Deny", 5)), "Verdict")), False,
        guest_inline_content=True)
    vec("guest_v2_error_of_version_1_is_ignored", "6", G,
        "Error is frozen: in a version-2 session an Error with header version 1 is accepted, "
        "logged and not answered.",
        v2(recv(frame("Error", 3, error("Internal")), "Error"), ping2(6)), False)
    vec("guest_v2_goodbye_of_version_1_closes", "6", G,
        "Goodbye is frozen: in a version-2 session a Goodbye with header version 1 closes it.",
        v2(recv(frame("Goodbye", 0, goodbye("Shutdown")), "Goodbye")), True)
    vec("guest_v2_error_frame_of_version_1_with_flags_gets_goodbye_only", "9", G,
        "A frozen Error of version 1 with nonzero flags in a version-2 session is fatal: "
        "Goodbye(ProtocolError) alone.",
        v2(recv(frame("Error", 3, error("Internal"), flags=1), "ReservedFlags", [bye()])), True)
    vec("guest_hello_ack_max_inline_len_with_version_1_is_malformed", "5.2", G,
        "HelloAck.max_inline_len is reserved when the chosen version is 1: nonzero is a fatal "
        "Malformed error.",
        [recv(frame("HelloAck", 1, ack2(inline=100, version=1)), "Malformed",
              fatal(1, "MalformedFrame"))], True)
    vec("guest_hello_ack_max_inline_len_above_frame_room_is_malformed", "5.2", G,
        "HelloAck.max_inline_len above max_frame_len - 24 - 64 - 1 is a fatal Malformed error.",
        [recv(frame("HelloAck", 1, ack2(inline=4096 - 88, max_frame=4096, chunk=4040)),
              "Malformed", fatal(1, "MalformedFrame"))], True)
    vec("guest_whole_file_goes_inline", "5.3", G,
        "A guest with INLINE_CONTENT in a version-2 session sends a small file whole with its "
        "FileEvent (WHOLE_FILE, content_len = file_size); the Verdict needs no ReadRequest.",
        v2(sub(2, b"X5O!P%@AP", True, 9, 9, True),
           recv(f2("Verdict", 2, verdict("Deny", 300, b"EICAR")), "Verdict")), False,
        guest_inline_content=True)
    vec("guest_empty_file_goes_inline_as_whole_file", "5.3", G,
        "An empty file is content_len 0 with WHOLE_FILE.",
        v2(sub(2, b"", True, 0, 0, True)), False, guest_inline_content=True)
    vec("guest_content_is_cut_to_max_inline_len", "5.3", G,
        "Content above the host's max_inline_len is cut to it and WHOLE_FILE cleared; the host "
        "reads the rest, answered as in version 1.",
        v2(sub(2, b"0123456789", True, 10, 4, False),
           recv(f2("ReadRequest", 3, read_request(2, 4, 6)), "ReadRequest"),
           app("read_completed", [out("ReadData", 3, event_id=2, offset=4, status="EndOfFile",
                                      data_len=6)],
               read_id=3, status="EndOfFile", data=b"456789".hex()),
           recv(f2("Verdict", 2, verdict("Allow", 5)), "Verdict"), inline=4), False,
        guest_inline_content=True)
    vec("guest_whole_file_needs_the_file_size", "5.3", G,
        "WHOLE_FILE only when content_len equals file_size: content of another length goes out "
        "without it.",
        v2(sub(2, b"abc", True, 10, 3, False)), False, guest_inline_content=True)
    vec("guest_read_request_for_a_whole_file_event_is_answered", "5.3", G,
        "A ReadRequest for an event sent with WHOLE_FILE (a host never sends one) is answered as "
        "any read.",
        v2(sub(2, b"abc", True, 3, 3, True),
           recv(f2("ReadRequest", 3, read_request(2, 0, 3)), "ReadRequest"),
           app("read_completed", [out("ReadData", 3, event_id=2, offset=0, status="EndOfFile",
                                      data_len=3)],
               read_id=3, status="EndOfFile", data=b"abc".hex())), False,
        guest_inline_content=True)
    vec("guest_no_content_without_inline_content_capability", "5.3", G,
        "A guest that did not announce INLINE_CONTENT sends no content, whatever the host's "
        "max_inline_len.",
        v2(sub(2, b"abc", True, 3, 0, False)), False)
    vec("guest_no_content_when_max_inline_len_is_0", "5.3", G,
        "max_inline_len 0: the host takes no inline content, not even an empty whole file.",
        v2(sub(2, b"", True, 0, 0, False), inline=0), False, guest_inline_content=True)
    vec("guest_no_content_in_a_version_1_session", "5.3", G,
        "A HelloAck choosing version 1: version-1 FileEvents, no content.",
        [ACK_STEP, sub(2, b"abc", True, 3, 0, False), ping(5)], False,
        guest_inline_content=True)
    vec("guest_content_submitted_before_hello_ack_is_not_sent", "5.3", G,
        "Before HelloAck the version and max_inline_len are unknown: a query submitted then "
        "waits and goes out without content.",
        [app("submit", [], content=b"abc".hex(), whole_file=True, size=3),
         ack2_step(expect=[out("FileEvent", 2, content_len=0, whole_file=False)])], False,
        guest_inline_content=True)
    vec("guest_content_beyond_events_in_flight_waits_without_content", "5.3", G,
        "A query above max_events_in_flight waits; when it goes out it carries no content.",
        [ack2_step(events=1), sub(2, b"a", True, 1, 1, True),
         app("submit", [], content=b"b".hex(), whole_file=True, size=1),
         recv(f2("Verdict", 2, verdict("Allow", 5)), "Verdict",
              [out("FileEvent", 3, content_len=0, whole_file=False)])], False,
        guest_inline_content=True)


guest_v2_vectors()
# ----- host receives, protocol version 2 (§5.3.1, §6.6) --------------------------
# Kept in one function of its own (its encoders too), beside the guest side's
# version-2 vectors, so that the two merge without touching each other.


def host_v2_vectors():
    inline_content = 1 << 4          # Capabilities::INLINE_CONTENT (§5.1)
    both = READ_CONTENT | inline_content
    max_inline = 65536 - 24 - 64 - 1  # MAX_INLINE_LEN: the default max_inline_len (§5.2)
    whole_flag = 1                    # content_flags bit 0, WHOLE_FILE (§5.3.1)

    def file_event_v2(size, content=b"", whole=False, path=b"/a", flags=None):
        """A version-2 FileEvent payload: the version-1 fixed part, then
        content_len, content_flags, three reserved bytes, path, content."""
        f = (whole_flag if whole else 0) if flags is None else flags
        return struct.pack("<BBHIII", 1, 1, len(path), 1, 1, 1) + struct.pack("<Q", 9) + \
            b"\x01" * 16 + struct.pack("<QQ", size, 5) + \
            struct.pack("<IBBH", len(content), f, 0, 0) + path + content

    def ack2(rid=1, inline=max_inline):
        # HelloAck always carries header version 1 (§6.3).
        return out("HelloAck", rid, version=2, max_inline_len=inline, header_version=1)

    def hello2(caps=both, vmin=1, vmax=2, inline=max_inline):
        return recv(frame("Hello", 1, hello(vmin=vmin, vmax=vmax, caps=caps)), "Hello",
                    [ack2(inline=inline)])

    def v2(rid, decision="AllowNoCache", ttl=0):
        return out("Verdict", rid, decision=decision, ttl=ttl, header_version=2)

    def fatal2(rid, code):
        return [out("Error", rid, code=code, header_version=2),
                out("Goodbye", 0, reason="ProtocolError", header_version=2)]

    def fe2(rid, size, content=b"", whole=False, expect=(), decodes="FileEvent", **kw):
        return recv(frame("FileEvent", rid, file_event_v2(size, content, whole, **kw), version=2),
                    decodes, expect)

    def ping2(rid, version=2, expect=None):
        if expect is None:
            expect = [out("Pong", rid, nonce=7, timestamp=8, header_version=2)]
        return recv(frame("Ping", rid, heartbeat(7, 8), version=version),
                    "Ping" if version == 2 else "UnsupportedVersion", expect)

    text = b"X5O!P%@AP["  # ten bytes of a file

    # §6: negotiation and the session version.
    vec("host_v2_highest_common_version_is_chosen", "6", H,
        "The host picks the highest version both speak: a guest offering 1..2 gets version 2, "
        "in a HelloAck whose header carries version 1 (§6.3); with INLINE_CONTENT it announces "
        "max_inline_len, the largest its frame limit allows (§5.2).",
        [hello2()], False)
    vec("host_v2_guest_offering_2_to_3_gets_2", "6", H,
        "A guest offering versions 2..3 gets version 2 from a host speaking 1..2.",
        [hello2(vmin=2, vmax=3)], False)
    vec("host_v2_guest_offering_only_2_gets_2", "6", H,
        "A guest offering only version 2 gets version 2.",
        [hello2(vmin=2, vmax=2)], False)
    vec("host_v2_no_max_inline_len_without_inline_content", "5.2", H,
        "A host announces a nonzero max_inline_len only to a guest with INLINE_CONTENT: without "
        "it the field is 0 in a version-2 HelloAck.",
        [hello2(caps=READ_CONTENT, inline=0)], False)
    vec("host_v2_max_inline_len_follows_host_limit", "5.2", H,
        "The host announces its configured max_inline_len; 0 turns inline content off.",
        [hello2(inline=0)], False, host_limits={"max_inline_len": 0})
    vec("host_v2_max_inline_len_follows_frame_limit", "5.2", H,
        "The announced max_inline_len is at most max_frame_len - 24 - 64 - 1.",
        [hello2(inline=8192 - 89)], False, host_limits={"max_frame_len": 8192})
    vec("host_v2_frames_after_hello_ack_carry_version_2", "6", H,
        "After HelloAck every frame the host sends carries the chosen version in its header, "
        "and it accepts frames of that version.",
        [hello2(), ping2(5)], False)
    vec("host_v2_frame_of_version_1_is_skipped", "6", H,
        "After version 2 was chosen, a Ping with header version 1 (a version the host speaks but "
        "did not choose) is skipped with Error(VersionUnsupported) echoing its request id, in "
        "header version 2; the session goes on.",
        [hello2(), ping2(5, version=1,
                         expect=[out("Error", 5, code="VersionUnsupported", header_version=2)]),
         ping2(6)], False)
    vec("host_v2_file_event_of_version_1_is_skipped", "6", H,
        "A version-1 FileEvent in a version-2 session is skipped like an unsupported version: no "
        "query, no Verdict.",
        [hello2(), recv(frame("FileEvent", 7, file_event()), "UnsupportedVersion",
                        [out("Error", 7, code="VersionUnsupported", header_version=2)]),
         ping2(6)], False)
    vec("host_v2_error_with_header_version_1_is_accepted", "6", H,
        "Error and Goodbye keep their layout in every version and are accepted with header "
        "version 1 after version 2 was chosen: an Error is logged, not answered.",
        [hello2(), recv(frame("Error", 0, error("Internal")), "Error"), ping2(6)], False)
    vec("host_v2_goodbye_with_header_version_1_closes", "6", H,
        "A Goodbye with header version 1 after version 2 was chosen closes the session; nothing "
        "is sent after it.",
        [hello2(), fe2(7, 10), recv(frame("Goodbye", 0, goodbye("Shutdown")), "Goodbye")], True)
    vec("host_v2_second_hello_is_still_a_hello", "6", H,
        "Hello keeps header version 1 in every state: a second one after a version-2 HelloAck is "
        "a second Hello (fatal, in header version 2), not an unsupported version.",
        [hello2(), recv(frame("Hello", 2, hello(vmin=1, vmax=2, caps=both)), "Hello",
                        fatal2(2, "UnexpectedMessage"))], True)

    # §5.3.1: inline content.
    vec("host_v2_whole_file_inline_needs_no_read_request", "5.3.1", H,
        "For a FileEvent with WHOLE_FILE the host has every byte: fetching its content sends no "
        "ReadRequest, and the Verdict follows (header version 2).",
        [hello2(), fe2(7, len(text), text, whole=True), app("fetch", [], id=7),
         app("verdict", [v2(7, "Deny", 300)], id=7, decision="Deny", ttl=300)], False)
    vec("host_v2_empty_whole_file_needs_no_read_request", "5.3.1", H,
        "An empty file is content_len 0 with WHOLE_FILE: complete, no ReadRequest.",
        [hello2(), fe2(7, 0, whole=True), app("fetch", [], id=7),
         app("verdict", [v2(7, "Allow", 60)], id=7, decision="Allow", ttl=60)], False)
    vec("host_v2_whole_file_needs_no_read_content", "5.3.1", H,
        "A WHOLE_FILE event is scanned from its content alone, also for a guest without "
        "READ_CONTENT: no ReadRequest, no policy verdict.",
        [hello2(caps=inline_content), fe2(7, len(text), text, whole=True), app("fetch", [], id=7),
         app("verdict", [v2(7, "Allow", 60)], id=7, decision="Allow", ttl=60)], False)
    vec("host_v2_partial_content_reads_start_at_content_len", "5.3.1", H,
        "For partial content the host has bytes 0..content_len and reads the rest from "
        "content_len on.",
        [hello2(), fe2(7, 100, text), app("fetch", [out("ReadRequest", 1, event_id=7, offset=10,
                                                        length=90, header_version=2)], id=7),
         recv(frame("ReadData", 1, read_data(7, 10, "EndOfFile", bytes(90)), version=2),
              "ReadData"),
         app("verdict", [v2(7, "Allow", 60)], id=7, decision="Allow", ttl=60)], False)
    vec("host_v2_inline_counts_against_the_scan_limit", "5.3.1", H,
        "Inline content counts as read: a whole file above the host's scan limit gets the "
        "too-large policy Verdict (cache_ttl_secs 0), without any ReadRequest.",
        [hello2(), fe2(7, len(text), text, whole=True), app("fetch", [v2(7, "Deny")], id=7)],
        False, host_limits={"max_file_size": 9}, host_policy={"too_large": "Deny"})
    vec("host_v2_inline_without_inline_content_is_fatal", "5.3.1", H,
        "Content from a guest that did not announce INLINE_CONTENT is a session error: open "
        "queries get their policy Verdict, then Error(UnexpectedMessage) echoing the event id, "
        "Goodbye(ProtocolError); the event gets no Verdict.",
        [hello2(caps=READ_CONTENT, inline=0), fe2(4, 10),
         fe2(5, 100, text, expect=[v2(4), *fatal2(5, "UnexpectedMessage")])], True)
    vec("host_v2_whole_file_flag_without_inline_content_is_fatal", "5.3.1", H,
        "WHOLE_FILE is content even with content_len 0: from a guest without INLINE_CONTENT it is "
        "a fatal Error(UnexpectedMessage) echoing the event id.",
        [hello2(caps=READ_CONTENT, inline=0),
         fe2(5, 0, whole=True, expect=fatal2(5, "UnexpectedMessage"))], True)
    vec("host_v2_inline_above_max_inline_len_is_fatal", "5.3.1", H,
        "Content longer than the announced max_inline_len is a session error: open queries get "
        "their policy Verdict, then Error(LimitExceeded) echoing the event id, "
        "Goodbye(ProtocolError); the event gets no Verdict.",
        [hello2(inline=9), fe2(4, 9, text[:9], whole=True),
         fe2(5, 10, text, whole=True, expect=[v2(4), *fatal2(5, "LimitExceeded")])], True,
        host_limits={"max_inline_len": 9})
    vec("host_v2_whole_file_with_other_size_is_malformed", "5.3.1", H,
        "WHOLE_FILE with content_len other than file_size is a fatal Malformed error.",
        [hello2(), fe2(5, 11, text, whole=True, decodes="Malformed",
                       expect=fatal2(5, "MalformedFrame"))], True)
    vec("host_v2_reserved_content_flags_are_malformed", "5.3.1", H,
        "content_flags bits 1-7 are reserved: a nonzero one is a fatal Malformed error.",
        [hello2(), fe2(5, 100, text, flags=2, decodes="Malformed",
                       expect=fatal2(5, "MalformedFrame"))], True)


host_v2_vectors()
# ----- host actions, protocol version 2 (§14) -------------------------------------
# Both receivers. The encoders below are written from the tables of
# docs/protocol.md §14.2-§14.8 (and §5.3 for the OnDemand event kind), not
# from the Rust codec.


def host_action_vectors():
    T = {"Remediate": 0x40, "ActionResult": 0x41, "ScanTree": 0x42, "ScanProgress": 0x43,
         "ScanDone": 0x44, "ScanCancel": 0x45, "Policy": 0x46, "Restore": 0x47,
         "RestoreData": 0x48, "Health": 0x49}

    def f(t, rid, payload, version=2):
        return frame(T.get(t, t), rid, payload, version=version)

    # §14.2: action u8, path_encoding u8, path_len u16, deadline_ms u32,
    # volume_serial u64, file_id 16 bytes, file_size u64, last_write_time u64, path.
    def remediate(action=1, deadline=1000, path=b"/a", encoding=1):
        return struct.pack("<BBHI", action, encoding, len(path), deadline) + \
            struct.pack("<Q", 9) + b"\x01" * 16 + struct.pack("<QQ", 10, 5) + path

    # §14.3: status u8, error_space u8, reserved u16, error_code u32, value u64,
    # pinned u32, reserved u32.
    action_status = {"Done": 1, "DoneOnClose": 2, "NotFound": 3, "Changed": 4, "Failed": 5,
                     "Unsupported": 6, "Busy": 7, "Rejected": 8}

    def action_result(status="Done", space=0, code=0, value=0, pinned=0, reserved=0):
        st = action_status.get(status, status)
        return struct.pack("<BBHIQII", st, space, reserved, code, value, pinned, 0)

    # §14.4: flags u32, max_in_flight u16, max_depth u16, progress_interval_ms u32,
    # path_encoding u8, reserved u8, path_len u16, max_file_size u64, path.
    def scan_tree(flags=0, in_flight=4, depth=0, progress=1000, path=b"/", max_size=0,
                  reserved=0):
        return struct.pack("<IHHIBBHQ", flags, in_flight, depth, progress, 1, reserved,
                           len(path), max_size) + path

    # §14.5: six u64 counters; ScanDone adds status u8, error_space u8,
    # reserved u16, error_code u32.
    def counters(seen=3, scanned=2, denied=1, skipped=1, errors=0, nbytes=30):
        return struct.pack("<6Q", seen, scanned, denied, skipped, errors, nbytes)

    scan_status = {"Completed": 1, "Cancelled": 2, "NotFound": 3, "Failed": 4, "Busy": 5,
                   "Unsupported": 6}

    def scan_done(status="Completed", space=0, code=0, **kw):
        return counters(**kw) + struct.pack("<BBHI", scan_status.get(status, status), space, 0,
                                            code)

    # §14.6: version u64, fields u32, deadline_ms u32, fail_mode u8,
    # debug_level u8, exclusion_count u16, query_timeout_ms u32,
    # cache_ttl_max_secs u32, reserved u32, max_scan_size u64, then entries
    # (kind u8, encoding u8, len u16, bytes).
    def exclusion(kind, value, encoding=1, length=None):
        n = len(value) if length is None else length
        return struct.pack("<BBH", kind, encoding, n) + value

    def policy(version=1, fields=0, deadline=1000, fail_mode=0, debug_level=0, count=0,
               query_timeout=0, ttl_max=0, max_scan=0, reserved=0, entries=b""):
        return struct.pack("<QIIBBHIIIQ", version, fields, deadline, fail_mode, debug_level,
                           count, query_timeout, ttl_max, reserved, max_scan) + entries

    full_entries = exclusion(1, b"/var/cache/") + exclusion(2, b"iso") + \
        exclusion(3, b"backup.exe")
    full_policy = policy(version=7, fields=0b111111, fail_mode=2, debug_level=4, count=3,
                         query_timeout=2000, ttl_max=300, max_scan=1 << 30,
                         entries=full_entries)

    # §14.7: Restore: size u64, deadline_ms u32, path_encoding u8, reserved u8,
    # path_len u16, path. RestoreData: offset u64, flags u8, reserved 3 bytes,
    # data_len u32, data.
    def restore(size=3, deadline=1000, path=b"/a"):
        return struct.pack("<QIBBH", size, deadline, 1, 0, len(path)) + path

    def restore_data(offset=0, flags=1, data=b"abc", reserved=b"\0\0\0"):
        return struct.pack("<QB", offset, flags) + reserved + struct.pack("<I", len(data)) + data

    # §14.8: policy_version u64, state u32, fail_mode u8, reserved u8,
    # reserved u16, then six u64 counters.
    def health(fail_mode=1, state=0b11, reserved=0, policy_version=0):
        return struct.pack("<QIBBH", policy_version, state, fail_mode, reserved, 0) + \
            struct.pack("<6Q", 1000, 5, 2, 1, 0, 1)

    # §5.3: an OnDemand FileEvent (kind 4) in the version-2 layout: the
    # version-1 fixed part, then content_len, content_flags, three reserved
    # bytes; process_id 0, desired_access 0, create_disposition 1 (FILE_OPEN).
    def on_demand(pid=0, access=0, disposition=1, v2=True):
        fixed = struct.pack("<BBHIII", 4, 1, 2, pid, access, disposition) + \
            struct.pack("<Q", 9) + b"\x01" * 16 + struct.pack("<QQ", 10, 5)
        return fixed + (struct.pack("<IBBH", 0, 0, 0, 0) if v2 else b"") + b"/a"

    # One valid frame of every host-action type (for the version-1 vectors).
    every_type = [("Remediate", remediate()), ("ActionResult", action_result()),
                  ("ScanTree", scan_tree()), ("ScanProgress", counters()),
                  ("ScanDone", scan_done()), ("ScanCancel", b""), ("Policy", full_policy),
                  ("Restore", restore()), ("RestoreData", restore_data()),
                  ("Health", health())]

    # ----- guest receives (a version-2 session, no host-action capability) -----

    def g_ack2():
        # A HelloAck choosing version 2, max_inline_len 0 (the guest did not
        # announce INLINE_CONTENT).
        return recv(frame("HelloAck", 1, hello_ack(version=2)), "HelloAck")

    def g2(*steps):
        return [g_ack2(), *steps]

    def gping2(rid):
        return recv(frame("Ping", rid, heartbeat(1, 2), version=2), "Ping",
                    [out("Pong", rid, nonce=1, timestamp=2, header_version=2)])

    def gfatal(rid, code):
        return [out("Error", rid, code=code, header_version=2),
                out("Goodbye", 0, reason="ProtocolError", header_version=2)]

    def unsupported(rid):
        return out("ActionResult", rid, status="Unsupported", header_version=2)

    def g_recv(t, rid, payload, expect=(), decodes=None):
        return recv(f(t, rid, payload), decodes or t, expect)

    vec("guest_remediate_without_capability_is_answered_unsupported", "14.1", G,
        "A guest without REMEDIATE answers a Remediate with ActionResult(Unsupported) carrying "
        "the request's id; it is not a session error, the session goes on.",
        g2(g_recv("Remediate", 3, remediate(), [unsupported(3)]), gping2(4)), False)
    vec("guest_policy_without_capability_is_answered_unsupported", "14.6", G,
        "A guest without POLICY answers a (well-formed, every field set) Policy with "
        "ActionResult(Unsupported) carrying its id; nothing of it is applied.",
        g2(g_recv("Policy", 3, full_policy, [unsupported(3)]), gping2(4)), False)
    vec("guest_empty_policy_is_answered_unsupported", "14.6", G,
        "A Policy that sets no field (fields 0, payload exactly 40 bytes) is well formed; a guest "
        "without POLICY answers it Unsupported.",
        g2(g_recv("Policy", 3, policy(), [unsupported(3)])), False)
    vec("guest_restore_without_capability_is_answered_unsupported", "14.7", G,
        "A guest without RESTORE answers a Restore with ActionResult(Unsupported) carrying its id; "
        "the RestoreData that follows is ignored.",
        g2(g_recv("Restore", 3, restore(), [unsupported(3)]),
           g_recv("RestoreData", 3, restore_data()), gping2(4)), False)
    vec("guest_scan_tree_without_capability_is_answered_scan_done_unsupported", "14.4", G,
        "A guest without SCAN_TREE answers a ScanTree with exactly one ScanDone(Unsupported) "
        "carrying the scan id, and sends no OnDemand event.",
        g2(g_recv("ScanTree", 3, scan_tree(),
                  [out("ScanDone", 3, status="Unsupported", header_version=2)]), gping2(4)),
        False)
    vec("guest_scan_cancel_for_no_scan_is_ignored", "14.5", G,
        "A ScanCancel naming no running scan (here the id of a scan already answered "
        "Unsupported, then id 0) is ignored: no answer, no error.",
        g2(g_recv("ScanTree", 3, scan_tree(),
                  [out("ScanDone", 3, status="Unsupported", header_version=2)]),
           g_recv("ScanCancel", 3, b""), g_recv("ScanCancel", 0, b""), gping2(4)), False)
    vec("guest_restore_data_for_no_restore_is_ignored", "14.7", G,
        "RestoreData of a Restore never received (and one with request id 0) is ignored.",
        g2(g_recv("RestoreData", 9, restore_data()), g_recv("RestoreData", 0, restore_data()),
           gping2(4)), False)
    vec("guest_host_requests_do_not_disturb_on_access_queries", "14.1", G,
        "A host request the guest cannot take costs it nothing: its outstanding query is still "
        "answered by its Verdict.",
        g2(app("submit", [out("FileEvent", 2, header_version=2)]),
           g_recv("Remediate", 3, remediate(), [unsupported(3)]),
           g_recv("ScanTree", 4, scan_tree(),
                  [out("ScanDone", 4, status="Unsupported", header_version=2)]),
           recv(frame("Verdict", 2, verdict("Deny", 60), version=2), "Verdict")), False)
    vec("guest_host_request_id_may_be_reused_after_its_answer", "14.1", G,
        "Only an id a request still waits on is taken: a Remediate reusing the id of one already "
        "answered is a new request and gets its own ActionResult.",
        g2(g_recv("Remediate", 3, remediate(), [unsupported(3)]),
           g_recv("Policy", 3, full_policy, [unsupported(3)])), False)
    for t, payload in (("Remediate", remediate()), ("ScanTree", scan_tree()),
                       ("Policy", full_policy), ("Restore", restore())):
        vec(f"guest_{t.lower()}_with_request_id_0_is_fatal", "14.1", G,
            f"A host request ({t}) with request id 0 is a fatal Error(UnexpectedMessage) with "
            "request id 0, Goodbye(ProtocolError); it is not answered.",
            g2(g_recv(t, 0, payload, gfatal(0, "UnexpectedMessage"))), True)
    for t, payload, rid in (("ActionResult", action_result(), 3),
                            ("ScanProgress", counters(), 3),
                            ("ScanDone", scan_done(), 3),
                            ("Health", health(), 0)):
        vec(f"guest_{t.lower()}_from_host_is_fatal", "14.1", G,
            f"A guest-to-host message ({t}) sent to the guest is a session error: "
            "Error(UnexpectedMessage) echoing its request id, Goodbye(ProtocolError), close.",
            g2(g_recv(t, rid, payload, gfatal(rid, "UnexpectedMessage"))), True)

    def g_malformed(name, section, rule, t, payload, rid=3):
        vec(name, section, G, rule,
            g2(recv(f(t, rid, payload), "Malformed", gfatal(rid, "MalformedFrame"))), True)

    g_malformed("guest_remediate_deadline_0_is_malformed", "14.2",
                "Remediate.deadline_ms 0 (it must be >= 1) is a fatal Malformed error, even for a "
                "guest that would answer Unsupported.", "Remediate", remediate(deadline=0))
    g_malformed("guest_remediate_unknown_action_is_malformed", "14.2",
                "Remediate.action other than 1 (Delete) or 2 (Truncate) is a fatal Malformed error.",
                "Remediate", remediate(action=3))
    g_malformed("guest_remediate_empty_path_is_malformed", "14.2",
                "Remediate.path_len 0 (it must be >= 1) is a fatal Malformed error.",
                "Remediate", remediate(path=b""))
    g_malformed("guest_scan_tree_max_in_flight_0_is_malformed", "14.4",
                "ScanTree.max_in_flight 0 (it must be >= 1) is a fatal Malformed error.",
                "ScanTree", scan_tree(in_flight=0))
    g_malformed("guest_scan_tree_reserved_flags_are_malformed", "14.4",
                "ScanTree.flags bits 2-31 are reserved: a nonzero one is a fatal Malformed error.",
                "ScanTree", scan_tree(flags=4))
    g_malformed("guest_scan_tree_reserved_byte_is_malformed", "14.4",
                "ScanTree's reserved byte (offset 13) nonzero is a fatal Malformed error.",
                "ScanTree", scan_tree(reserved=1))
    g_malformed("guest_scan_cancel_with_payload_is_malformed", "14.5",
                "ScanCancel has an empty payload: any payload byte is a fatal Malformed error.",
                "ScanCancel", b"\0")
    g_malformed("guest_policy_field_with_its_bit_clear_is_malformed", "14.6",
                "A Policy field whose fields bit is clear must be 0: debug_level 2 with bit 1 clear "
                "is a fatal Malformed error.", "Policy", policy(fields=0b1, fail_mode=1,
                                                               debug_level=2))
    g_malformed("guest_policy_exclusion_count_with_bit_2_clear_is_malformed", "14.6",
                "exclusion_count with fields bit 2 clear must be 0: nonzero is a fatal Malformed "
                "error.", "Policy", policy(count=1, entries=exclusion(2, b"iso")))
    g_malformed("guest_policy_reserved_fields_bit_is_malformed", "14.6",
                "Policy.fields bits 6-31 are reserved: a nonzero one is a fatal Malformed error.",
                "Policy", policy(fields=1 << 6))
    g_malformed("guest_policy_reserved_field_is_malformed", "14.6",
                "Policy's reserved u32 (offset 28) nonzero is a fatal Malformed error.",
                "Policy", policy(reserved=1))
    g_malformed("guest_policy_version_0_is_malformed", "14.6",
                "Policy.version 0 (it must be >= 1) is a fatal Malformed error.",
                "Policy", policy(version=0))
    g_malformed("guest_policy_deadline_0_is_malformed", "14.6",
                "Policy.deadline_ms 0 (it must be >= 1) is a fatal Malformed error.",
                "Policy", policy(deadline=0))
    g_malformed("guest_policy_fail_mode_0_with_its_bit_is_malformed", "14.6",
                "fail_mode set (bit 0) must be 1 or 2: 0 is a fatal Malformed error.",
                "Policy", policy(fields=0b1, fail_mode=0))
    g_malformed("guest_policy_debug_level_above_4_is_malformed", "14.6",
                "debug_level set (bit 1) must be 0..=4: 5 is a fatal Malformed error.",
                "Policy", policy(fields=0b10, debug_level=5))
    g_malformed("guest_policy_query_timeout_0_with_its_bit_is_malformed", "14.6",
                "query_timeout_ms set (bit 3) must be >= 1: 0 is a fatal Malformed error.",
                "Policy", policy(fields=0b1000, query_timeout=0))
    g_malformed("guest_policy_exclusion_overrunning_the_payload_is_malformed", "14.6",
                "An exclusion entry whose len runs past the end of the payload is a fatal "
                "Malformed error.", "Policy",
                policy(fields=0b100, count=1, entries=exclusion(1, b"/tmp", length=9)))
    g_malformed("guest_policy_more_exclusions_than_entries_is_malformed", "14.6",
                "exclusion_count larger than the entries the payload holds is a fatal Malformed "
                "error.", "Policy",
                policy(fields=0b100, count=2, entries=exclusion(1, b"/tmp")))
    g_malformed("guest_policy_bytes_after_the_exclusions_are_malformed", "14.6",
                "The payload must be exactly 40 bytes plus the entries: a byte after the last entry "
                "is a fatal Malformed error.", "Policy",
                policy(fields=0b100, count=1, entries=exclusion(1, b"/tmp") + b"\0"))
    g_malformed("guest_policy_exclusion_unknown_kind_is_malformed", "14.6",
                "An exclusion kind other than 1, 2, 3 is a fatal Malformed error.", "Policy",
                policy(fields=0b100, count=1, entries=exclusion(4, b"x")))
    g_malformed("guest_policy_empty_exclusion_is_malformed", "14.6",
                "An exclusion entry's len must be >= 1: 0 is a fatal Malformed error.", "Policy",
                policy(fields=0b100, count=1, entries=exclusion(1, b"")))
    g_malformed("guest_restore_deadline_0_is_malformed", "14.7",
                "Restore.deadline_ms 0 (it must be >= 1) is a fatal Malformed error.",
                "Restore", restore(deadline=0))
    g_malformed("guest_restore_empty_path_is_malformed", "14.7",
                "Restore.path_len 0 (it must be >= 1) is a fatal Malformed error.",
                "Restore", restore(path=b""))
    g_malformed("guest_restore_data_reserved_flags_are_malformed", "14.7",
                "RestoreData.flags bits 1-7 are reserved: a nonzero one is a fatal Malformed "
                "error, even for data the guest would ignore.", "RestoreData",
                restore_data(flags=2))
    g_malformed("guest_restore_data_reserved_bytes_are_malformed", "14.7",
                "RestoreData's reserved bytes (offsets 9-11) nonzero are a fatal Malformed error.",
                "RestoreData", restore_data(reserved=b"\0\1\0"))
    g_malformed("guest_restore_data_longer_than_4096_bytes_is_malformed", "14.7",
                "RestoreData.data_len above MAX_RESTORE_CHUNK (4096) is a fatal Malformed error, "
                "even for data the guest would ignore.", "RestoreData",
                restore_data(data=b"x" * 4097))
    g_malformed("guest_restore_data_past_2_to_the_64_is_malformed", "14.7",
                "RestoreData with offset + data_len above 2^64 - 1 is a fatal Malformed error.",
                "RestoreData", restore_data(offset=(1 << 64) - 2, data=b"abc"))
    vec("guest_host_actions_in_a_version_1_session_are_unknown_types", "14", G,
        "In a version-1 session every host-action type (0x0040-0x0049) is unknown: skipped with "
        "Error(UnknownMessageType) echoing its request id, never answered or judged (a "
        "malformed payload too: the type check comes first); the session goes on.",
        [ACK_STEP,
         *[recv(f(t, 10 + i, p, version=1), "UnknownMessageType",
                [out("Error", 10 + i, code="UnknownMessageType", header_version=1)])
           for i, (t, p) in enumerate(every_type)],
         recv(f("Remediate", 30, remediate(deadline=0), version=1), "UnknownMessageType",
              [err(30, "UnknownMessageType")]),
         ping(31)], False)

    # ----- host receives (a version-2 session) ---------------------------------

    def hello2():
        # READ_CONTENT only: no INLINE_CONTENT, so max_inline_len 0 (§5.2).
        return recv(frame("Hello", 1, hello(vmin=1, vmax=2)), "Hello",
                    [out("HelloAck", 1, version=2, max_inline_len=0, header_version=1)])

    def h2(*steps):
        return [hello2(), *steps]

    def hping2(rid):
        return recv(frame("Ping", rid, heartbeat(1, 2), version=2), "Ping",
                    [out("Pong", rid, nonce=1, timestamp=2, header_version=2)])

    def hfatal(rid, code):
        return [out("Error", rid, code=code, header_version=2),
                out("Goodbye", 0, reason="ProtocolError", header_version=2)]

    def hv(rid, decision="AllowNoCache", ttl=0):
        return out("Verdict", rid, decision=decision, ttl=ttl, header_version=2)

    def h_recv(t, rid, payload, expect=(), decodes=None):
        return recv(f(t, rid, payload), decodes or t, expect)

    def h_malformed(name, section, rule, t, payload, rid=5):
        vec(name, section, H, rule,
            h2(recv(f(t, rid, payload), "Malformed", hfatal(rid, "MalformedFrame"))), True)

    vec("host_v2_health_is_accepted_silently", "14.8", H,
        "Health is a notification: the host answers nothing and the session goes on.",
        h2(h_recv("Health", 0, health()), hping2(6)), False)
    vec("host_v2_health_with_nonzero_request_id_is_accepted", "14.8", H,
        "A Health's request id is ignored by its receiver: a nonzero one is neither a response "
        "to match nor an error.",
        h2(h_recv("Health", 77, health(fail_mode=2, policy_version=3)), hping2(6)), False)
    vec("host_v2_health_unknown_state_bits_are_ignored", "14.8", H,
        "Health.state bits the receiver does not know are ignored, not rejected.",
        h2(h_recv("Health", 0, health(state=0xFFFFFFFF)), hping2(6)), False)
    h_malformed("host_v2_health_fail_mode_0_is_malformed", "14.8",
                "Health.fail_mode other than 1 or 2 (here 0) is a fatal Malformed error.",
                "Health", health(fail_mode=0), rid=0)
    h_malformed("host_v2_health_fail_mode_3_is_malformed", "14.8",
                "Health.fail_mode 3 is a fatal Malformed error.", "Health", health(fail_mode=3),
                rid=0)
    h_malformed("host_v2_health_reserved_byte_is_malformed", "14.8",
                "Health's reserved byte (offset 13) nonzero is a fatal Malformed error.",
                "Health", health(reserved=1), rid=0)
    h_malformed("host_v2_health_of_other_length_is_malformed", "14.8",
                "Health is exactly 64 bytes: a longer payload is a fatal Malformed error.",
                "Health", health() + b"\0", rid=0)
    vec("host_v2_unmatched_action_result_is_ignored", "14.1", H,
        "An ActionResult matching no outstanding request of the host (never sent) is ignored.",
        h2(h_recv("ActionResult", 5, action_result("Done", value=7)), hping2(6)), False)
    vec("host_v2_action_result_with_request_id_0_is_ignored", "14.1", H,
        "An ActionResult with request id 0 matches nothing and is ignored.",
        h2(h_recv("ActionResult", 0, action_result("Unsupported")), hping2(6)), False)
    vec("host_v2_failed_action_result_with_its_error_is_accepted", "14.3", H,
        "ActionResult(Failed) with error_space 1 (NTSTATUS) and its code is well formed "
        "(unmatched here, so ignored).",
        h2(h_recv("ActionResult", 5, action_result("Failed", space=1, code=0xC0000022)),
           hping2(6)), False)
    vec("host_v2_unmatched_scan_progress_is_ignored", "14.5", H,
        "A ScanProgress for no scan the host started is ignored.",
        h2(h_recv("ScanProgress", 5, counters()), hping2(6)), False)
    vec("host_v2_unmatched_scan_done_is_ignored", "14.5", H,
        "A ScanDone for no scan the host started (also request id 0) is ignored.",
        h2(h_recv("ScanDone", 5, scan_done()),
           h_recv("ScanDone", 0, scan_done("Failed", space=2, code=13)), hping2(6)), False)
    h_malformed("host_v2_action_result_error_space_with_done_is_malformed", "14.3",
                "ActionResult.error_space nonzero with a status other than Failed (here Done) is a "
                "fatal Malformed error.", "ActionResult", action_result("Done", space=2, code=5))
    h_malformed("host_v2_action_result_failed_without_error_space_is_malformed", "14.3",
                "ActionResult(Failed) with error_space 0 is a fatal Malformed error.",
                "ActionResult", action_result("Failed", space=0, code=0))
    h_malformed("host_v2_action_result_error_code_without_error_space_is_malformed", "14.3",
                "ActionResult.error_code nonzero with error_space 0 (status Done) is a fatal "
                "Malformed error.", "ActionResult", action_result("Done", code=5))
    h_malformed("host_v2_action_result_unknown_status_is_malformed", "14.3",
                "An ActionResult.status other than 1-8 is a fatal Malformed error.",
                "ActionResult", action_result(9))
    h_malformed("host_v2_action_result_unknown_error_space_is_malformed", "14.3",
                "ActionResult.error_space 3 (not 0, 1, 2) is a fatal Malformed error.",
                "ActionResult", action_result("Failed", space=3, code=5))
    h_malformed("host_v2_action_result_reserved_field_is_malformed", "14.3",
                "ActionResult's reserved u16 (offset 2) nonzero is a fatal Malformed error.",
                "ActionResult", action_result("Done", reserved=1))
    h_malformed("host_v2_scan_done_more_denied_than_scanned_is_malformed", "14.5",
                "ScanDone with files_denied > files_scanned is a fatal Malformed error.",
                "ScanDone", scan_done(scanned=1, denied=2))
    h_malformed("host_v2_scan_progress_more_denied_than_scanned_is_malformed", "14.5",
                "ScanProgress with files_denied > files_scanned is a fatal Malformed error.",
                "ScanProgress", counters(scanned=0, denied=1))
    h_malformed("host_v2_scan_done_failed_without_error_space_is_malformed", "14.5",
                "ScanDone(Failed) with error_space 0 is a fatal Malformed error.",
                "ScanDone", scan_done("Failed"))
    h_malformed("host_v2_scan_done_error_space_with_completed_is_malformed", "14.5",
                "ScanDone.error_space nonzero with a status other than Failed is a fatal "
                "Malformed error.", "ScanDone", scan_done("Completed", space=1, code=5))
    h_malformed("host_v2_scan_done_unknown_status_is_malformed", "14.5",
                "A ScanDone.status other than 1-6 is a fatal Malformed error.",
                "ScanDone", scan_done(7))
    for t, payload in (("Remediate", remediate()), ("ScanTree", scan_tree()),
                       ("ScanCancel", b""), ("Policy", full_policy), ("Restore", restore()),
                       ("RestoreData", restore_data())):
        vec(f"host_v2_{t.lower()}_from_guest_is_fatal", "14.1", H,
            f"A host-to-guest message ({t}) sent to the host is a session error: its open "
            "queries get their policy Verdict, then Error(UnexpectedMessage) echoing the frame's "
            "request id, Goodbye(ProtocolError), close.",
            h2(recv(frame("FileEvent", 4, file_event_v2_plain(), version=2), "FileEvent"),
               h_recv(t, 3, payload, [hv(4), *hfatal(3, "UnexpectedMessage")])), True)
    vec("host_v2_on_demand_event_gets_a_verdict", "14.4", H,
        "An OnDemand FileEvent (kind 4) is judged like any event: the host may read its content "
        "and answers it with exactly one Verdict.",
        h2(recv(frame("FileEvent", 7, on_demand(), version=2), "FileEvent"),
           app("fetch", [out("ReadRequest", 1, event_id=7, offset=0, length=10,
                             header_version=2)], id=7),
           recv(frame("ReadData", 1, read_data(7, 0, "EndOfFile", b"0123456789"), version=2),
                "ReadData"),
           app("verdict", [hv(7, "Deny", 300)], id=7, decision="Deny", ttl=300)), False)
    vec("host_v2_on_demand_event_has_the_longer_scan_budget", "14.4", H,
        "An OnDemand event's scan budget is at least ON_DEMAND_SCAN_BUDGET_MS (45 000): when "
        "the query_timeout_ms (1 500) of an open sent with it passes, only the open gets its "
        "policy Verdict (cache_ttl_secs 0).",
        h2(recv(frame("FileEvent", 7, on_demand(), version=2), "FileEvent"),
           recv(frame("FileEvent", 6, file_event_v2_plain(), version=2), "FileEvent"),
           app("advance_ms", [hv(6)], ms=1500)), False)
    for field, kw in (("process_id", dict(pid=4242)), ("desired_access", dict(access=1)),
                      ("create_disposition", dict(disposition=3))):
        vec(f"host_v2_on_demand_with_{field}_is_malformed", "5.3", H,
            f"An OnDemand FileEvent must have process_id 0, desired_access 0 and "
            f"create_disposition 1: another {field} is a fatal Malformed error; no Verdict.",
            h2(recv(frame("FileEvent", 7, on_demand(**kw), version=2), "Malformed",
                    hfatal(7, "MalformedFrame"))), True)
    vec("host_on_demand_event_in_version_1_is_malformed", "5.3", H,
        "FileEvent kind 4 (OnDemand) exists in version 2 only: in a version-1 session it is an "
        "unknown enumeration value, a fatal Malformed error.",
        host_connected(recv(frame("FileEvent", 7, on_demand(v2=False)), "Malformed",
                            fatal(7, "MalformedFrame"))), True)
    vec("host_host_actions_in_a_version_1_session_are_unknown_types", "14", H,
        "In a version-1 session every host-action type (0x0040-0x0049) is unknown: skipped with "
        "Error(UnknownMessageType) echoing its request id (a Health too, a malformed payload "
        "too: the type check comes first); the session goes on.",
        host_connected(
            *[recv(f(t, 10 + i, p, version=1), "UnknownMessageType",
                   [out("Error", 10 + i, code="UnknownMessageType", header_version=1)])
              for i, (t, p) in enumerate(every_type)],
            recv(f("Health", 30, health(fail_mode=0), version=1), "UnknownMessageType",
                 [err(30, "UnknownMessageType")]),
            ping(31)), False)


def file_event_v2_plain():
    """A version-2 Open FileEvent without inline content (§5.3.1)."""
    v1 = file_event()
    return v1[:56] + struct.pack("<IBBH", 0, 0, 0, 0) + v1[56:]


host_action_vectors()

# ----- TOML output ----------------------------------------------------------------


def toml_value(x):
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, str):
        return '"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(x, list):
        return "[" + ", ".join(toml_value(i) for i in x) + "]"
    if isinstance(x, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(val)}" for k, val in x.items()) + " }"
    raise TypeError(x)


def main():
    names = [x["name"] for x in V]
    assert len(names) == len(set(names)), "duplicate vector names"
    lines = ["# Generated by generate.py: edit that file, run it, commit both.",
             "# Format and meaning: README.md in this directory; rules: docs/protocol.md.", ""]
    for x in V:
        lines.append("[[vector]]")
        for k, val in x.items():
            if k != "steps":
                lines.append(f"{k} = {toml_value(val)}")
        for s in x["steps"]:
            lines.append("[[vector.step]]")
            for k, val in s.items():
                lines.append(f"{k} = {toml_value(val)}")
        lines.append("")
    Path(__file__).with_name("session.toml").write_text("\n".join(lines))
    print(f"{len(V)} vectors")


main()
