"""Helpers for the peer fuzzers (test_peer_fuzz.py on live raft processes, test_peer_fuzz_core.py
on the pure core) and the frame-cap tests (test_peer_fuzz_caps.py). No tests here.

Run as `python -m tests.component.test_peer_fuzz_support ROLE ADDRESS`, this module is also a
small socket host: one socket made by a zraft.transport factory, alone in a process, so that a
test can send it an oversized frame and measure that process's memory (see `host_main`).

What the fuzzer sends, and what it does not
-------------------------------------------
Every message is one of:
- malformed on the wire (garbage, wrong field types, truncated or extra frames, a non-Raft
  kind): the raft process must count it in `peer_decode_errors`;
- misrouted (for another node, from node 0 or from the receiver itself, or naming a sender
  other than the link it came on): `peer_misrouted`;
- impossible whatever the receiver's state (`impossible`: entries that do not follow the
  index, terms out of order, undecodable or voterless configurations, impossible snapshots,
  numbers with no successor in 64 bits): the core must refuse it, `peer_refused`;
- or well-formed, with adversarial values (far future terms, indexes and commit points beyond
  the log, reject hints anywhere, every type including answers nobody asked for), which the
  core must take without crashing, stalling, or letting two logs differ.

It never sends a *forgery*: a well-formed message of the receiver's term or a later one that a
correct core must act upon and that is indistinguishable from the real leader's or a real
voter's (an AppendEntries whose previous entry may match, a heartbeat or append committing
further than the receiver's commit index, a snapshot above it, a vote grant, an
acknowledgement within the leader's log, an acknowledgement of a live read round or an answer
to a waiting read). Raft's safety assumes honest peers; such a message
can make a node commit entries no majority holds, which no validation can detect, and
authenticating peers is a later issue. `neutralize` turns each would-be forgery into a stale
message (term below the receiver's, dropped by Raft's first rule) or a rejection. So when the
committed prefixes of two nodes differ, the core acted on a message it should have refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zmq
from hypothesis import strategies as st

from zraft.raft.types import NONE, ConfState, Entry, EntryKind, Message, MsgType, SnapshotMeta
from zraft.transport import RpcClient
from zraft.transport.rpc import RpcTimeout
from zraft.wire.codec import RemoteProtocolError, decode, encode
from zraft.wire.messages import EntriesReply, Error, FetchEntries, Propose, Proposed, StatusRequest

U64 = (1 << 64) - 1
EXTREMES = (2**31 - 1, 2**32, 2**53 + 1, 2**62 - 1, 2**62, 2**62 + 1, 2**63 - 1, 2**63, U64 - 1, U64)
"""Values at the edges of the integer types on the way: JSON doubles, signed and unsigned 64
bits, and the core's own bound (zraft.raft.validate.MAX_VALUE = 2**62)."""
MARGIN = 1 << 40
"""An index this far beyond a node's last index stays beyond it for the whole run."""
UNKNOWN_IDS = (4, 7, 99, 2**62)
"""Node ids that are no member of the test clusters (nodes 1, 2, 3)."""
KNOWN_PEER_COUNTERS = frozenset({"peer_received", "peer_sent", "peer_send_dropped", "peer_coalesced",
                                 "peer_unknown_dest", "peer_decode_errors", "peer_misrouted",
                                 "peer_refused", "peer_dropped_disk_full"})


# == what the fuzzer knows of its target ======================================================
@dataclass(frozen=True)
class View:
    """The node being fed, as last seen: its id, the other real nodes, and its term, commit
    index and last index. Terms and commit indexes never go down, so a message that is stale
    or below the commit index by this view still is when it arrives."""

    me: int
    peers: tuple[int, ...]
    term: int
    commit: int
    last_index: int

    @staticmethod
    def of_status(status: dict[str, Any], peers: tuple[int, ...]) -> View:
        me = status["node_id"]
        return View(me, tuple(p for p in peers if p != me), status["term"], status["raft_commit"],
                    status["last_index"])


# == classification ==========================================================================
def _values(msg: Message) -> list[int]:
    out = [msg.term, msg.log_term, msg.index, msg.commit, msg.reject_hint, msg.context]
    for entry in msg.entries:
        out += [entry.term, entry.index]
    if msg.snapshot is not None:
        out += [msg.snapshot.index, msg.snapshot.term, *msg.snapshot.conf.voters, *msg.snapshot.conf.learners]
    return out


def _conf_problem(conf: ConfState) -> str | None:
    members = conf.voters + conf.learners
    if not conf.voters:
        return "a configuration without voters"
    if any(node <= 0 for node in members) or len(set(members)) != len(members):
        return "a configuration with node 0 or a node twice"
    return None


