//! Bounded state: the maps that remember ids across lines, each with a fixed
//! capacity, so memory does not grow with the transcript.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use sha2::{Digest, Sha256};

/// At most this many entries of a bounded map are reserved when it is made.
const BOUNDED_RESERVE: usize = 1 << 14;

/// A map that forgets its oldest insertions beyond `cap` entries.
///
/// Hashed with foldhash: keys are ids looked up on every line, where SipHash
/// was a measurable share of decoding; foldhash is still seeded per process.
#[derive(Debug)]
pub(super) struct Bounded<K, V> {
    map: HashMap<K, V, foldhash::fast::RandomState>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    pub(super) fn new(cap: usize) -> Self {
        // Reserved up front (bounded) so that replaying a long transcript from
        // the beginning does not pay for growing and rehashing step by step.
        let reserve = cap.min(BOUNDED_RESERVE);
        Self {
            map: HashMap::with_capacity_and_hasher(reserve, Default::default()),
            order: VecDeque::with_capacity(reserve),
            cap,
        }
    }

    pub(super) fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(k)
    }

    pub(super) fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get_mut(k)
    }

    /// Inserts or updates; an update keeps the entry's age. The owned key is
    /// only made when the key is new; with `Arc<str>` keys the map and the
    /// eviction order then share that one allocation.
    pub(super) fn insert<Q>(&mut self, k: &Q, v: V)
    where
        K: Borrow<Q> + for<'q> From<&'q Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(slot) = self.map.get_mut(k) {
            *slot = v;
            return;
        }
        self.push(K::from(k), v);
    }

    /// Adds a key known to be absent, evicting the oldest entries to fit.
    fn push(&mut self, k: K, v: V) {
        if self.cap == 0 {
            return;
        }
        self.order.push_back(k.clone());
        self.map.insert(k, v);
        self.evict_over_cap();
    }

    /// Forgets the oldest entries until at most `cap` are left. The newest
    /// key is at the back of `order`, so with `cap >= 1` it always stays.
    fn evict_over_cap(&mut self) {
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }
}

impl<K: Hash + Eq + Clone> Bounded<K, ()> {
    /// `true` when `k` was not remembered (and now is). With capacity 0 every
    /// key is new. One probe: insert first, evict after.
    pub(super) fn insert_new(&mut self, k: K) -> bool {
        if self.cap == 0 {
            return true;
        }
        if self.map.insert(k.clone(), ()).is_some() {
            return false;
        }
        self.order.push_back(k);
        self.evict_over_cap();
        true
    }
}

/// A record uuid as the 16 bytes the dedupe window stores.
///
/// A canonical UUID (8-4-4-4-12 hex digits, either case) is its own value, so
/// those keys are exact. Anything else is the first 16 bytes of its SHA-256:
/// for such a key to drop a record wrongly it would have to collide with one
/// of at most `dedupe_capacity` others, at odds of 2^-128 each. Plain `u128`
/// keys halve the window's memory against a string-or-number enum, and the
/// window is probed once per line at random, so its size is time: this
/// measured 3 % of decoding.
pub(super) fn uuid_key(s: &str) -> u128 {
    /// Hex digit values; 0xff marks a non-digit.
    const HEX: [u8; 256] = {
        let mut t = [0xff; 256];
        let mut i = 0;
        while i < 16 {
            t[b"0123456789abcdef"[i] as usize] = i as u8;
            t[b"0123456789ABCDEF"[i] as usize] = i as u8;
            i += 1;
        }
        t
    };
    let b = s.as_bytes();
    if b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-') {
        // Branch-free per digit: a non-digit sets high bits in `bad`.
        let (mut n, mut bad) = (0u128, 0u8);
        for group in [&b[..8], &b[9..13], &b[14..18], &b[19..23], &b[24..]] {
            for &c in group {
                let d = HEX[usize::from(c)];
                bad |= d;
                n = (n << 4) | u128::from(d & 0x0f);
            }
        }
        if bad & 0xf0 == 0 {
            return n;
        }
    }
    let digest = Sha256::digest(b);
    let mut head = [0u8; 16];
    head.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(head)
}
