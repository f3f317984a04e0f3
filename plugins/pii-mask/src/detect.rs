//! PII detection over the bytes of one text cell. Plain Rust, no wasm: unit-tested natively.
//!
//! [`Detector::scan`] finds the spans of the enabled entities in a cell, without allocating
//! (the caller passes a reusable span vector). A cell of at most 128 bytes is first pre-scanned
//! once (a table lookup per byte) for the classes of bytes each detector needs (digits,
//! uppercase, `@`, `:`, `J`); most cells then need no further pass. Then:
//!
//! 1. **Atoms** (maximal runs of ASCII letters and digits), found by skipping 8 bytes at a time
//!    (SWAR) to the next digit or uppercase letter:
//!    - a run of digit atoms joined by short separators (` `, `-`, `.`, `(`, `)`, at most 3 of
//!      them) is a *numeric chain*, matched against IPv4, US SSN, card and phone shapes;
//!      a chain glued by a single `-`, `_`, `.` or `/` to a word containing a letter
//!      (`ORD-4111111111111111`, `v1.2.3.4`-like ids) is part of an identifier and skipped;
//!    - an uppercase atom starting with a country code and two digits may start an IBAN
//!      (compact or in groups of 4), a 20-character `AKIA`/`ASIA` atom is an AWS access key id.
//! 2. `@` (found with `memchr`) → e-mail address around it.
//! 3. `:` → IPv6 candidate around it, parsed with `std::net::Ipv6Addr`.
//! 4. `eyJ` → JWT (the base64url of `{"`), whose header must decode to a JSON object with `alg`.
//! 5. Cells of at least [`SECRET_MIN_LEN`] bytes: high-entropy secrets (rule at
//!    [`is_high_entropy_secret`]), found with a skip search (probe every 32nd byte).
//!
//! Overlapping spans are resolved by keeping the one that starts first (the longer one on a
//! tie).

use std::net::Ipv6Addr;

/// The entity types `pii-mask` detects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    CreditCard,
    UsSsn,
    Email,
    Phone,
    Iban,
    Ipv4,
    Ipv6,
    Jwt,
    AwsAccessKey,
    Secret,
}

pub const ENTITY_COUNT: usize = 10;

impl Entity {
    pub const ALL: [Entity; ENTITY_COUNT] = [
        Entity::CreditCard,
        Entity::UsSsn,
        Entity::Email,
        Entity::Phone,
        Entity::Iban,
        Entity::Ipv4,
        Entity::Ipv6,
        Entity::Jwt,
        Entity::AwsAccessKey,
        Entity::Secret,
    ];