def _conf_entry_problem(entry: Entry) -> str | None:
    try:
        conf = ConfState.decode(entry.data)
    except (ValueError, UnicodeDecodeError):
        return "a configuration entry that does not decode"
    return _conf_problem(conf)


def impossible(msg: Message) -> str | None:
    """What makes `msg` impossible from any correct peer, whatever the receiver's state (this
    suite's own statement of the rules, written apart from zraft.raft.validate so that each
    checks the other), or None. Numbers are checked only against 64 bits, the format's own
    limit: the core may well refuse more (it bounds everything by 2**62)."""
    if any(v >= U64 for v in _values(msg)):
        return "a number with no successor in 64 bits"
    if msg.type in (MsgType.APP, MsgType.VOTE, MsgType.PRE_VOTE) and msg.log_term > msg.term:
        return "a last log term above the message's term"
    if msg.type == MsgType.APP:
        previous = msg.log_term
        for position, entry in enumerate(msg.entries):
            if entry.index != msg.index + 1 + position:
                return "entries that do not follow the index"
            if entry.term > msg.term:
                return "an entry of a term above the leader's"
            if entry.term == 0:
                return "an entry of term 0 (every entry has a term of 1 or more)"
            if entry.term < previous:
                return "entry terms that go down"
            if entry.kind == EntryKind.CONF and _conf_entry_problem(entry) is not None:
                return _conf_entry_problem(entry)
            previous = entry.term
    if msg.type == MsgType.SNAP:
        snap = msg.snapshot
        if snap is None:
            return "a snapshot message without a snapshot"
        if snap.term > msg.term:
            return "a snapshot of a term above the leader's"
        if (snap.index == 0) != (snap.term == 0):
            return "a snapshot whose index and term are not both 0 or both positive"
        if _conf_problem(snap.conf) is not None:
            return _conf_problem(snap.conf)
    return None


def misrouted(msg: Message, me: int, routing_id: bytes) -> bool:
    """What the raft process drops before the core sees it (zraft.transport.peers.receive)."""
    return msg.to != me or msg.frm in (NONE, me) or routing_id != str(msg.frm).encode()


def neutralize(msg: Message, view: View) -> Message | None:
    """`msg` unchanged when it is no forgery against the node `view` describes (see the module
    doc), else made harmless: a stale term for messages from a leader, a rejection for grants
    and acknowledgements; None when nothing can be stale yet (term 0)."""
    if msg.term < view.term or impossible(msg) is not None:
        return msg
    stale = replace(msg, term=view.term - 1) if view.term > 0 else None
    if msg.type == MsgType.APP:
        beyond = msg.index > view.last_index + MARGIN  # rejected: nothing there to match
        below = msg.index < view.commit  # answered with the commit index, nothing appended
        return msg if beyond or below else stale
    if msg.type == MsgType.HEARTBEAT:
        return msg if msg.commit <= view.commit else stale
    if msg.type == MsgType.SNAP:
        assert msg.snapshot is not None
        return msg if msg.snapshot.index <= view.commit else stale
    if msg.type == MsgType.VOTE_RESP and not msg.reject:
        return replace(msg, reject=True)
    if msg.type == MsgType.APP_RESP and not msg.reject:
        beyond = msg.index > view.last_index + MARGIN  # the leader must refuse it
        return msg if beyond or msg.index == 0 else replace(msg, reject=True)
    if msg.type in (MsgType.HEARTBEAT_RESP, MsgType.READ_INDEX_RESP) and 0 < msg.context < MARGIN:
        # would confirm a read round or answer a waiting read: ids that no live one has
        return replace(msg, context=msg.context + MARGIN)
    return msg


# == hypothesis strategies ====================================================================
def numbers(view: View) -> st.SearchStrategy[int]:
    """Small values, values around the node's term, commit and last index, the edges of the
    integer types, and anything up to 2**64 - 1 (the codec carries no more)."""
    anchored = st.builds(lambda a, d: min(max(a + d, 0), U64),
                         st.sampled_from((view.term, view.commit, view.last_index)), st.integers(-3, 3))
    return st.one_of(st.integers(0, 8), anchored, st.sampled_from(EXTREMES), st.integers(0, U64))


def terms(view: View) -> st.SearchStrategy[int]:
    near = st.builds(lambda d: min(max(view.term + d, 0), U64), st.integers(-2, 3))
    return st.one_of(near, near, st.integers(0, 3), st.sampled_from(EXTREMES), st.integers(0, U64))


