//! A stable, dependency-free driver for the fuzz targets: every target runs
//! its seed corpus, then inputs mutated from it by a small seeded mutator
//! (bit flips, byte sets, interesting bytes and tokens, deletions,
//! truncations, splices, duplications; for JSON a mutation of one value of
//! the parsed document; for JWTs a mutation of one decoded part, re-encoded).
//! Not coverage-guided: `cargo +nightly fuzz run <target>` is (see `fuzz/`).
//!
//! By default each target runs a fixed number of inputs from a fixed RNG
//! seed, so `cargo test --workspace` is deterministic and quick. Environment:
//! - `TOLLGATE_FUZZ_SECONDS=N`: run each target for N seconds instead
//!   (random RNG seed, printed; best with `--release -- --nocapture`);
//! - `TOLLGATE_FUZZ_TARGET=a,b`: run only these targets;
//! - `TOLLGATE_FUZZ_SEED=N`: the RNG seed (replays a timed run).
//!
//! A crashing input is printed (escaped and hex) and written to the
//! temporary directory, where `cargo +nightly fuzz run <target> <file>`
//! replays it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};
use tollgate_core::{Scope, SpiffeId};
use tollgate_identity::{SigningKeyPair, TaskGrant, Tokens};

/// Longest input the mutator grows (the seeds are far shorter).
const MAX_LEN: usize = 16 * 1024;

/// Bytes that tend to matter to parsers of text, JSON, YAML, URLs and JWTs.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x09, 0x0a, 0x0d, 0x1b, b' ', b'"', b'#', b'%', b'&', b'\'', b'*', b'+', b',',
    b'-', b'.', b'/', b'0', b'1', b'9', b':', b';', b'=', b'?', b'@', b'A', b'Z', b'[', b'\\',
    b']', b'_', b'a', b'z', b'{', b'|', b'}', b'~', 0x7f, 0x80, 0xbf, 0xc0, 0xe2, 0xef, 0xf0, 0xff,
];

/// Tokens every target's mutator may insert.
const COMMON_DICT: &[&str] = &[
    "\u{202e}",
    "\u{200b}",
    "\u{feff}",
    "\u{0130}",
    "\u{212a}",
    "é",
    "例",
    "\\u0000",
    "\\ud800",
    "\\\"",
    "null",
    "true",
    "false",
    "-0",
    "1e309",
    "-1e309",
    "0.1e-400",
    "18446744073709551616",
    "-9223372036854775809",
    "9007199254740993",
    "[]",
    "{}",
    "\"\"",
    "::",
    "//",
    "..",
    "%00",
    "%2e",
    "%2F",
    "xn--",
    "http://",
    "https://",
    "spiffe://",
    "[::1]",
    "127.0.0.1",
    "acme.test",
    "partner.test",
];

/// A target's seed corpus.
type Seeds = fn() -> Vec<Vec<u8>>;

/// What a target is run on and with.
struct Target {
    run: crate::Target,
    /// Inputs per default (deterministic) run: the seeds count towards it.
    iterations: u64,
    seeds: Seeds,
    dict: &'static [&'static str],
    shape: Shape,
}

/// Which structure-aware mutations apply, besides the byte-level ones.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Text,
    Lines,
    Json,
    Jwt,
}

fn target(name: &str) -> Target {
    let Some(&(_, run)) = crate::TARGETS.iter().find(|(n, _)| *n == name) else {
        panic!("no fuzz target {name:?}");
    };
    let (iterations, seeds, dict, shape): (u64, Seeds, _, _) = match name {
        "token_verify" => (4_000, token_seeds, TOKEN_DICT, Shape::Jwt),
        "spiffe_id" => (40_000, spiffe_seeds, SPIFFE_DICT, Shape::Text),
        "catalog_yaml" => (6_000, catalog_seeds, YAML_DICT, Shape::Lines),
        "trust_bundle" => (12_000, bundle_seeds, JWK_DICT, Shape::Json),
        "action_request" => (6_000, action_seeds, ACTION_DICT, Shape::Json),
        "authzen_body" => (15_000, authzen_seeds, ACTION_DICT, Shape::Json),
        "mcp_tool_arguments" => (20_000, mcp_seeds, URL_DICT, Shape::Json),
        other => panic!("fuzz target {other:?} has no seeds in the harness"),
    };
    Target {
        run,
        iterations,
        seeds,
        dict,
        shape,
    }
}

