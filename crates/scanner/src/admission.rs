//! Who may hold a connection: slots for connections that have not said
//! `Hello` yet, and slots for sessions, each bounded in total and per peer.
//!
//! A connection takes a *pending* slot when it is accepted, keyed by the
//! peer's transport identity (for TLS, its address: the certificate is not
//! checked yet). When its handshake completes the pending slot is given back
//! and a *session* slot taken, keyed by the final identity (for TLS, the
//! certificate's subject). So peers that never send `Hello` can fill only
//! the pending slots, and only their own share of them: they can never
//! crowd out guests that have said `Hello`.
//!
//! Slots are guards: dropping one gives it back, so a connection task that
//! ends in any way (error, panic, abort) frees what it held.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::connection::PeerIdentity;

/// The bounds of an [`Admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Sessions (handshake done) over all peers.
    pub max_sessions: u32,
    /// Sessions of one identity.
    pub max_sessions_per_guest: u32,
    /// Connections before `Hello` over all peers.
    pub max_pending: u32,
    /// Connections before `Hello` of one peer.
    pub max_pending_per_peer: u32,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many connections before `Hello` in total.
    PendingFull,
    /// Too many connections before `Hello` from this peer.
    PendingPerPeer,
    /// `max_sessions` reached.
    SessionsFull,
    /// `max_sessions_per_guest` reached for this identity.
    SessionsPerGuest,
}

impl Refusal {
    /// The `reason` label of `thinagent_scanner_connections_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::PendingFull => "max_pending_handshakes",
            Self::PendingPerPeer => "max_pending_per_peer",
            Self::SessionsFull => "max_sessions",
            Self::SessionsPerGuest => "max_sessions_per_guest",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PendingFull => {
                "too many connections have not sent Hello yet (limits.max_pending_handshakes)"
            }
            Self::PendingPerPeer => {
                "this peer has too many connections that have not sent Hello yet (limits.max_pending_per_peer)"
            }
            Self::SessionsFull => "max sessions reached (limits.max_sessions)",
            Self::SessionsPerGuest => {
                "this guest has max sessions already (limits.max_sessions_per_guest)"
            }
        })
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_peer: HashMap<PeerIdentity, u32>,
}

impl Counts {
    fn try_take(&mut self, peer: &PeerIdentity, max_total: u32, max_peer: u32) -> Option<()> {
        if self.total >= max_total {
            return None;
        }
        let n = self.per_peer.entry(peer.clone()).or_insert(0);
        if *n >= max_peer {
            return None;
        }
        *n += 1;
        self.total += 1;
        Some(())
    }

    fn give_back(&mut self, peer: &PeerIdentity) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_peer.get_mut(peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_peer.remove(peer);
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    pending: Counts,
    sessions: Counts,
}

/// The slot counters of one service.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    state: Mutex<State>,
}

impl Admission {
    /// Counters with these bounds.
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection from `peer` that has not said `Hello` yet.
    pub fn try_pending(self: &Arc<Self>, peer: PeerIdentity) -> Result<PendingSlot, Refusal> {
        let l = self.limits;
        let mut s = self.state();
        if s.pending.total >= l.max_pending {
            return Err(Refusal::PendingFull);
        }
        s.pending
            .try_take(&peer, l.max_pending, l.max_pending_per_peer)
            .ok_or(Refusal::PendingPerPeer)?;
        Ok(PendingSlot {
            admission: Arc::clone(self),
            peer: Some(peer),
        })
    }

    /// (connections before `Hello`, sessions) held now.
    pub fn held(&self) -> (u32, u32) {
        let s = self.state();
        (s.pending.total, s.sessions.total)
    }

    /// Sessions `identity` holds now.
    pub fn sessions_of(&self, identity: &PeerIdentity) -> u32 {
        self.state()
            .sessions
            .per_peer
            .get(identity)
            .copied()
            .unwrap_or(0)
    }
}

/// A connection's place among those that have not said `Hello`; given back
/// when dropped or [promoted](Self::promote).
#[derive(Debug)]
pub struct PendingSlot {
    admission: Arc<Admission>,
    peer: Option<PeerIdentity>,
}