NODE_IDS = st.sampled_from((0, 1, 2, 3, 4, 99, 2**62, U64))
CONF_DATA = st.one_of(
    st.sampled_from((b"v=1,2,3;l=", b"v=1,2;l=3", b"v=;l=", b"v=;l=4", b"v=0,1;l=", b"v=1,1;l=",
                     b"v=1,2,3;l=3", b"v=99;l=", b"v=-1;l=", b"v=1,x;l=", b"v=1,2,3", b"v=1;l=;",
                     b"", b"\xff\xfe", b"garbage")),
    st.binary(max_size=32))


@st.composite
def entries_for(draw: st.DrawFn, view: View, index: int, log_term: int, term: int) -> tuple[Entry, ...]:
    """Entries after `index`: well-formed ones (following, terms rising from `log_term` to
    `term`), the same with one thing broken, or anything at all."""
    count = draw(st.integers(0, 5))
    mode = draw(st.sampled_from(("follow", "follow", "break", "random")))
    out: list[Entry] = []
    previous = log_term
    for position in range(count):
        if mode == "random":
            e_index, e_term = draw(numbers(view)), draw(terms(view))
        else:
            e_index = min(index + 1 + position, U64)
            low, high = min(previous, term), max(previous, term)
            e_term = draw(st.integers(low, high))
            previous = e_term
        kind = draw(st.sampled_from((EntryKind.NORMAL, EntryKind.NORMAL, EntryKind.CONF)))
        data = draw(CONF_DATA) if kind == EntryKind.CONF else draw(st.binary(max_size=16))
        out.append(Entry(e_term, e_index, kind, data))
    if mode == "break" and out:
        k = draw(st.integers(0, len(out) - 1))
        e = out[k]
        how = draw(st.sampled_from(("gap", "back", "zero", "repeat", "term_up", "term_down", "term_zero")))
        if how == "gap":
            out[k] = replace(e, index=min(e.index + draw(st.integers(1, 3)), U64))
        elif how == "back":
            out[k] = replace(e, index=max(e.index - draw(st.integers(1, 3)), 0))
        elif how == "zero":
            out[k] = replace(e, index=0)
        elif how == "repeat" and k > 0:
            out[k] = replace(e, index=out[k - 1].index)
        elif how == "term_up":
            out[k] = replace(e, term=min(term + draw(st.integers(1, 3)), U64))
        elif how == "term_down":
            out[k] = replace(e, term=max(previous - draw(st.integers(1, 3)), 0))
        else:
            out[k] = replace(e, term=0)
    return tuple(out)


@st.composite
def snapshots(draw: st.DrawFn, view: View) -> SnapshotMeta:
    voters = tuple(draw(st.lists(NODE_IDS, max_size=4)))
    if draw(st.booleans()):
        voters = (1, 2, 3)
    learners = tuple(draw(st.lists(NODE_IDS, max_size=2)))
    return SnapshotMeta(draw(numbers(view)), draw(terms(view)), ConfState(voters, learners))


@st.composite
def messages(draw: st.DrawFn, view: View) -> Message:
    """One Raft message for the node `view` describes, with adversarial field combinations:
    every type, senders real and unknown (now and then misrouted), terms stale, current, just
    ahead and far ahead, numbers around the node's log and at the edges of the integer types,
    entries well-formed or broken, snapshots of every shape. Not neutralized: callers do."""
    mtype = draw(st.sampled_from(list(MsgType)))
    frm = draw(st.one_of(st.sampled_from(view.peers), st.sampled_from(view.peers), st.sampled_from(UNKNOWN_IDS),
                         NODE_IDS))
    to = view.me if draw(st.integers(0, 9)) else draw(NODE_IDS)
    term = draw(terms(view))
    log_term = draw(st.one_of(terms(view), st.integers(0, max(term, 0))))
    index = draw(numbers(view))
    entries: tuple[Entry, ...] = ()
    if mtype == MsgType.APP or not draw(st.integers(0, 19)):
        entries = draw(entries_for(view, index, log_term, term))
    snapshot = None
    if (mtype == MsgType.SNAP and draw(st.integers(0, 9))) or not draw(st.integers(0, 19)):
        snapshot = draw(snapshots(view))
    return Message(mtype, to=to, frm=frm, term=term, log_term=log_term, index=index, entries=entries,
                   commit=draw(numbers(view)), reject=draw(st.booleans()), reject_hint=draw(numbers(view)),
                   context=draw(st.one_of(st.integers(0, 3), numbers(view))), snapshot=snapshot)


# == frames: what goes on the wire ===========================================================
DECODE, MISROUTED, REFUSED, INVALID, MAYBE = "decode", "misrouted", "refused", "invalid", "maybe"
"""Expected outcomes: counted as undecodable, as misrouted, refused by the core, counted as one
of those (a message with frames it does not use), or taken (perhaps refused on the receiver's
state: an acknowledgement beyond a leader's log, a read-index answer from a non-leader)."""