// ---------------------------------------------------------------- driver

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Run one target as the environment says; panic (failing the test) on the
/// first input that crashes it.
fn fuzz(name: &str) {
    if let Some(only) = env("TOLLGATE_FUZZ_TARGET") {
        let known: Vec<&str> = crate::TARGETS.iter().map(|(n, _)| *n).collect();
        for n in only.split(',').map(str::trim) {
            assert!(
                known.contains(&n),
                "TOLLGATE_FUZZ_TARGET: no target {n:?}; targets: {known:?}"
            );
        }
        if !only.split(',').any(|n| n.trim() == name) {
            return;
        }
    }
    let t = target(name);
    let seconds = env("TOLLGATE_FUZZ_SECONDS").map(|s| {
        s.trim()
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("TOLLGATE_FUZZ_SECONDS={s:?}: {e}"))
    });
    let rng_seed = match env("TOLLGATE_FUZZ_SEED") {
        Some(s) => s
            .trim()
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("TOLLGATE_FUZZ_SEED={s:?}: {e}")),
        // A fixed seed per target keeps the default run reproducible.
        None if seconds.is_none() => name.bytes().fold(0x746f_6c6c_6761_7465, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    let seeds = (t.seeds)();
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let mut m = Mutator::new(rng_seed, &seeds, t.dict, t.shape);
    let start = Instant::now();
    let deadline = seconds.map(|s| start + Duration::from_secs(s));
    let mut runs: u64 = 0;
    let mut lengths: u64 = 0;
    loop {
        let done = match deadline {
            Some(d) => runs >= seeds.len() as u64 && runs.is_multiple_of(16) && Instant::now() >= d,
            None => runs >= t.iterations.max(seeds.len() as u64),
        };
        if done {
            break;
        }
        let input = match seeds.get(runs as usize) {
            Some(seed) => seed.clone(),
            None => m.next_input(),
        };
        if catch_unwind(AssertUnwindSafe(|| (t.run)(&input))).is_err() {
            report_crash(name, rng_seed, runs, &input);
        }
        runs += 1;
        lengths += input.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fuzz {name}: {runs} inputs ({} seeds, mean {} bytes) in {secs:.1}s, {:.0}/s, rng seed {rng_seed}, no crash",
        seeds.len(),
        lengths / runs.max(1),
        runs as f64 / secs.max(1e-9),
    );
}

fn report_crash(name: &str, rng_seed: u64, run: u64, input: &[u8]) -> ! {
    let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
    let file = std::env::temp_dir().join(format!("tollgate-fuzz-{name}-{rng_seed}-{run}"));
    let saved = match std::fs::write(&file, input) {
        Ok(()) => format!("saved to {}", file.display()),
        Err(e) => format!("not saved ({e})"),
    };
    panic!(
        "fuzz target {name} crashed on input {run} (rng seed {rng_seed}, {} bytes, {saved}):\n  text: {:?}\n  hex:  {hex}",
        input.len(),
        String::from_utf8_lossy(input),
    );
}

// ---------------------------------------------------------------- mutator

struct Mutator<'a> {
    rng: StdRng,
    seeds: &'a [Vec<u8>],
    dict: Vec<&'a [u8]>,
    shape: Shape,
    /// For `Shape::Jwt`: the decoded header, payload and signature of every
    /// seed that is a three-part token.
    jwt_parts: Vec<[Vec<u8>; 3]>,
}