impl PendingSlot {
    /// The handshake completed as `identity`: gives the pending slot back
    /// and takes a session slot, or says why not (the pending slot is given
    /// back either way).
    pub fn promote(mut self, identity: PeerIdentity) -> Result<SessionSlot, Refusal> {
        let a = Arc::clone(&self.admission);
        let l = a.limits;
        let mut s = a.state();
        if let Some(peer) = self.peer.take() {
            s.pending.give_back(&peer);
        }
        if s.sessions.total >= l.max_sessions {
            return Err(Refusal::SessionsFull);
        }
        s.sessions
            .try_take(&identity, l.max_sessions, l.max_sessions_per_guest)
            .ok_or(Refusal::SessionsPerGuest)?;
        drop(s);
        Ok(SessionSlot {
            admission: a,
            identity,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if let Some(peer) = self.peer.take() {
            self.admission.state().pending.give_back(&peer);
        }
    }
}

/// A session's slot; given back when dropped.
#[derive(Debug)]
pub struct SessionSlot {
    admission: Arc<Admission>,
    identity: PeerIdentity,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.admission.state().sessions.give_back(&self.identity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_sessions: 3,
            max_sessions_per_guest: 2,
            max_pending: 4,
            max_pending_per_peer: 2,
        }
    }

    fn cid(n: u32) -> PeerIdentity {
        PeerIdentity::Vsock(n)
    }

    #[test]
    fn silent_peers_fill_only_their_own_pending_share() {
        let a = Admission::new(limits());
        let p1 = a.try_pending(cid(3)).unwrap();
        let p2 = a.try_pending(cid(3)).unwrap();
        assert_eq!(a.try_pending(cid(3)).unwrap_err(), Refusal::PendingPerPeer);
        // Another peer still gets in, up to the total.
        let q1 = a.try_pending(cid(4)).unwrap();
        let q2 = a.try_pending(cid(4)).unwrap();
        assert_eq!(a.try_pending(cid(5)).unwrap_err(), Refusal::PendingFull);
        assert_eq!(a.held(), (4, 0));
        drop(p1);
        let r = a.try_pending(cid(5)).unwrap();
        // Pending slots never count against sessions: a guest that says
        // Hello gets a session while every pending slot is taken.
        let p3 = a.try_pending(cid(3)).unwrap_err();
        assert_eq!(p3, Refusal::PendingFull);
        let s = r.promote(cid(5)).unwrap();
        assert_eq!(a.held(), (3, 1));
        drop((p2, q1, q2, s));
        assert_eq!(a.held(), (0, 0));
    }

    #[test]
    fn sessions_are_bounded_per_identity_and_in_total() {
        let a = Admission::new(limits());
        let s1 = a.try_pending(cid(3)).unwrap().promote(cid(3)).unwrap();
        let s2 = a.try_pending(cid(3)).unwrap().promote(cid(3)).unwrap();
        assert_eq!(
            a.try_pending(cid(3)).unwrap().promote(cid(3)).unwrap_err(),
            Refusal::SessionsPerGuest
        );
        assert_eq!(a.sessions_of(&cid(3)), 2);
        // The refused promotion gave its pending slot back.
        assert_eq!(a.held(), (0, 2));
        let s3 = a.try_pending(cid(4)).unwrap().promote(cid(4)).unwrap();
        assert_eq!(
            a.try_pending(cid(5)).unwrap().promote(cid(5)).unwrap_err(),
            Refusal::SessionsFull
        );
        drop(s1);
        let s4 = a.try_pending(cid(5)).unwrap().promote(cid(5)).unwrap();
        drop((s2, s3, s4));
        assert_eq!(a.held(), (0, 0));
        assert_eq!(a.sessions_of(&cid(3)), 0);
    }

    #[test]
    fn a_tls_peer_is_pending_by_address_and_a_session_by_subject() {
        let a = Admission::new(limits());
        let addr = PeerIdentity::Tcp("192.0.2.7".parse().unwrap());
        let p = a.try_pending(addr.clone()).unwrap();
        let subject = PeerIdentity::Tls(Arc::from("CN=vm-1"));
        let s = p.promote(subject.clone()).unwrap();
        assert_eq!(a.sessions_of(&subject), 1);
        assert_eq!(a.sessions_of(&addr), 0);
        drop(s);
        assert_eq!(a.held(), (0, 0));
    }
}