def expect(frames: list[bytes], me: int, routing_id: bytes) -> tuple[str, str]:
    """(outcome, why) for `frames` sent to node `me` from a DEALER with `routing_id`."""
    try:
        msg = decode(frames)
    except RemoteProtocolError as exc:
        return DECODE, str(exc)
    if not isinstance(msg, Message):
        return DECODE, f"a {type(msg).__name__} on the peer inbox"
    if misrouted(msg, me, routing_id):
        return MISROUTED, f"{msg.frm}->{msg.to} on the link of {routing_id!r}"
    reason = impossible(msg)
    if reason is not None:
        return REFUSED, reason
    if len(frames) - 1 > len(msg.entries):
        return INVALID, f"{len(frames) - 1} data frames for {len(msg.entries)} entries"
    return MAYBE, ""


def _header(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"v": 1, "k": "raft", "t": int(MsgType.HEARTBEAT), "to": 1, "frm": 2, "term": 0,
                            "lt": 0, "i": 0, "c": 0, "r": False, "rh": 0, "x": 0, "e": []}
    base.update(fields)
    return base


def _raw(header: dict[str, Any], *blobs: bytes) -> list[bytes]:
    return [json.dumps(header).encode(), *blobs]


def wire_cases(me: int, frm: int) -> list[tuple[str, list[bytes]]]:
    """Hand-picked frames that are not a valid Raft message for node `me` from node `frm`
    (term 0, so that any that did decode would be stale)."""
    def h(**fields: Any) -> dict[str, Any]:
        return _header(**{"to": me, "frm": frm, **fields})

    app2 = encode(Message(MsgType.APP, to=me, frm=frm, term=0, index=5, log_term=0,
                          entries=(Entry(1, 6, data=b"a"), Entry(1, 7, data=b"b"))))
    cases: list[tuple[str, list[bytes]]] = [
        ("an empty frame", [b""]),
        ("bytes that are not JSON", [b"\xff\x00garbage"]),
        ("JSON null", [b"null"]), ("a JSON array", [b"[1,2,3]"]), ("a JSON string", [b'"raft"']),
        ("NaN", [b"NaN"]), ("deeply nested JSON", [b"[" * 5000 + b"]" * 5000]),
        ("no version", [b'{"k":"raft"}']), ("version 0", _raw(h(v=0))), ("version 99", _raw(h(v=99))),
        ("version as a string", _raw(h(v="1"))), ("no kind", _raw({k: v for k, v in h().items() if k != "k"})),
        ("an unknown kind", _raw(h(k="raft2"))), ("a non-raft kind", encode(StatusRequest(1))),
        ("only version and kind", [b'{"v":1,"k":"raft"}']),
        ("type 0", _raw(h(t=0))), ("type 13", _raw(h(t=13))), ("type true", _raw(h(t=True))),
        ("type as a string", _raw(h(t="7"))), ("type 1.0", _raw(h(t=1.0))),
        ("to -1", _raw(h(to=-1))), ("to null", _raw(h(to=None))), ("frm as a string", _raw(h(frm=str(frm)))),
        ("term -1", _raw(h(term=-1))), ("term 1.5", _raw(h(term=1.5))), ("term 2**64", _raw(h(term=2**64))),
        ("term 1e400", [json.dumps(h()).replace('"term": 0', '"term": 1e400').encode()]),
        ("term a list", _raw(h(term=[1]))), ("log term an object", _raw(h(lt={"a": 1}))),
        ("index -5", _raw(h(i=-5))), ("commit 2**70", _raw(h(c=2**70))), ("hint -1", _raw(h(rh=-1))),
        ("context a string", _raw(h(x="ctx"))), ("reject 0", _raw(h(r=0))), ("reject null", _raw(h(r=None))),
        ("reject as a string", _raw(h(r="false"))),
        ("a missing field", _raw({k: v for k, v in h().items() if k != "c"})),
        ("entries an object", _raw(h(e={}))), ("entries a string", _raw(h(e="xy"))),
        ("an entry of two fields", _raw(h(t=1, e=[[1, 2]]), b"d")),
        ("an entry of four fields", _raw(h(t=1, e=[[1, 2, 0, 0]]), b"d")),
        ("an entry of kind 7", _raw(h(t=1, e=[[1, 2, 7]]), b"d")),
        ("an entry with a negative term", _raw(h(t=1, e=[[-1, 2, 0]]), b"d")),
        ("an entry with a string index", _raw(h(t=1, e=[[1, "2", 0]]), b"d")),
        ("an entry with a boolean kind", _raw(h(t=1, e=[[1, 2, True]]), b"d")),
        ("an entry without its data frame", _raw(h(t=1, e=[[1, 2, 0]]))),
        ("a truncated AppendEntries", app2[:2]),
        ("a snapshot of two fields", _raw(h(t=9, s=[1, 2]))),
        ("a snapshot of five fields", _raw(h(t=9, s=[1, 1, [1], [], 5]))),
        ("a snapshot with string voters", _raw(h(t=9, s=[1, 1, "123", []]))),
        ("a snapshot with float voters", _raw(h(t=9, s=[1, 1, [1.0], []]))),
        ("a snapshot with boolean index", _raw(h(t=9, s=[True, 1, [1], []]))),
        ("a snapshot as a string", _raw(h(t=9, s="abcd"))),
        ("a snapshot as an object", _raw(h(t=9, s={"a": 1, "b": 2, "c": 3, "d": 4}))),
        ("a snapshot with negative voters", _raw(h(t=9, s=[1, 1, [-1], []]))),
    ]
    return cases