impl<'a> Mutator<'a> {
    fn new(seed: u64, seeds: &'a [Vec<u8>], dict: &'a [&'a str], shape: Shape) -> Self {
        let jwt_parts = if shape == Shape::Jwt {
            seeds
                .iter()
                .filter_map(|s| {
                    let s = std::str::from_utf8(s).ok()?;
                    let mut it = s.split('.');
                    let parts = [
                        b64url_decode(it.next()?)?,
                        b64url_decode(it.next()?)?,
                        b64url_decode(it.next()?)?,
                    ];
                    it.next().is_none().then_some(parts)
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            rng: StdRng::seed_from_u64(seed),
            seeds,
            dict: COMMON_DICT
                .iter()
                .chain(dict)
                .map(|s| s.as_bytes())
                .collect(),
            shape,
            jwt_parts,
        }
    }

    fn next_input(&mut self) -> Vec<u8> {
        let seed = self.seeds[self.rng.gen_range(0..self.seeds.len())].clone();
        match self.shape {
            Shape::Json if self.rng.gen_bool(0.5) => {
                if let Ok(mut v) = serde_json::from_slice::<Value>(&seed) {
                    for _ in 0..self.stack() {
                        self.mutate_json(&mut v);
                    }
                    let mut out = serde_json::to_vec(&v).unwrap_or(seed);
                    if self.rng.gen_ratio(1, 8) {
                        self.mutate_bytes(&mut out);
                    }
                    return out;
                }
                self.mutated(seed)
            }
            Shape::Jwt if self.rng.gen_bool(0.5) && !self.jwt_parts.is_empty() => {
                let mut parts = self.jwt_parts[self.rng.gen_range(0..self.jwt_parts.len())].clone();
                for _ in 0..self.stack() {
                    let i = self.rng.gen_range(0..3);
                    match serde_json::from_slice::<Value>(&parts[i]) {
                        Ok(mut v) if self.rng.gen_bool(0.7) => {
                            self.mutate_json(&mut v);
                            parts[i] = serde_json::to_vec(&v).unwrap_or_default();
                        }
                        _ => self.mutate_bytes(&mut parts[i]),
                    }
                }
                let token = parts
                    .iter()
                    .map(|p| b64url_encode(p))
                    .collect::<Vec<_>>()
                    .join(".");
                token.into_bytes()
            }
            _ => self.mutated(seed),
        }
    }

    /// How many mutations to stack: mostly one, sometimes up to eight.
    fn stack(&mut self) -> u32 {
        match self.rng.gen_range(0..8) {
            0..=3 => 1,
            4 | 5 => 2,
            6 => 4,
            _ => 8,
        }
    }

    fn mutated(&mut self, mut input: Vec<u8>) -> Vec<u8> {
        for _ in 0..self.stack() {
            self.mutate_bytes(&mut input);
        }
        input
    }

    fn pos(&mut self, len: usize) -> usize {
        self.rng.gen_range(0..=len)
    }

    fn mutate_bytes(&mut self, b: &mut Vec<u8>) {
        let ops = if self.shape == Shape::Lines { 12 } else { 10 };
        match self.rng.gen_range(0..ops) {
            // flip a bit
            0 if !b.is_empty() => {
                let i = self.rng.gen_range(0..b.len());
                b[i] ^= 1 << self.rng.gen_range(0..8);
            }
            // set a byte: random or interesting
            1 if !b.is_empty() => {
                let i = self.rng.gen_range(0..b.len());
                b[i] = if self.rng.gen_bool(0.5) {
                    self.rng.gen()
                } else {
                    INTERESTING[self.rng.gen_range(0..INTERESTING.len())]
                };
            }
            // insert interesting bytes
            2 => {
                let i = self.pos(b.len());
                let n = self.rng.gen_range(1..=4);
                for _ in 0..n {
                    b.insert(i, INTERESTING[self.rng.gen_range(0..INTERESTING.len())]);
                }
            }
            // delete a range
            3 if !b.is_empty() => {
                let i = self.rng.gen_range(0..b.len());
                let n = self.rng.gen_range(1..=(b.len() - i).min(32));
                b.drain(i..i + n);
            }
            // truncate
            4 => {
                let i = self.pos(b.len());
                b.truncate(i);
            }
            // splice: our head, another seed's tail
            5 => {
                let other = &self.seeds[self.rng.gen_range(0..self.seeds.len())];
                let i = self.pos(b.len());
                let j = self.rng.gen_range(0..=other.len());
                b.truncate(i);
                b.extend_from_slice(&other[j..]);
            }
            // insert a chunk of another seed
            6 => {
                let other = &self.seeds[self.rng.gen_range(0..self.seeds.len())];
                let j = self.rng.gen_range(0..=other.len());
                let k = self.rng.gen_range(j..=other.len().min(j + 64));
                let i = self.pos(b.len());
                b.splice(i..i, other[j..k].iter().copied());
            }
            // insert or overwrite with a dictionary token
            7 | 8 => {
                let tok = self.dict[self.rng.gen_range(0..self.dict.len())];
                let i = self.pos(b.len());
                if self.rng.gen_bool(0.5) {
                    b.splice(i..i, tok.iter().copied());
                } else {
                    let end = (i + tok.len()).min(b.len());
                    b.splice(i..end, tok.iter().copied());
                }
            }
            // duplicate a chunk of itself
            9 if !b.is_empty() => {
                let j = self.rng.gen_range(0..b.len());
                let k = self.rng.gen_range(j..=b.len().min(j + 64));
                let chunk = b[j..k].to_vec();
                let i = self.pos(b.len());
                b.splice(i..i, chunk);
            }
            // lines: duplicate, delete or swap one (YAML structure)
            10 | 11 => {
                let mut lines: Vec<Vec<u8>> =
                    b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
                let i = self.rng.gen_range(0..lines.len());
                let j = self.rng.gen_range(0..lines.len());
                match self.rng.gen_range(0..3) {
                    0 => {
                        let l = lines[i].clone();
                        lines.insert(j, l);
                    }
                    1 => {
                        lines.remove(i);
                    }
                    _ => lines.swap(i, j),
                }
                *b = lines.join(&b'\n');
            }
            _ => {
                let i = self.pos(b.len());
                let byte = self.rng.gen();
                b.insert(i, byte);
            }
        }
        b.truncate(MAX_LEN);
    }

    /// Mutate one node of a JSON document.
    fn mutate_json(&mut self, v: &mut Value) {
        let mut pointers = Vec::new();
        json_pointers(v, String::new(), &mut pointers);
        let p = pointers[self.rng.gen_range(0..pointers.len())].clone();
        let q = &pointers[self.rng.gen_range(0..pointers.len())];
        let donor = v.pointer(q).cloned().unwrap_or(Value::Null);
        let Some(node) = v.pointer_mut(&p) else {
            return;
        };
        match self.rng.gen_range(0..8) {
            // mutate a string (or a number's text) byte-wise
            0..=2 => {
                let mut bytes = match &*node {
                    Value::String(s) => s.clone().into_bytes(),
                    other => other.to_string().into_bytes(),
                };
                self.mutate_bytes(&mut bytes);
                *node = Value::String(String::from_utf8_lossy(&bytes).into_owned());
            }
            // a value of another kind
            3 => {
                let choices = [
                    Value::Null,
                    json!(true),
                    json!(0),
                    json!(-1),
                    json!(u64::MAX),
                    json!(i64::MIN),
                    json!(1.5e308),
                    json!(""),
                    json!([]),
                    json!({}),
                    json!("a".repeat(self.rng.gen_range(0..3000))),
                ];
                *node = choices[self.rng.gen_range(0..choices.len())].clone();
            }
            // a dictionary token as a string
            4 => {
                let tok = self.dict[self.rng.gen_range(0..self.dict.len())];
                *node = Value::String(String::from_utf8_lossy(tok).into_owned());
            }
            // another node of the document (splice within)
            5 => *node = donor,
            // drop a member or element
            6 => match node {
                Value::Object(o) if !o.is_empty() => {
                    let k = self.rng.gen_range(0..o.len());
                    let key = o.keys().nth(k).cloned().unwrap_or_default();
                    o.remove(&key);
                }
                Value::Array(a) if !a.is_empty() => {
                    let i = self.rng.gen_range(0..a.len());
                    a.remove(i);
                }
                _ => *node = Value::Null,
            },
            // add a member (a dictionary key or a mutated copy of a key) or element
            _ => match node {
                Value::Object(o) => {
                    let key = if o.is_empty() || self.rng.gen_bool(0.5) {
                        let tok = self.dict[self.rng.gen_range(0..self.dict.len())];
                        String::from_utf8_lossy(tok).into_owned()
                    } else {
                        let k = self.rng.gen_range(0..o.len());
                        let mut key = o.keys().nth(k).cloned().unwrap_or_default().into_bytes();
                        self.mutate_bytes(&mut key);
                        String::from_utf8_lossy(&key).into_owned()
                    };
                    o.insert(key, donor);
                }
                Value::Array(a) => a.push(donor),
                other => *other = json!([donor]),
            },
        }
    }
}

/// The JSON pointer of every node of `v` (the root is "").
fn json_pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, c) in o {
                json_pointers(
                    c,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                json_pointers(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64url without padding, as JWTs carry their parts.
fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(B64URL[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = B64URL.iter().position(|&x| x == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xff) as u8);
        }
    }
    Some(out)
}

// ---------------------------------------------------------------- seeds

const TOKEN_DICT: &[&str] = &[".", "eyJ", "e30", "AAAA", "-_", "=", "Bearer "];
const SPIFFE_DICT: &[&str] = &["/", "/agent", "/.", "/..", "A", "-", "_", " ", "%20"];
const YAML_DICT: &[&str] = &[
    "\n  ",
    "- ",
    ": ",
    ":\n",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "!!binary ",
    "~",
    "|\n",
    ">-\n",
    "'",
    "---\n",
    "...\n",
    "? ",
    "tier: destructive",
    "tier: read",
    "risk: -1",
    "risk: 9223372036854775807",
    "compensation: edr.isolate_host",
    "resource_attributes: {domain: {host_of: url}}",
    "resource_attributes: {d: {argument: a, host_of: b}}",
    "blast_radius: organization",
    "sensitive_parameters: [x]",
    "labels: []",
];
const JWK_DICT: &[&str] = &[
    "\"kty\"",
    "\"OKP\"",
    "\"EC\"",
    "\"RSA\"",
    "\"oct\"",
    "\"crv\"",
    "\"Ed25519\"",
    "\"P-256\"",
    "\"P-384\"",
    "\"x\"",
    "\"y\"",
    "\"n\"",
    "\"e\"",
    "\"kid\"",
    "\"use\"",
    "\"x509-svid\"",
    "\"jwt-svid\"",
    "\"alg\"",
    "AQAB",
    "AA",
];
const ACTION_DICT: &[&str] = &[
    "\"type\"",
    "\"id\"",
    "\"Host\"",
    "\"Url\"",
    "\"Secret\"",
    "\"Account\"",
    "\"LogStream\"",
    "\"SiemIndex\"",
    "\"Tollgate::Host\"",
    "\"attributes\"",
    "\"properties\"",
    "\"environment\"",
    "\"domain\"",
    "\"privileged\"",
    "\"__entity\"",
    "\"__extn\"",
    "{\"__entity\":{\"type\":\"Host\",\"id\":\"x\"}}",
    "{\"__extn\":{\"fn\":\"ip\",\"arg\":\"10.0.0.1\"}}",
    "edr.isolate_host",
    "http.post",
    "vault.rotate_secret",
    "\"agent\"",
    "\"task_id\"",
    "deny_on_first_deny",
    "permit_on_first_permit",
];
const URL_DICT: &[&str] = &[
    "\"url\"",
    "\"host\"",
    "http://",
    "HTTPS://",
    "ws://",
    "ftp://",
    "file://",
    "sftp://",
    "data:",
    "javascript:",
    "@",
    ":@",
    "user:pass@",
    ":443",
    ":65536",
    "%2e",
    "%41",
    "%00",
    "%zz",
    "\\\\",
    "\\\\/",
    "/\\\\",
    "?",
    "#",
    "[",
    "]",
    "[::ffff:127.0.0.1]",
    "[v1.x]",
    "0x7f.1",
    "0177.0.0.1",
    "4294967295",
    "1.2.3.4.",
    "xn--nxasmq6b",
    "xn--a",
    "ＡＢＣ",
    "。",
    "\u{00ad}",
    "ß",
    "\t",
    "\\n",
    "pastebin.com",
];

fn strings(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

const AGENT: &str = "spiffe://acme.test/agent/ir-responder/i-1";
/// The verifiers' clock in `token_verify`.
const NOW: i64 = 1_800_000_000;

/// Tokens in every shape a verifier meets: Tollgate's own but expired, a
/// foreign key's, a foreign signature under Tollgate's header (so parsing
/// reaches the signature check), other algorithms, other trust domains.
fn token_seeds() -> Vec<Vec<u8>> {
    let real = crate::tokens();
    let (key, _) = SigningKeyPair::generate().expect("key");
    let foreign = Tokens::new(key, "tollgate", "acme.test", "tollgate");
    let agent = SpiffeId::parse(AGENT).expect("agent id");
    let partner = SpiffeId::parse("spiffe://partner.test/agent/x/1").expect("partner id");
    let grant = |iat: i64| TaskGrant {
        sub: AGENT.into(),
        task_id: "task_0190".into(),
        incident_id: "INC-4711".into(),
        scope: Scope {
            actions: Some(["edr.isolate_host".to_string()].into()),
            resources: Some(["Host::web-1".to_string()].into()),
        },
        iat,
        exp: iat + 900,
        jti: "cred_0190".into(),
        act: Some(tollgate_identity::Actor {
            sub: "spiffe://acme.test/agent/lead/i-0".into(),
            act: None,
        }),
    };
    let past = NOW - 100_000;
    let real_svid = real
        .issue_svid(&agent, past, 300, "svid_1".into())
        .expect("svid")
        .0;
    let real_cred = real
        .issue_task_credential(grant(past))
        .expect("credential")
        .0;
    let foreign_svid = foreign
        .issue_svid(&agent, NOW - 10, 300, "svid_2".into())
        .expect("svid")
        .0;
    let foreign_cred = foreign
        .issue_task_credential(grant(NOW - 10))
        .expect("credential")
        .0;
    let partner_svid = foreign
        .issue_svid(&partner, NOW - 10, 300, "svid_3".into())
        .expect("svid")
        .0;
    // Tollgate's header over a foreign payload and signature.
    let graft = |real: &str, foreign: &str| {
        let head = real.split('.').next().unwrap_or_default();
        let rest = foreign.split_once('.').map_or("", |(_, r)| r);
        format!("{head}.{rest}")
    };
    let payload = |t: &str| t.split('.').nth(1).unwrap_or_default().to_string();
    let kid = real.jwks()["keys"][0]["kid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let hdr = |h: Value| b64url_encode(h.to_string().as_bytes());
    let mut seeds = vec![
        real_svid.clone(),
        real_cred.clone(),
        foreign_svid.clone(),
        foreign_cred.clone(),
        partner_svid,
        graft(&real_svid, &foreign_svid),
        graft(&real_cred, &foreign_cred),
        format!(
            "{}.{}.",
            hdr(json!({"alg": "none", "typ": "JWT"})),
            payload(&foreign_svid)
        ),
        format!(
            "{}.{}.{}",
            hdr(json!({"alg": "HS256", "kid": kid, "typ": "JWT"})),
            payload(&foreign_svid),
            b64url_encode(&[7; 32])
        ),
        format!(
            "{}.{}.{}",
            hdr(json!({"alg": "RS256", "kid": kid})),
            payload(&foreign_cred),
            b64url_encode(&[1; 256])
        ),
    ];
    seeds.extend(["", ".", "..", "a.b.c", "Bearer x.y.z"].map(String::from));
    seeds.into_iter().map(String::into_bytes).collect()
}

fn spiffe_seeds() -> Vec<Vec<u8>> {
    strings(&[
        AGENT,
        "spiffe://acme.test/agent/ir-responder/i-1/sub-agent/2",
        "spiffe://partner.test/ns/prod/sa/deployer",
        "spiffe://a/b",
        "spiffe://my-domain_1.example.org/A.b-C_d",
        "spiffe://acme.test",
        "spiffe://acme.test/",
        "spiffe://acme.test//x",
        "spiffe://acme.test/./x",
        "spiffe://Acme.test/x",
        "spiffe://acme.test/x%20y",
        "SPIFFE://acme.test/x",
        "spiffe://acme.test:443/x",
        "spiffe://user@acme.test/x",
    ])
}

fn catalog_seeds() -> Vec<Vec<u8>> {
    strings(&[
        include_str!("../../../examples/incident-response/catalog.yaml"),
        "operations: {}\n",
        "operations:\n  a.b:\n    description: d\n    tier: read\n    resource_types: [Host]\n",
        "operations:\n  edr.isolate_host:\n    description: isolate\n    tier: contain\n    resource_types: [Host]\n    reversible: true\n    compensation: edr.release_host\n  edr.release_host:\n    description: release\n    tier: contain\n    resource_types: [Host]\n    reversible: true\n    compensation: edr.isolate_host\n",
        "operations:\n  http.post:\n    description: post\n    tier: change\n    resource_types: [Url, Host]\n    risk: 40\n    tool: {server: s, name: http_post, resource_argument: url, resource_type: Url, resource_attributes: {domain: {host_of: url}, env: {argument: environment}}}\n    labels: [egress-external]\n    sensitive_parameters: [body]\n    blast_radius: organization\n",
        "operations: &a\n  x.y: {description: d, tier: destructive, resource_types: [T], reversible: false}\n",
    ])
}

fn bundle_seeds() -> Vec<Vec<u8>> {
    let (key, _) = SigningKeyPair::generate().expect("key");
    let okp = key.public_jwk().clone();
    let ec = json!({"kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "jwt-svid",
        "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
        "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"});
    let rsa = json!({"kty": "RSA", "kid": "rsa-1", "use": "jwt-svid", "alg": "RS256", "e": "AQAB",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
    let x509 = json!({"kty": "EC", "crv": "P-256", "use": "x509-svid", "x5c": ["MIIB"]});
    [
        json!({"keys": [okp]}),
        json!({"keys": [ec]}),
        json!({"keys": [rsa]}),
        json!({"keys": [x509, okp, ec, rsa], "spiffe_sequence": 1, "spiffe_refresh_hint": 300}),
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": "AAAA"}]}),
        json!({"keys": []}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

fn action_seeds() -> Vec<Vec<u8>> {
    [
        json!({"action": "edr.read_alerts", "resource": {"type": "Host", "id": "web-1"}}),
        json!({"action": "siem.query", "resource": {"type": "SiemIndex", "id": "main"},
            "parameters": {"query": "beacon", "window_minutes": 60}}),
        json!({"action": "edr.isolate_host", "resource": {"type": "Host", "id": "web-1",
            "attributes": {"environment": "prod", "criticality": "high"}}}),
        json!({"action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe",
            "attributes": {"privileged": true}}, "parameters": {"reason": "compromised"}}),
        json!({"action": "vault.rotate_secret", "resource": {"type": "Secret", "id": "prod-db",
            "attributes": {"environment": "prod"}}, "parameters": {"new_value": "s3cr3t"}}),
        json!({"action": "logs.delete", "resource": {"type": "LogStream", "id": "web-1/auth"}}),
        json!({"action": "http.post", "resource": {"type": "Url", "id": "https://pastebin.com/x",
            "attributes": {"domain": "pastebin.com"}}, "parameters": {"body": "data"}}),
        json!({"action": "no.such_action", "resource": {"type": "Nope", "id": "x",
            "attributes": {"a": [1, {"b": null}]}}}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

fn authzen_seeds() -> Vec<Vec<u8>> {
    let subject = json!({"type": "agent", "id": AGENT});
    let context = json!({"task_id": "task_0190", "intent": "contain the beacon",
        "parameters": {"reason": "compromised"}});
    [
        json!({"subject": subject, "action": {"name": "edr.isolate_host"},
            "resource": {"type": "Host", "id": "web-1", "properties": {"environment": "prod"}},
            "context": context}),
        json!({"subject": {"type": "agent", "id": AGENT, "properties": {"x": 1}},
            "action": {"name": "http.post", "properties": {}},
            "resource": {"type": "Url", "id": "https://pastebin.com/x"}}),
        json!({"subject": subject, "context": context,
            "evaluations": [
                {"action": {"name": "edr.read_alerts"}, "resource": {"type": "Host", "id": "web-1"}},
                {"action": {"name": "logs.delete"}, "resource": {"type": "LogStream", "id": "a"},
                    "context": {"task_id": "task_2"}},
                {"subject": {"type": "user", "id": "alice"}}
            ],
            "options": {"evaluations_semantic": "deny_on_first_deny"}}),
        json!({"evaluations": [], "options": {"evaluations_semantic": "permit_on_first_permit"}}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

fn mcp_seeds() -> Vec<Vec<u8>> {
    [
        json!({"url": "https://pastebin.com/x", "body": "data"}),
        json!({"url": "HTTP://User:Pw@Example.COM.:8080/a/../b?q#f"}),
        json!({"url": "https://例え.jp/パス"}),
        json!({"url": "http://xn--nxasmq6b.com/"}),
        json!({"url": "http://[::FFFF:7f00:1]:80/"}),
        json!({"url": "http://0x7f.1/"}),
        json!({"url": "wss://a.b%2Ec/"}),
        json!({"url": "ftp://ftp.example.org/pub"}),
        json!({"url": "https:\\\\evil.test\\x"}),
        json!({"url": "sftp://PASTEBIN.COM/x"}),
        json!({"url": 42}),
        json!({"host": "web-1"}),
        json!({"index": "main", "query": "beacon"}),
        json!({"secret": "prod-db", "new_value": "x"}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

// ---------------------------------------------------------------- tests

/// The seeds must stay meaningful as the parsers evolve: valid ones parse,
/// so mutations start from inputs that reach deep.
#[test]
fn seeds_are_meaningful() {
    let catalog = &catalog_seeds()[0];
    let text = std::str::from_utf8(catalog).expect("utf-8");
    let parsed = tollgate_core::Catalog::from_yaml(text).expect("example catalog parses");
    assert!(parsed.operations.contains_key("http.post"));
    for s in &catalog_seeds()[1..5] {
        let text = std::str::from_utf8(s).expect("utf-8");
        tollgate_core::Catalog::from_yaml(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    for s in &spiffe_seeds()[..5] {
        let text = std::str::from_utf8(s).expect("utf-8");
        SpiffeId::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    for s in &bundle_seeds()[..4] {
        let text = std::str::from_utf8(s).expect("utf-8");
        tollgate_identity::TrustBundle::from_jwks("partner.test", text)
            .unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    // Tollgate's own tokens reach the expiry check: everything else about them is right.
    let seeds = token_seeds();
    let real_svid = std::str::from_utf8(&seeds[0]).expect("utf-8");
    let err = crate::tokens()
        .verify_svid(real_svid, NOW)
        .expect_err("expired");
    assert!(
        matches!(err, tollgate_identity::TokenError::Expired),
        "{err:?}"
    );
    for (i, s) in action_seeds()[..7].iter().enumerate() {
        let body: crate::ActionBody = serde_json::from_slice(s).expect("action body");
        assert!(
            crate::pack()
                .catalog()
                .operations
                .contains_key(&body.action),
            "seed {i}"
        );
    }
    for s in &authzen_seeds() {
        let ok = serde_json::from_slice::<tollgate_server::api::authzen::Evaluation>(s).is_ok()
            || serde_json::from_slice::<tollgate_server::api::authzen::Evaluations>(s).is_ok();
        assert!(ok, "{}", String::from_utf8_lossy(s));
    }
    let http_post = crate::catalog().operations["http.post"]
        .tool
        .as_ref()
        .expect("tool");
    for s in &mcp_seeds()[..9] {
        let Ok(Value::Object(args)) = serde_json::from_slice(s) else {
            panic!("not an object")
        };
        http_post
            .derive_attributes(args)
            .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(s)));
    }
}

#[test]
fn every_target_has_a_harness() {
    for (name, _) in crate::TARGETS {
        assert!(!(target(name).seeds)().is_empty(), "{name}");
    }
}

#[test]
fn base64url_round_trips() {
    for n in 0..70u8 {
        let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
        assert_eq!(b64url_decode(&b64url_encode(&data)), Some(data));
    }
}

#[test]
fn token_verify() {
    fuzz("token_verify");
}

#[test]
fn spiffe_id() {
    fuzz("spiffe_id");
}

#[test]
fn catalog_yaml() {
    fuzz("catalog_yaml");
}

#[test]
fn trust_bundle() {
    fuzz("trust_bundle");
}

#[test]
fn action_request() {
    fuzz("action_request");
}

#[test]
fn authzen_body() {
    fuzz("authzen_body");
}

#[test]
fn mcp_tool_arguments() {
    fuzz("mcp_tool_arguments");
}