    /// The name used in the config and in findings.
    pub fn name(self) -> &'static str {
        match self {
            Entity::CreditCard => "credit-card",
            Entity::UsSsn => "us-ssn",
            Entity::Email => "email",
            Entity::Phone => "phone",
            Entity::Iban => "iban",
            Entity::Ipv4 => "ipv4",
            Entity::Ipv6 => "ipv6",
            Entity::Jwt => "jwt",
            Entity::AwsAccessKey => "aws-access-key",
            Entity::Secret => "secret",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Parses a config name. `ip-address` means both IPv4 and IPv6 and is handled by
    /// [`EntitySet::parse_name`].
    pub fn from_name(name: &str) -> Option<Entity> {
        Entity::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// A set of entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntitySet(u16);

impl EntitySet {
    pub const fn empty() -> Self {
        EntitySet(0)
    }

    pub const fn all() -> Self {
        EntitySet((1 << ENTITY_COUNT) - 1)
    }

    pub fn insert(&mut self, e: Entity) {
        self.0 |= 1 << e as u16;
    }

    pub fn contains(self, e: Entity) -> bool {
        self.0 & (1 << e as u16) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The entities a config name stands for (`ip-address` = IPv4 + IPv6, `ssn` = `us-ssn`).
    pub fn parse_name(name: &str) -> Option<EntitySet> {
        let mut set = EntitySet::empty();
        match name {
            "ip-address" | "ip" => {
                set.insert(Entity::Ipv4);
                set.insert(Entity::Ipv6);
            }
            "ssn" => set.insert(Entity::UsSsn),
            "card" | "pan" => set.insert(Entity::CreditCard),
            "high-entropy-secret" => set.insert(Entity::Secret),
            other => set.insert(Entity::from_name(other)?),
        }
        Some(set)
    }

    pub fn union(self, other: EntitySet) -> EntitySet {
        EntitySet(self.0 | other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Entity> {
        Entity::ALL.into_iter().filter(move |e| self.contains(*e))
    }
}

/// What a column's name suggests: allows the bare forms that are too ambiguous elsewhere
/// (`123456789` as an SSN, `4155552671` as a phone number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hints {
    pub ssn: bool,
    pub phone: bool,
}

impl Hints {
    /// `ssn`: the name contains `ssn` or `social_sec`/`socialsec`; `phone`: it contains
    /// `phone`, `mobile`, `msisdn` or `fax`, or has a word `tel` or `cell`.
    pub fn from_column_name(name: &str) -> Hints {
        let lower = name.to_ascii_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
        let word = |w: &str| lower.split(|c: char| !c.is_ascii_alphanumeric()).any(|x| x == w);
        Hints {
            ssn: has(&["ssn", "social_sec", "socialsec"]),
            phone: has(&["phone", "mobile", "msisdn", "fax"]) || word("tel") || word("cell"),
        }
    }
}

/// A detected entity: bytes `start..end` of the cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub entity: Entity,
}

// ---------------------------------------------------------------------------------------------
// Byte classes.

const DIGIT: u16 = 1;
const UPPER: u16 = 2;
const LOWER: u16 = 4;
const HEX: u16 = 8;
/// Characters of secret tokens: letters, digits, `+ / _ -` (and trailing `=` padding).
const TOKEN: u16 = 16;
/// base64url: letters, digits, `_ -`.
const B64URL: u16 = 32;
/// Separators inside numeric chains: ` - . ( )`.
const SEP: u16 = 64;
/// E-mail local part: letters, digits, `. _ % + -`.
const LOCAL: u16 = 128;
/// Domain: letters, digits, `. -`.
const DOMAIN: u16 = 256;
/// IPv6 text: hex digits, `:` and `.`.
const V6: u16 = 512;
const ALNUM: u16 = DIGIT | UPPER | LOWER;
const LETTER: u16 = UPPER | LOWER;

const fn build_classes() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if b.is_ascii_digit() {
            c |= DIGIT | HEX | TOKEN | B64URL | LOCAL | DOMAIN | V6;
        }
        if b.is_ascii_uppercase() {
            c |= UPPER | TOKEN | B64URL | LOCAL | DOMAIN;
        }
        if b.is_ascii_lowercase() {
            c |= LOWER | TOKEN | B64URL | LOCAL | DOMAIN;
        }
        if matches!(b, b'a'..=b'f' | b'A'..=b'F') {
            c |= HEX | V6;
        }
        match b {
            b'+' => c |= TOKEN | LOCAL,
            b'/' => c |= TOKEN,
            b'_' => c |= TOKEN | B64URL | LOCAL,
            b'-' => c |= TOKEN | B64URL | SEP | LOCAL | DOMAIN,
            b'.' => c |= SEP | LOCAL | DOMAIN | V6,
            b' ' | b'(' | b')' => c |= SEP,
            b'%' => c |= LOCAL,
            b':' => c |= V6,
            _ => {}
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CLASS: [u16; 256] = build_classes();

#[inline(always)]
fn class(b: u8) -> u16 {
    CLASS[b as usize]
}

#[inline(always)]
fn is(b: u8, mask: u16) -> bool {
    class(b) & mask != 0
}

/// Cells up to this size get a presence pre-scan.
const PRESCAN_MAX: usize = 128;
const T_DIGIT: u8 = 1;
const T_UPPER: u8 = 2;
const T_LOWER: u8 = 4;
const T_AT: u8 = 8;
const T_COLON: u8 = 16;
const T_J: u8 = 32;

const fn build_triggers() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b.is_ascii_digit() {
            T_DIGIT
        } else if b == b'J' {
            T_UPPER | T_J
        } else if b.is_ascii_uppercase() {
            T_UPPER
        } else if b.is_ascii_lowercase() {
            T_LOWER
        } else if b == b'@' {
            T_AT
        } else if b == b':' {
            T_COLON
        } else {
            0
        };
        i += 1;
    }
    t
}

static TRIGGERS: [u8; 256] = build_triggers();

/// The union of the trigger classes of the bytes.
#[inline]
fn prescan(t: &[u8]) -> u8 {
    t.iter().fold(0, |acc, &b| acc | TRIGGERS[b as usize])
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` that is strictly between `m` and `n` (ASCII bytes only;
/// "hasbetween" from Bit Twiddling Hacks, exact per byte: no carries cross bytes).
#[inline(always)]
fn bytes_between(x: u64, m: u8, n: u8) -> u64 {
    let low7 = x & (ONES * 127);
    (ONES * (127 + u64::from(n))).wrapping_sub(low7)
        & !x
        & low7.wrapping_add(ONES * (127 - u64::from(m)))
        & HIGHS
}

/// The position of the next ASCII digit or uppercase letter at or after `i` (or `t.len()`).
#[inline]
fn next_digit_or_upper(t: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = t.get(i..).and_then(|r| r.first_chunk::<8>()) {
        let w = u64::from_le_bytes(*chunk);
        let hits = bytes_between(w, b'0' - 1, b'9' + 1) | bytes_between(w, b'A' - 1, b'Z' + 1);
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < t.len() && !is(t[i], DIGIT | UPPER) {
        i += 1;
    }
    i
}

/// A single character that glues a number to a neighbouring word into one identifier.
fn is_tight(b: u8) -> bool {
    matches!(b, b'-' | b'_' | b'.' | b'/')
}

// ---------------------------------------------------------------------------------------------

/// Minimum length of a high-entropy secret token.
pub const SECRET_MIN_LEN: usize = 32;
/// Maximum length considered (longer runs are blobs, not credentials).
pub const SECRET_MAX_LEN: usize = 512;
/// Minimum Shannon entropy, in bits per character.
pub const SECRET_MIN_ENTROPY: f64 = 4.3;

/// The detector, for a set of enabled entities.
#[derive(Debug, Clone)]
pub struct Detector {
    enabled: EntitySet,
    numeric: bool,
    jwt_finder: memchr::memmem::Finder<'static>,
}

impl Detector {
    pub fn new(enabled: EntitySet) -> Self {
        let numeric = [Entity::CreditCard, Entity::UsSsn, Entity::Phone, Entity::Ipv4]
            .into_iter()
            .any(|e| enabled.contains(e));
        Detector {
            enabled,
            numeric,
            jwt_finder: memchr::memmem::Finder::new(b"eyJ"),
        }
    }

    pub fn enabled(&self) -> EntitySet {
        self.enabled
    }

    /// Finds the entities in `text`, replacing the contents of `spans` with them (sorted,
    /// non-overlapping).
    pub fn scan(&self, text: &[u8], hints: Hints, spans: &mut Vec<Span>) {
        spans.clear();
        if text.len() < 6 {
            return;
        }
        let on = |e| self.enabled.contains(e);
        // Short cells: one pass over the bytes tells which detectors can match at all (most
        // cells need none); long cells go straight to the (SIMD) searches.
        let present = if text.len() <= PRESCAN_MAX {
            prescan(text)
        } else {
            u8::MAX
        };
        if present & (T_DIGIT | T_UPPER) != 0
            && (self.numeric || on(Entity::Iban) || on(Entity::AwsAccessKey))
        {
            self.atoms(text, hints, spans);
        }
        if present & T_AT != 0 && on(Entity::Email) {
            for at in memchr::memchr_iter(b'@', text) {
                if let Some((s, e)) = email_at(text, at) {
                    spans.push(Span {
                        start: s,
                        end: e,
                        entity: Entity::Email,
                    });
                }
            }
        }
        if present & T_COLON != 0 && on(Entity::Ipv6) {
            let mut skip_to = 0;
            for colon in memchr::memchr_iter(b':', text) {
                if colon < skip_to {
                    continue;
                }
                let (s, e, ok) = ipv6_around(text, colon);
                skip_to = e.max(colon + 1);
                if ok {
                    spans.push(Span {
                        start: s,
                        end: e,
                        entity: Entity::Ipv6,
                    });
                }
            }
        }
        if present & T_J != 0 && on(Entity::Jwt) {
            let mut skip_to = 0;
            for p in self.jwt_finder.find_iter(text) {
                if p < skip_to {
                    continue;
                }
                if let Some(e) = jwt_at(text, p) {
                    spans.push(Span {
                        start: p,
                        end: e,
                        entity: Entity::Jwt,
                    });
                    skip_to = e;
                }
            }
        }
        let mixed = T_DIGIT | T_UPPER | T_LOWER;
        if present & mixed == mixed && on(Entity::Secret) && text.len() >= SECRET_MIN_LEN {
            secrets(text, spans);
        }
        resolve_overlaps(spans);
    }

    fn atoms(&self, t: &[u8], hints: Hints, spans: &mut Vec<Span>) {
        let n = t.len();
        let mut i = 0;
        loop {
            // Only atoms with a digit or an uppercase letter can start anything here; skip to
            // the next such byte 8 bytes at a time, then take the whole atom around it.
            i = next_digit_or_upper(t, i);
            if i >= n {
                break;
            }
            let mut start = i;
            while start > 0 && is(t[start - 1], ALNUM) {
                start -= 1;
            }
            i = start;
            let mut acc = 0;
            while i < n {
                let c = class(t[i]);
                if c & ALNUM == 0 {
                    break;
                }
                acc |= c;
                i += 1;
            }
            let kind = acc & ALNUM;
            if kind == DIGIT {
                if self.numeric {
                    i = self.numeric_chain(t, start, i, hints, spans);
                }
            } else if kind & UPPER != 0 && kind & LOWER == 0 {
                // An IBAN-shaped run is consumed even if its check digits are wrong, so that
                // its digit groups are not taken for a card number.
                if let Some((end, valid)) = iban_at(t, start, i) {
                    if valid && self.enabled.contains(Entity::Iban) {
                        spans.push(Span {
                            start,
                            end,
                            entity: Entity::Iban,
                        });
                    }
                    i = end;
                    continue;
                }
                if self.enabled.contains(Entity::AwsAccessKey) && is_aws_key_id(&t[start..i]) {
                    spans.push(Span {
                        start,
                        end: i,
                        entity: Entity::AwsAccessKey,
                    });
                }
            }
        }
    }

    /// Collects the numeric chain starting with the digit atom `start..end`, matches it, and
    /// returns where scanning resumes.
    fn numeric_chain(
        &self,
        t: &[u8],
        start: usize,
        end: usize,
        hints: Hints,
        spans: &mut Vec<Span>,
    ) -> usize {
        let n = t.len();
        let mut chain = Chain {
            start: [0; MAX_GROUPS],
            end: [0; MAX_GROUPS],
            len: 1,
        };
        chain.start[0] = start;
        chain.end[0] = end;
        let mut pos = end;
        let mut right_glued = false;
        loop {
            let mut k = pos;
            while k < n && k - pos < 3 && is(t[k], SEP) {
                k += 1;
            }
            if k == pos || k >= n {
                break;
            }
            let mut m = k;
            let mut acc = 0;
            while m < n && is(t[m], ALNUM) {
                acc |= class(t[m]);
                m += 1;
            }
            if acc & ALNUM != DIGIT || chain.len == MAX_GROUPS {
                right_glued = k - pos == 1 && is_tight(t[pos]) && acc & LETTER != 0;
                break;
            }
            chain.start[chain.len] = k;
            chain.end[chain.len] = m;
            chain.len += 1;
            pos = m;
        }
        // Nothing is shorter than 4 groups (IPv4) or 8 digits (phone); most numbers (ids,
        // amounts, years, times) stop here.
        let digits: usize = (0..chain.len).map(|i| chain.glen(i)).sum();
        if chain.len < 4 && digits < 8 {
            return pos;
        }
        // Groups glued to a word (and the groups tightly joined to those) are part of an
        // identifier: only the groups between them are matched.
        let tight_sep = |i: usize| matches!(chain.sep(t, i), [b] if is_tight(*b));
        let mut first = 0;
        if left_glued(t, start) {
            first = 1;
            while first < chain.len && tight_sep(first - 1) {
                first += 1;
            }
        }
        let mut last = chain.len;
        if right_glued {
            last -= 1;
            while last > first && tight_sep(last - 1) {
                last -= 1;
            }
        }
        if first >= last {
            return pos;
        }
        chain.len = last;
        let plus =
            first == 0 && start >= 1 && t[start - 1] == b'+' && (start < 2 || !is(t[start - 2], ALNUM));
        let paren = first == 0 && start >= 1 && t[start - 1] == b'(';
        let mut g = first;
        while g < chain.len {
            match self.match_at(t, &chain, g, plus && g == 0, paren && g == 0, hints) {
                Some((used, entity)) => {
                    let mut s = chain.start[g];
                    if entity == Entity::Phone && g == 0 && (plus || paren) {
                        s -= 1;
                    }
                    spans.push(Span {
                        start: s,
                        end: chain.end[g + used - 1],
                        entity,
                    });
                    g += used;
                }
                None => g += 1,
            }
        }
        pos
    }

    fn match_at(
        &self,
        t: &[u8],
        c: &Chain,
        g: usize,
        plus: bool,
        paren: bool,
        hints: Hints,
    ) -> Option<(usize, Entity)> {
        let on = |e| self.enabled.contains(e);
        if on(Entity::Ipv4)
            && let Some(used) = ipv4_at(t, c, g)
        {
            return Some((used, Entity::Ipv4));
        }
        if on(Entity::UsSsn)
            && let Some(used) = ssn_at(t, c, g, hints)
        {
            return Some((used, Entity::UsSsn));
        }
        if on(Entity::CreditCard)
            && !plus
            && let Some(used) = card_at(t, c, g)
        {
            return Some((used, Entity::CreditCard));
        }
        if on(Entity::Phone)
            && let Some(used) = phone_at(t, c, g, plus, paren, hints)
        {
            return Some((used, Entity::Phone));
        }
        None
    }
}

const MAX_GROUPS: usize = 8;

/// Digit groups `start[i]..end[i]`; separator `i` is `end[i]..start[i + 1]`.
struct Chain {
    start: [usize; MAX_GROUPS],
    end: [usize; MAX_GROUPS],
    len: usize,
}

impl Chain {
    fn group<'a>(&self, t: &'a [u8], i: usize) -> &'a [u8] {
        &t[self.start[i]..self.end[i]]
    }

    fn glen(&self, i: usize) -> usize {
        self.end[i] - self.start[i]
    }

    /// Separator between group `i` and `i + 1` (empty if there is none).
    fn sep<'a>(&self, t: &'a [u8], i: usize) -> &'a [u8] {
        if i + 1 < self.len {
            &t[self.end[i]..self.start[i + 1]]
        } else {
            &[]
        }
    }

    /// Whether group `i` is joined to the group before it by `sep`.
    fn joined_before(&self, t: &[u8], i: usize, sep: &[u8]) -> bool {
        i > 0 && self.sep(t, i - 1) == sep
    }

    /// Whether group `i` is joined to the group after it by `sep`.
    fn joined_after(&self, t: &[u8], i: usize, sep: &[u8]) -> bool {
        i + 1 < self.len && self.sep(t, i) == sep
    }

    /// The digits of groups `g..g + count` into `out`; returns how many (at most `out.len()`).
    fn digits(&self, t: &[u8], g: usize, count: usize, out: &mut [u8]) -> usize {
        let mut k = 0;
        for i in g..g + count {
            for &b in self.group(t, i) {
                if k < out.len() {
                    out[k] = b - b'0';
                    k += 1;
                }
            }
        }
        k
    }
}

/// Whether the number at `start` is glued by a single tight character to a word containing a
/// letter (`ORD-123…`, `build_2024.…`).
fn left_glued(t: &[u8], start: usize) -> bool {
    if start < 2 || !is_tight(t[start - 1]) {
        return false;
    }
    let mut j = start - 1;
    let mut letter = false;
    while j > 0 && is(t[j - 1], ALNUM) {
        letter |= is(t[j - 1], LETTER);
        j -= 1;
    }
    letter
}

fn digits_value(d: &[u8]) -> u32 {
    d.iter().fold(0u32, |v, &b| {
        v.saturating_mul(10).saturating_add(u32::from(b - b'0'))
    })
}

// ---------------------------------------------------------------------------------------------
// IPv4

fn ipv4_at(t: &[u8], c: &Chain, g: usize) -> Option<usize> {
    if g + 4 > c.len || c.joined_before(t, g, b".") || c.joined_after(t, g + 3, b".") {
        return None;
    }
    for i in g..g + 4 {
        if i < g + 3 && c.sep(t, i) != b"." {
            return None;
        }
        let grp = c.group(t, i);
        if grp.len() > 3 || (grp.len() > 1 && grp[0] == b'0') || digits_value(grp) > 255 {
            return None;
        }
    }
    (!after_version_word(t, c.start[g])).then_some(4)
}

/// Whether the word before `pos` (skipping one space or `:`/`=` and spaces) names a version,
/// as in `version 2.1.0.3`, `build: 10.0.0.1`.
fn after_version_word(t: &[u8], pos: usize) -> bool {
    let mut e = pos;
    while e > 0 && matches!(t[e - 1], b' ' | b':' | b'=') && pos - e < 3 {
        e -= 1;
    }
    if e == pos {
        return false;
    }
    let mut s = e;
    while s > 0 && is(t[s - 1], LETTER) && e - s < 10 {
        s -= 1;
    }
    let word = &t[s..e];
    [
        &b"version"[..],
        b"ver",
        b"v",
        b"build",
        b"release",
        b"firmware",
        b"fw",
        b"rev",
        b"revision",
        b"oid",
    ]
    .iter()
    .any(|w| word.eq_ignore_ascii_case(w))
}

// ---------------------------------------------------------------------------------------------
// US SSN

/// Area 001–899 except 666, group 01–99, serial 0001–9999.
pub fn valid_ssn(area: u32, group: u32, serial: u32) -> bool {
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn ssn_at(t: &[u8], c: &Chain, g: usize, hints: Hints) -> Option<usize> {
    if g + 3 <= c.len && c.glen(g) == 3 && c.glen(g + 1) == 2 && c.glen(g + 2) == 4 {
        let sep = c.sep(t, g);
        let ok_sep = sep == b"-" || (hints.ssn && sep == b" ");
        if ok_sep
            && c.sep(t, g + 1) == sep
            && !c.joined_before(t, g, sep)
            && !c.joined_after(t, g + 2, sep)
            && valid_ssn(
                digits_value(c.group(t, g)),
                digits_value(c.group(t, g + 1)),
                digits_value(c.group(t, g + 2)),
            )
        {
            return Some(3);
        }
    }
    if hints.ssn && c.len == 1 && c.glen(0) == 9 {
        let d = c.group(t, 0);
        if valid_ssn(
            digits_value(&d[..3]),
            digits_value(&d[3..5]),
            digits_value(&d[5..]),
        ) {
            return Some(1);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Payment cards

/// Group layouts of formatted card numbers.
const CARD_LAYOUTS: &[&[usize]] = &[
    &[4, 4, 4, 4],
    &[4, 4, 4, 4, 3],
    &[4, 6, 5],
    &[4, 6, 4],
    &[4, 4, 4, 3],
    &[4, 4, 4, 2],
    &[4, 4, 4, 4, 2],
];

fn card_at(t: &[u8], c: &Chain, g: usize) -> Option<usize> {
    let mut digits = [0u8; 19];
    let l = c.glen(g);
    if (13..=19).contains(&l) {
        let k = c.digits(t, g, 1, &mut digits);
        return is_card_number(&digits[..k]).then_some(1);
    }
    if l != 4 {
        return None;
    }
    let mut best: Option<usize> = None;
    for layout in CARD_LAYOUTS {
        let count = layout.len();
        if g + count > c.len {
            continue;
        }
        let sep = c.sep(t, g);
        if sep != b" " && sep != b"-" {
            return None;
        }
        let fits =
            (0..count).all(|j| c.glen(g + j) == layout[j] && (j + 1 == count || c.sep(t, g + j) == sep));
        if !fits || (sep == b"-" && (c.joined_before(t, g, sep) || c.joined_after(t, g + count - 1, sep))) {
            continue;
        }
        let k = c.digits(t, g, count, &mut digits);
        if is_card_number(&digits[..k]) && best.is_none_or(|b| count > b) {
            best = Some(count);
        }
    }
    best
}

/// 13–19 digits (values 0–9) with a plausible issuer prefix for that length and a valid Luhn
/// check digit.
pub fn is_card_number(d: &[u8]) -> bool {
    let len = d.len();
    if !(13..=19).contains(&len) || !plausible_iin(d) {
        return false;
    }
    luhn_valid(d)
}

pub fn luhn_valid(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let x = u32::from(x);
        sum += if i % 2 == 1 {
            let y = x * 2;
            if y > 9 { y - 9 } else { y }
        } else {
            x
        };
    }
    sum.is_multiple_of(10)
}

/// Issuer identification number ranges of the major networks, with their lengths.
pub fn plausible_iin(d: &[u8]) -> bool {
    let len = d.len();
    let p = |k: usize| d.iter().take(k).fold(0u32, |v, &x| v * 10 + u32::from(x));
    let (p2, p3, p4) = (p(2), p(3), p(4));
    let l16_19 = (16..=19).contains(&len);
    match d.first() {
        // Visa
        Some(4) => matches!(len, 13 | 16 | 19),
        // Mastercard, Maestro
        Some(5) => {
            ((51..=55).contains(&p2) && len == 16) || (matches!(p4, 5018 | 5020 | 5038 | 5893) && len >= 12)
        }
        // Mastercard 2-series, Mir
        Some(2) => ((2221..=2720).contains(&p4) && len == 16) || ((2200..=2204).contains(&p4) && l16_19),
        // Amex, Diners, JCB
        Some(3) => {
            (matches!(p2, 34 | 37) && len == 15)
                || (((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39)) && (14..=19).contains(&len))
                || ((3528..=3589).contains(&p4) && l16_19)
        }
        // Discover, UnionPay, Maestro
        Some(6) => {
            ((p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || p2 == 62) && l16_19)
                || (matches!(p4, 6304 | 6759 | 6761 | 6762 | 6763) && len >= 12)
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Phone numbers

/// NANP area code or exchange: `[2-9]XX`, not `N11`; area codes also not `N9X`.
fn nanp_part_ok(d: &[u8], area: bool) -> bool {
    d.len() == 3
        && (b'2'..=b'9').contains(&d[0])
        && !(d[1] == b'1' && d[2] == b'1')
        && !(area && d[1] == b'9')
}

fn nanp_digits_ok(d: &[u8]) -> bool {
    d.len() == 10 && nanp_part_ok(&d[..3], true) && nanp_part_ok(&d[3..6], false)
}

fn phone_at(t: &[u8], c: &Chain, g: usize, plus: bool, paren: bool, hints: Hints) -> Option<usize> {
    // E.164: `+` country code and number, 8–15 digits, groups separated by ` - . ( )`.
    if plus {
        let mut ascii = [0u8; 15];
        let mut total = 0;
        let mut used = 0;
        for i in g..c.len {
            let grp = c.group(t, i);
            // Parentheses only around the first groups (`+1 (415) …`, `+44 (0)20 …`).
            let sep_ok = i == g
                || matches!(c.sep(t, i - 1), b" " | b"-" | b".")
                || (i <= g + 2 && matches!(c.sep(t, i - 1), b" (" | b"(" | b") " | b")"));
            if total + grp.len() > 15 || !sep_ok {
                break;
            }
            ascii[total..total + grp.len()].copy_from_slice(grp);
            total += grp.len();
            used += 1;
        }
        if used == 0 || ascii[0] == b'0' {
            return None;
        }
        if ascii[0] == b'1' {
            // NANP: exactly +1 and 10 digits.
            let mut t2 = 0;
            for (k, i) in (g..g + used).enumerate() {
                t2 += c.glen(i);
                if t2 == 11 {
                    return nanp_digits_ok(&ascii[1..11]).then_some(k + 1);
                }
            }
            return None;
        }
        return (total >= 8).then_some(used);
    }
    // NANP with a leading 1: `1-415-555-2671`, `1 (415) 555-2671`.
    if g + 4 <= c.len
        && c.group(t, g) == b"1"
        && c.glen(g + 1) == 3
        && c.glen(g + 2) == 3
        && c.glen(g + 3) == 4
    {
        let s0 = c.sep(t, g);
        let s0_ok = matches!(s0, b"-" | b" " | b"." | b" (");
        if s0_ok && nanp_formatted(t, c, g + 1, s0.ends_with(b"("), false) {
            return Some(4);
        }
    }
    if g + 3 <= c.len
        && c.glen(g) == 3
        && c.glen(g + 1) == 3
        && c.glen(g + 2) == 4
        && nanp_formatted(t, c, g, paren, true)
    {
        return Some(3);
    }
    if hints.phone && c.len == 1 {
        let d = c.group(t, 0);
        if (d.len() == 10 && nanp_digits_ok(d)) || (d.len() == 11 && d[0] == b'1' && nanp_digits_ok(&d[1..]))
        {
            return Some(1);
        }
    }
    None
}

/// `NPA sep NXX sep XXXX` at groups `g..g+3` (lengths already checked). `standalone`: not
/// after a leading `1`, so it must not continue a `-`/`.` chain before it.
fn nanp_formatted(t: &[u8], c: &Chain, g: usize, paren: bool, standalone: bool) -> bool {
    let s1 = c.sep(t, g);
    let s2 = c.sep(t, g + 1);
    let seps_ok = if s1.starts_with(b")") {
        paren && matches!(s1, b")" | b") ") && matches!(s2, b"-" | b" " | b".")
    } else {
        !paren && matches!(s1, b"-" | b"." | b" ") && s1 == s2
    };
    if !seps_ok || c.joined_after(t, g + 2, b"-") || c.joined_after(t, g + 2, b".") {
        return false;
    }
    if standalone && !paren && (c.joined_before(t, g, b"-") || c.joined_before(t, g, b".")) {
        return false;
    }
    let mut d = [0u8; 10];
    d[..3].copy_from_slice(c.group(t, g));
    d[3..6].copy_from_slice(c.group(t, g + 1));
    d[6..].copy_from_slice(c.group(t, g + 2));
    nanp_digits_ok(&d)
}

// ---------------------------------------------------------------------------------------------
// IBAN

/// IBAN length by country (SWIFT IBAN registry).
fn iban_length(cc: [u8; 2]) -> Option<usize> {
    let len = match &cc {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BI" => 27,
        b"BR" => 29,
        b"BY" => 28,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DJ" => 27,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FK" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IQ" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"LY" => 25,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MN" => 20,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NI" => 28,
        b"NL" => 18,
        b"NO" => 15,
        b"OM" => 23,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"RU" => 33,
        b"SA" => 24,
        b"SC" => 31,
        b"SD" => 18,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"SO" => 23,
        b"ST" => 25,
        b"SV" => 28,
        b"TL" => 23,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        b"YE" => 30,
        _ => return None,
    };
    Some(len)
}

/// An IBAN starting at the atom `start..end`, compact (`DE89370400440532013000`) or in groups
/// of 4 separated by single spaces (`DE89 3704 0044 0532 0130 00`), with its country's
/// length: returns its end and whether the check digits are right.
fn iban_at(t: &[u8], start: usize, end: usize) -> Option<(usize, bool)> {
    let atom = &t[start..end];
    if atom.len() < 4
        || !atom[0].is_ascii_uppercase()
        || !atom[1].is_ascii_uppercase()
        || !atom[2].is_ascii_digit()
        || !atom[3].is_ascii_digit()
    {
        return None;
    }
    let want = iban_length([atom[0], atom[1]])?;
    let mut buf = [0u8; 34];
    if atom.len() == want {
        buf[..want].copy_from_slice(atom);
        return Some((end, iban_checksum_ok(&buf[..want])));
    }
    if atom.len() != 4 {
        return None;
    }
    buf[..4].copy_from_slice(atom);
    let mut have = 4;
    let mut pos = end;
    while have < want {
        // One space, then a group of up to 4 uppercase letters/digits.
        if pos + 1 >= t.len() || t[pos] != b' ' {
            return None;
        }
        let gs = pos + 1;
        let mut ge = gs;
        while ge < t.len() && is(t[ge], ALNUM) {
            ge += 1;
        }
        let grp = &t[gs..ge];
        if grp.is_empty()
            || grp.len() > 4
            || have + grp.len() > want
            || grp.iter().any(|b| b.is_ascii_lowercase())
        {
            return None;
        }
        if grp.len() < 4 && have + grp.len() != want {
            return None;
        }
        buf[have..have + grp.len()].copy_from_slice(grp);
        have += grp.len();
        pos = ge;
    }
    Some((pos, iban_checksum_ok(&buf[..want])))
}

/// ISO 13616 check: move the first 4 characters to the end, letters → 10..35, mod 97 == 1.
pub fn iban_checksum_ok(iban: &[u8]) -> bool {
    if iban.len() < 5 {
        return false;
    }
    let mut rem = 0u32;
    for &b in iban[4..].iter().chain(&iban[..4]) {
        rem = match b {
            b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(b - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

// ---------------------------------------------------------------------------------------------
// AWS access key ids

/// `AKIA` (long-term) or `ASIA` (temporary) and 16 uppercase letters/digits.
pub fn is_aws_key_id(atom: &[u8]) -> bool {
    atom.len() == 20
        && (atom.starts_with(b"AKIA") || atom.starts_with(b"ASIA"))
        && atom[4..]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

// ---------------------------------------------------------------------------------------------
// E-mail

/// The e-mail address around the `@` at `at`, as `(start, end)`.
fn email_at(t: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut s = at;
    while s > 0 && at - s < 64 && is(t[s - 1], LOCAL) {
        s -= 1;
    }
    while s < at && matches!(t[s], b'.' | b'-' | b'+') {
        s += 1;
    }
    if s == at || t[at - 1] == b'.' {
        return None;
    }
    let mut e = at + 1;
    while e < t.len() && e - at <= 253 && is(t[e], DOMAIN) {
        e += 1;
    }
    while e > at + 1 && matches!(t[e - 1], b'.' | b'-') {
        e -= 1;
    }
    let domain = &t[at + 1..e];
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in domain.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 63 || label[0] == b'-' || label[label.len() - 1] == b'-' {
            return None;
        }
        labels += 1;
        last = label;
    }
    if labels < 2 || last.len() < 2 || !last.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    // A local part with a `..` is not an address.
    if t[s..at].windows(2).any(|w| w == b"..") {
        return None;
    }
    Some((s, e))
}

// ---------------------------------------------------------------------------------------------
// IPv6

/// The IPv6 candidate around the `:` at `colon`: `(start, end, is_address)`.
fn ipv6_around(t: &[u8], colon: usize) -> (usize, usize, bool) {
    // An address is at most 45 characters; runs are followed at most 64 bytes either way, so
    // that a long run of colons and hex digits costs linear time, and is not an address.
    const MAX_RUN: usize = 64;
    let mut s = colon;
    while s > 0 && is(t[s - 1], V6) && colon - s < MAX_RUN {
        s -= 1;
    }
    let mut e = colon + 1;
    while e < t.len() && is(t[e], V6) && e - colon < MAX_RUN {
        e += 1;
    }
    let run_end = e;
    if (s > 0 && is(t[s - 1], ALNUM | V6)) || (e < t.len() && is(t[e], ALNUM | V6)) {
        return (s, run_end, false);
    }
    // A leading `.` or trailing `.`/`:` belongs to the sentence, not the address.
    while s < colon && t[s] == b'.' {
        s += 1;
    }
    while e > colon && t[e - 1] == b'.' {
        e -= 1;
    }
    if e >= 2 && t[e - 1] == b':' && t[e - 2] != b':' {
        e -= 1;
    }
    let cand = &t[s..e];
    let colons = cand.iter().filter(|&&b| b == b':').count();
    let hex = cand.iter().filter(|&&b| is(b, HEX)).count();
    // Eight groups, or fewer with a `::`.
    let compressed = cand.windows(2).any(|w| w == b"::");
    if !(2..=7).contains(&colons) || hex < 4 || (colons < 7 && !compressed) {
        return (s, run_end, false);
    }
    let ok = std::str::from_utf8(cand)
        .ok()
        .and_then(|s| s.parse::<Ipv6Addr>().ok())
        .is_some();
    (s, if ok { e } else { run_end }, ok)
}

// ---------------------------------------------------------------------------------------------
// JWT

/// A JWT starting at `p` (`eyJ…`): three base64url segments separated by `.` (the signature
/// may be empty, for `alg: none`), whose header decodes to a JSON object with an `alg` member.
/// Returns its end.
fn jwt_at(t: &[u8], p: usize) -> Option<usize> {
    if p > 0 && (is(t[p - 1], B64URL) || t[p - 1] == b'.') {
        return None;
    }
    let seg = |from: usize| {
        let mut e = from;
        while e < t.len() && is(t[e], B64URL) {
            e += 1;
        }
        e
    };
    let h_end = seg(p);
    // A JOSE header is short; a longer run is not one (and is not decoded).
    if h_end - p < 10 || h_end - p > 4096 || t.get(h_end) != Some(&b'.') {
        return None;
    }
    let p_end = seg(h_end + 1);
    if p_end - (h_end + 1) < 2 || t.get(p_end) != Some(&b'.') {
        return None;
    }
    let s_end = seg(p_end + 1);
    let header = base64url_decode(&t[p..h_end])?;
    let value: serde_json::Value = serde_json::from_slice(&header).ok()?;
    value.get("alg")?.as_str()?;
    Some(s_end)
}

fn base64url_decode(s: &[u8]) -> Option<Vec<u8>> {
    let val = |b: u8| -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => u32::from(b - b'A'),
            b'a'..=b'z' => u32::from(b - b'a') + 26,
            b'0'..=b'9' => u32::from(b - b'0') + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        })
    };
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for &b in s {
        buf = (buf << 6) | val(b)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// High-entropy secrets

fn secrets(t: &[u8], spans: &mut Vec<Span>) {
    let n = t.len();
    // Skip search: a token of at least SECRET_MIN_LEN bytes starting at or after `i` covers
    // byte `i + SECRET_MIN_LEN - 1`, so probe that byte first. Invariant: `i == 0` or
    // `t[i - 1]` is not a token byte.
    let mut i = 0;
    while i + SECRET_MIN_LEN <= n {
        let probe = i + SECRET_MIN_LEN - 1;
        if !is(t[probe], TOKEN) {
            i = probe + 1;
            continue;
        }
        let mut s = probe;
        while s > i && is(t[s - 1], TOKEN) {
            s -= 1;
        }
        i = probe + 1;
        while i < n && is(t[i], TOKEN) {
            i += 1;
        }
        while i < n && t[i] == b'=' {
            i += 1;
        }
        if i - s >= SECRET_MIN_LEN && !is_integrity_hash(&t[s..i]) && is_high_entropy_secret(&t[s..i]) {
            spans.push(Span {
                start: s,
                end: i,
                entity: Entity::Secret,
            });
        }
    }
}

/// Subresource-integrity style digests (`sha256-…`, `sha512-…`) are hashes, not secrets.
fn is_integrity_hash(tok: &[u8]) -> bool {
    [&b"sha1-"[..], b"sha256-", b"sha384-", b"sha512-", b"md5-"]
        .iter()
        .any(|p| tok.starts_with(p))
}

/// The rule for high-entropy secrets (API keys, passwords, private tokens), deliberately
/// conservative:
///
/// - a token of [`SECRET_MIN_LEN`]..=[`SECRET_MAX_LEN`] characters from `A-Z a-z 0-9 + / _ -`
///   (plus trailing `=` padding, not counted), delimited by any other byte;
/// - containing at least one uppercase letter, one lowercase letter and one digit (so hex
///   digests, UUIDs, upper-case ids and plain words never match);
/// - at most 3 `/` (a path is not a secret) and no run of 4 identical characters;
/// - not an integrity digest (`sha256-…`, `sha512-…`);
/// - Shannon entropy of its characters ≥ [`SECRET_MIN_ENTROPY`] bits per character (random
///   base62/base64 of this length scores ≈ 4.6–5.2; English, camelCase identifiers and
///   base64 of text score below ≈ 4.2).
pub fn is_high_entropy_secret(tok: &[u8]) -> bool {
    let mut tok = tok;
    while let [rest @ .., b'='] = tok {
        tok = rest;
    }
    if !(SECRET_MIN_LEN..=SECRET_MAX_LEN).contains(&tok.len()) {
        return false;
    }
    let mut counts = [0u16; 128];
    let mut acc = 0;
    let mut slashes = 0;
    let mut run = 1;
    let mut prev = 0u8;
    for &b in tok {
        acc |= class(b);
        counts[(b & 0x7f) as usize] += 1;
        slashes += usize::from(b == b'/');
        run = if b == prev { run + 1 } else { 1 };
        if run >= 4 {
            return false;
        }
        prev = b;
    }
    if acc & ALNUM != ALNUM || slashes > 3 {
        return false;
    }
    shannon_entropy(&counts, tok.len()) >= SECRET_MIN_ENTROPY
}

/// Shannon entropy in bits per symbol from symbol counts.
pub fn shannon_entropy(counts: &[u16], total: usize) -> f64 {
    let total = total as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / total;
            -p * p.log2()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------

fn resolve_overlaps(spans: &mut Vec<Span>) {
    if spans.len() < 2 {
        return;
    }
    spans.sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut kept = 0;
    let mut last_end = 0;
    for r in 0..spans.len() {
        let s = spans[r];
        if kept > 0 && s.start < last_end {
            continue;
        }
        spans[kept] = s;
        kept += 1;
        last_end = s.end;
    }
    spans.truncate(kept);
}