def extra_frame_cases(me: int, frm: int) -> list[tuple[str, list[bytes]]]:
    """Messages carrying frames that no entry uses: no correct sender sends them (term 0, so
    that they are stale if taken)."""
    def msg(mtype: MsgType) -> list[bytes]:
        return encode(Message(mtype, to=me, frm=frm, term=0, index=5))

    return [("a heartbeat with a data frame", msg(MsgType.HEARTBEAT) + [b"x"]),
            ("an append without entries but with a data frame", msg(MsgType.APP) + [b"extra"]),
            ("a vote request with two data frames", msg(MsgType.VOTE) + [b"a", b"b"])]


@st.composite
def wire_garbage(draw: st.DrawFn, me: int, frm: int) -> list[bytes]:
    """Random frames: raw bytes, a valid message cut or with a byte changed, or a Raft header
    whose fields take random JSON values."""
    how = draw(st.sampled_from(("bytes", "cut", "flip", "fields")))
    good = encode(Message(MsgType.HEARTBEAT, to=me, frm=frm, term=0))
    if how == "bytes":
        return draw(st.lists(st.binary(max_size=64), min_size=1, max_size=3))
    if how == "cut":
        return [good[0][:draw(st.integers(0, len(good[0]) - 1))]]
    if how == "flip":
        at = draw(st.integers(0, len(good[0]) - 1))
        changed = bytearray(good[0])
        changed[at] = draw(st.integers(0, 255))
        return [bytes(changed)]
    json_values = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                            st.text(max_size=4), st.lists(st.integers(-2, 2**64), max_size=4))
    header = _header(to=me, frm=frm)
    for key in draw(st.lists(st.sampled_from(sorted(header)), min_size=1, max_size=4, unique=True)):
        header[key] = draw(json_values)
    return [json.dumps(header).encode(), *draw(st.lists(st.binary(max_size=8), max_size=2))]


# == hand-picked Raft messages ===============================================================
def hand_picked(view: View, frm: int) -> list[tuple[str, Message]]:
    """Adversarial messages for the node `view` describes, from node `frm` (a real peer or an
    unknown id), one or a few per kind of mischief the issue names. Not neutralized: callers
    do (every one of them is either impossible or harmless once neutralized)."""
    me, t, c, last = view.me, view.term, view.commit, view.last_index

    def m(mtype: MsgType, **kw: Any) -> Message:
        kw.setdefault("term", t)
        return Message(mtype, to=me, frm=frm, **kw)

    def ent(term: int, index: int, kind: EntryKind = EntryKind.NORMAL, data: bytes = b"fuzz") -> Entry:
        return Entry(term, index, kind, data)

    conf = ConfState((1, 2, 3))
    cases: list[tuple[str, Message]] = [
        # impossible indexes
        ("entries that do not follow the index", m(MsgType.APP, index=last, log_term=t, entries=(ent(t, last + 5),))),
        ("an entry index that goes back", m(MsgType.APP, index=c, log_term=t, entries=(ent(t, c + 1), ent(t, c)))),
        ("a gap between entries", m(MsgType.APP, index=c, log_term=t, entries=(ent(t, c + 1), ent(t, c + 3)))),
        ("an entry at index 0", m(MsgType.APP, index=0, log_term=0, entries=(ent(t, 0),))),
        ("an entry repeated", m(MsgType.APP, index=c, log_term=t, entries=(ent(t, c + 1), ent(t, c + 1)))),
        ("an index of 2**64 - 1", m(MsgType.APP, index=U64, log_term=t, commit=U64)),
        ("entries past 2**64", m(MsgType.APP, index=U64 - 1, log_term=t, entries=(ent(t, U64),))),
        ("an index of 2**62 with entries", m(MsgType.APP, index=2**62, log_term=t, entries=(ent(t, 2**62 + 1),))),
        ("an append far beyond the log",
         m(MsgType.APP, index=last + 2 * MARGIN, log_term=t, commit=last + 3 * MARGIN)),
        # impossible terms
        ("an entry of a term above the message's",
         m(MsgType.APP, index=last, log_term=t, entries=(ent(t + 5, last + 1),))),
        ("entry terms that go down", m(MsgType.APP, index=last, log_term=t, term=t + 1,
                                       entries=(ent(t + 1, last + 1), ent(t, last + 2))),),
        ("an entry below its previous term",
         m(MsgType.APP, index=last, log_term=t, entries=(ent(max(t - 1, 0), last + 1),))),
        ("an entry of term 0 after a later one", m(MsgType.APP, index=last, log_term=t, entries=(ent(0, last + 1),))),
        ("an entry of term 0 at index 1", m(MsgType.APP, index=0, log_term=0, entries=(ent(0, 1),))),
        ("a previous term above the message's", m(MsgType.APP, index=last, log_term=t + 3)),
        ("a vote request whose log term is above its term", m(MsgType.VOTE, term=t + 1, index=last, log_term=t + 9)),
        ("a pre-vote whose log term is above its term", m(MsgType.PRE_VOTE, term=t + 1, index=last, log_term=t + 9)),
        ("a term of 2**64 - 1", m(MsgType.HEARTBEAT, term=U64)),
        ("a heartbeat of term 2**62", m(MsgType.HEARTBEAT, term=2**62)),
        ("an acknowledgement of term 2**62", m(MsgType.APP_RESP, term=2**62)),
        ("a heartbeat of term 2**62 - 1", m(MsgType.HEARTBEAT, term=2**62 - 1)),
        ("a heartbeat of term 2**63", m(MsgType.HEARTBEAT, term=2**63)),
        ("a vote request of term 2**64 - 1", m(MsgType.VOTE, term=U64, index=U64, log_term=U64)),
        # configuration entries
        ("a configuration entry that does not decode",
         m(MsgType.APP, index=last, log_term=t, entries=(ent(t, last + 1, EntryKind.CONF, b"\xff\xfe"),))),
        ("a configuration entry without voters",
         m(MsgType.APP, index=last, log_term=t, entries=(ent(t, last + 1, EntryKind.CONF, b"v=;l=4"),))),
        ("a configuration entry with node 0",
         m(MsgType.APP, index=last, log_term=t, entries=(ent(t, last + 1, EntryKind.CONF, b"v=0,1;l="),))),
        ("a configuration entry without its separator",
         m(MsgType.APP, index=last, log_term=t, entries=(ent(t, last + 1, EntryKind.CONF, b"v=1,2,3"),))),
        ("a configuration entry with a voter who is also a learner",
         m(MsgType.APP, index=last, log_term=t, entries=(ent(t, last + 1, EntryKind.CONF, b"v=1,2,3;l=3"),))),
        # snapshots
        ("a snapshot message without a snapshot", m(MsgType.SNAP)),
        ("a snapshot without voters", m(MsgType.SNAP, snapshot=SnapshotMeta(last + 10, t, ConfState()))),
        ("a snapshot of term 0", m(MsgType.SNAP, snapshot=SnapshotMeta(last + 10, 0, conf))),
        ("a snapshot at index 0 of a term", m(MsgType.SNAP, snapshot=SnapshotMeta(0, t, conf))),
        ("a snapshot of a later term than the message",
         m(MsgType.SNAP, snapshot=SnapshotMeta(last + 10, t + 4, conf))),
        ("a snapshot with node 0", m(MsgType.SNAP, snapshot=SnapshotMeta(last + 10, t, ConfState((0, 1, 2))))),
        ("a snapshot with a node twice", m(MsgType.SNAP, snapshot=SnapshotMeta(last + 10, t, ConfState((1, 1, 2))))),
        ("a snapshot with a voter who is also a learner",
         m(MsgType.SNAP, snapshot=SnapshotMeta(last + 10, t, ConfState((1, 2, 3), (3,))))),
        ("a snapshot below the commit index", m(MsgType.SNAP, snapshot=SnapshotMeta(max(c - 1, 1), 1, conf))),
        ("a snapshot of unknown nodes below the commit index",
         m(MsgType.SNAP, snapshot=SnapshotMeta(max(c - 1, 1), 1, ConfState((7, 99), (4,))))),
        ("a snapshot at 2**64 - 1", m(MsgType.SNAP, snapshot=SnapshotMeta(U64, t, conf))),
        # commit points and hints
        ("a commit point far beyond the log on an append that cannot match",
         m(MsgType.APP, index=last + MARGIN * 2, log_term=t, commit=U64 - 1)),
        ("a commit point beyond the log on a stale heartbeat",
         m(MsgType.HEARTBEAT, term=max(t - 1, 0), commit=last + 100)),
        ("a rejection with a hint far beyond the log",
         m(MsgType.APP_RESP, index=last, reject=True, reject_hint=U64 - 1, log_term=U64 - 1)),
        ("a rejection with a hint of 0 and term 0",
         m(MsgType.APP_RESP, index=last, reject=True, reject_hint=0, log_term=0)),
        ("a rejection at index 0", m(MsgType.APP_RESP, index=0, reject=True, reject_hint=last + 7, log_term=t)),
        ("a heartbeat answer rejecting with a hint beyond the log",
         m(MsgType.HEARTBEAT_RESP, reject=True, reject_hint=last + MARGIN)),
        ("a heartbeat answer rejecting with hint 0", m(MsgType.HEARTBEAT_RESP, reject=True, reject_hint=0)),
        # answers nobody asked for
        ("an acknowledgement far beyond the log", m(MsgType.APP_RESP, index=last + 2 * MARGIN)),
        ("an acknowledgement of 2**62", m(MsgType.APP_RESP, index=2**62)),
        ("an unasked-for vote refusal", m(MsgType.VOTE_RESP, reject=True)),
        ("an unasked-for pre-vote grant", m(MsgType.PRE_VOTE_RESP, term=t + 1)),
        ("a heartbeat answer for a read round never started", m(MsgType.HEARTBEAT_RESP, context=123456789)),
        ("a read-index answer nobody waits for", m(MsgType.READ_INDEX_RESP, index=last + MARGIN, context=U64 - 1)),
        ("a read-index request with a huge id", m(MsgType.READ_INDEX, context=U64 - 1)),
        ("a TimeoutNow from a stranger", m(MsgType.TIMEOUT_NOW)),
        ("a transfer vote request far ahead", m(MsgType.VOTE, term=t + 1000, index=U64 - 1, log_term=t + 1000,
                                                context=1)),
        ("a pre-vote far ahead", m(MsgType.PRE_VOTE, term=t + 2**40, index=last, log_term=t)),
        # fields that do not belong
        ("entries on a heartbeat", m(MsgType.HEARTBEAT, entries=(ent(t, last + 1),))),
        ("a snapshot on an append", m(MsgType.APP, index=c, log_term=0, snapshot=SnapshotMeta(c + 5, t, conf))),
        ("entries on a vote request",
         m(MsgType.VOTE, term=t + 1, index=last, log_term=t, entries=(ent(t, last + 1),))),
    ]
    return cases


# == DEALERs on a node's peer port ============================================================
class FuzzPeer:
    """A plain DEALER (no IMMEDIATE: nothing is dropped while it connects) on a node's peer
    inbox, with the routing id it claims. With the id of a real peer it takes that peer's link
    over (ROUTER_HANDOVER); the peer's own connection stays open but dead until its heartbeats
    time out (about 4 s), when it reconnects and takes the id back: so such a DEALER is closed
    after each batch, and used sparingly."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], address: str, routing_id: bytes) -> None:
        self.address = address
        self.routing_id = routing_id
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.connect(address)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def close(self, linger_ms: int = 2000) -> None:
        self.sock.close(linger=linger_ms)


# == a client that keeps proposing ============================================================
@dataclass
class Proposal:
    index: int
    term: int
    data: bytes
    at: float


@dataclass
class Proposer:
    """A thread that proposes on whichever node leads, every `interval_s`, through RPC
    clients of its own (a Node's client belongs to the test's thread)."""

    raft_rpc: dict[int, str]
    interval_s: float = 0.005
    accepted: list[Proposal] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[float, str]] = field(default_factory=list)  # (when, code or "timeout")
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="proposer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        clients = {node: RpcClient(address) for node, address in self.raft_rpc.items()}
        nodes = sorted(clients)
        leader = nodes[0]
        seq = 0
        try:
            while not self._stop.is_set():
                seq += 1
                data = f"proposal {seq}".encode()
                try:
                    reply = clients[leader].call(Propose(0, data), 1.0)
                except RpcTimeout:
                    self.refused["timeout"] += 1
                    self.errors.append((time.monotonic(), "timeout"))
                    leader = nodes[(nodes.index(leader) + 1) % len(nodes)]
                    continue
                if isinstance(reply, Proposed):
                    self.accepted.append(Proposal(reply.index, reply.term, data, time.monotonic()))
                elif isinstance(reply, Error):
                    self.refused[reply.code] += 1
                    self.errors.append((time.monotonic(), str(reply.code)))
                    if reply.leader in clients:
                        leader = reply.leader
                    else:
                        leader = nodes[(nodes.index(leader) + 1) % len(nodes)]
                        self._stop.wait(0.02)
                self._stop.wait(self.interval_s)
        finally:
            for client in clients.values():
                client.close()


# == reading a node's log ====================================================================
def committed_log(call: Any, page_bytes: int = 1 << 20) -> list[tuple[int, int, int, bytes]]:
    """Every committed entry a raft process serves (FetchEntries from 1): (index, term, kind,
    data). `call(msg, timeout)` is the node's RPC."""
    out: list[tuple[int, int, int, bytes]] = []
    while True:
        reply = call(FetchEntries(0, len(out) + 1, page_bytes), 5.0)
        assert isinstance(reply, EntriesReply), reply
        if not reply.entries:
            return out
        for entry in reply.entries:
            assert entry.index == len(out) + 1, f"entry {entry.index} where {len(out) + 1} was due"
            out.append((entry.index, entry.term, int(entry.kind), entry.data))


# == process memory ==========================================================================
def proc_mib(pid: int, key: str = "VmHWM") -> float:
    """A /proc/PID/status size in MiB: VmHWM is the peak resident size, VmRSS the current."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


# == the socket host ==========================================================================
class SocketHost:
    """`python -m tests.component.test_peer_fuzz_support ROLE ADDRESS` as a child process,
    driven by one-line commands on stdin, each answered by one JSON line on stdout."""

    def __init__(self, role: str, address: str, *args: str) -> None:
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.component.test_peer_fuzz_support", role, address,
                                      *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root, text=True)
        assert self.ask("hello")["ok"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"socket host exited with {self.proc.poll()}"
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def host_main(argv: list[str]) -> int:
    """The socket host. Roles:
    - `api_server ADDRESS [CAP]`: sockets.api_server bound at ADDRESS; answers every request
      with b"pong";
    - `api_dealer ADDRESS` / `peer_dealer ADDRESS`: sockets.api_dealer / peer_dealer connected
      to ADDRESS; sends b"ping" every 10 ms and reads whatever arrives (a peer DEALER is never
      read in zraft, and with `noread` it is not read here either);
    - `peer_inbox ADDRESS`: sockets.peer_inbox bound at ADDRESS, read as the raft process does.
    Commands: `hello`, `status` (counts and memory), `redial`, `stall SECONDS` (read nothing
    for that long, as a busy process), `quit`."""
    from zraft.transport import sockets

    role, address = argv[0], argv[1]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    if role == "api_server":
        sock = sockets.api_server(ctx, address, *(int(a) for a in argv[2:3] if a != "noread"))
    elif role == "api_dealer":
        sock = sockets.api_dealer(ctx, address)
    elif role == "peer_dealer":
        sock = sockets.peer_dealer(ctx, 5, address)
    elif role == "peer_inbox":
        sock = sockets.peer_inbox(ctx, address)
    else:
        raise SystemExit(f"unknown role {role}")
    counts: Counter[str] = Counter()
    commands: list[str] = []
    lock = threading.Lock()

    def read_stdin() -> None:
        for line in sys.stdin:
            with lock:
                commands.append(line.strip())

    threading.Thread(target=read_stdin, daemon=True).start()
    next_ping = 0.0
    while True:
        with lock:
            pending, commands[:] = list(commands), []
        for command in pending:
            if command == "quit":
                return 0
            if command == "redial":
                sockets.redial(sock, address)
            if command.startswith("stall "):
                time.sleep(float(command.split()[1]))
            answer = {"ok": True, **counts, "hwm_mib": proc_mib(os.getpid()),
                      "rss_mib": proc_mib(os.getpid(), "VmRSS")}
            print(json.dumps(answer), flush=True)
        if role in ("api_dealer", "peer_dealer") and time.monotonic() >= next_ping:
            next_ping = time.monotonic() + 0.01
            counts["sent" if sockets.send_nowait(sock, [b"ping"]) else "dropped"] += 1
        if "noread" in argv[2:]:
            time.sleep(0.01)
        elif sock.poll(10):
            for frames in sockets.recv_batch(sock, 100):
                counts["received"] += 1
                counts["received_bytes"] += sum(len(f) for f in frames)
                if role == "api_server":
                    counts["answered" if sockets.send_nowait(sock, [frames[0], b"pong"]) else "unanswered"] += 1


if __name__ == "__main__":
    sys.exit(host_main(sys.argv[1:]))
