//! Model-based property test (reliability plan T2a, in-process): random sequences of appends,
//! reads, crashes (with appends in flight, then optionally cutting the unsynced tail or adding
//! garbage or zeros) and clean reopens, checked against an in-memory model.
//!
//! After every reopen: every acknowledged record is present and byte-identical; every record
//! present is one that was acknowledged, was seen before at the same offset, or was in flight at
//! the crash (no phantoms, no bytes changing under an offset); the next offset exceeds every
//! offset ever assigned. Reads between reopens return exactly the model's records from `from`.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use super::*;
use crate::JournalError;

const PARTITIONS: u32 = 2;

#[derive(Clone, Debug)]
enum From {
    Zero,
    Known(Index),
    End,
    PastEnd(u8),
}

#[derive(Clone, Debug)]
enum Damage {
    None,
    /// Cut the active segment somewhere between the durable length and the end of the file.
    CutUnsynced(Index),
    Garbage(Vec<u8>),
    Zeros(usize),
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        partition: u32,
        values: Vec<Vec<u8>>,
    },
    Read {
        partition: u32,
        from: From,
        max_records: usize,
        max_bytes: usize,
    },
    Crash {
        in_flight: Option<(u32, Vec<Vec<Vec<u8>>>)>,
        damage: Damage,
    },
    Reopen,
}

fn a_value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..90)
}

fn an_op() -> impl Strategy<Value = Op> {
    let from = prop_oneof![
        Just(From::Zero),
        any::<Index>().prop_map(From::Known),
        Just(From::End),
        any::<u8>().prop_map(From::PastEnd),
    ];
    let damage = prop_oneof![
        Just(Damage::None),
        any::<Index>().prop_map(Damage::CutUnsynced),
        prop::collection::vec(any::<u8>(), 1..200).prop_map(Damage::Garbage),
        (1..300usize).prop_map(Damage::Zeros),
    ];
    let batches = prop::collection::vec(prop::collection::vec(a_value(), 1..4), 1..4);
    prop_oneof![
        8 => (0..PARTITIONS, prop::collection::vec(a_value(), 1..5))
            .prop_map(|(partition, values)| Op::Append { partition, values }),
        3 => (0..PARTITIONS, from, 1..12usize, prop_oneof![Just(usize::MAX), 0..300usize])
            .prop_map(|(partition, from, max_records, max_bytes)| Op::Read {
                partition, from, max_records, max_bytes,
            }),
        2 => (prop::option::of((0..PARTITIONS, batches)), damage)
            .prop_map(|(in_flight, damage)| Op::Crash { in_flight, damage }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    /// Records known to exist: acknowledged, or seen by a read. After a reopen this is exactly
    /// what the partition holds.
    known: Vec<BTreeMap<u64, Vec<u8>>>,
    acked: Vec<BTreeMap<u64, Vec<u8>>>,
    /// Values in flight at the last crash; each may or may not have survived.
    maybe: Vec<Vec<Vec<u8>>>,
    /// The highest offset ever assigned, acknowledged or not.
    max_assigned: Vec<Option<u64>>,
}

impl Model {
    fn new() -> Self {
        let n = PARTITIONS as usize;
        Self {
            known: vec![BTreeMap::new(); n],
            acked: vec![BTreeMap::new(); n],
            maybe: vec![Vec::new(); n],
            max_assigned: vec![None; n],
        }
    }

    fn assign(&mut self, p: usize, last: u64) {
        self.max_assigned[p] = Some(self.max_assigned[p].map_or(last, |m| m.max(last)));
    }
}

fn fail(e: JournalError) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = scratch();
    let s = settings(dir.path());
    let mut j = open(&s);
    j.create_topic("t", PARTITIONS).map_err(fail)?;
    let mut m = Model::new();
    for op in ops {
        match op {
            Op::Append { partition, values } => {
                let p = partition as usize;
                let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                let offset = append(&j, "t", partition, &refs).map_err(fail)?;
                if let Some(max) = m.max_assigned[p] {
                    prop_assert!(offset > max, "offset {offset} reissued (max {max})");
                }
                for (k, v) in values.iter().enumerate() {
                    m.acked[p].insert(offset + k as u64, v.clone());
                    m.known[p].insert(offset + k as u64, v.clone());
                }
                m.assign(p, offset + values.len() as u64 - 1);
            }
            Op::Read {
                partition,
                from,
                max_records,
                max_bytes,
            } => {
                let p = partition as usize;
                let end = j.end("t", partition).map_err(fail)?;
                let from = match from {
                    From::Zero => 0,
                    From::Known(i) if !m.known[p].is_empty() => *m.known[p]
                        .keys()
                        .nth(i.index(m.known[p].len()))
                        .unwrap_or(&0),
                    From::Known(_) => 0,
                    From::End => end,
                    From::PastEnd(n) => end + u64::from(n),
                };
                let got = j
                    .read("t", partition, from, max_records, max_bytes)
                    .map_err(fail)?;
                let expect: Vec<_> = m.known[p].range(from..).take(max_records).collect();
                prop_assert_eq!(got.is_empty(), expect.is_empty(), "from {}", from);
                prop_assert!(got.len() <= expect.len());
                for (r, (o, v)) in got.iter().zip(&expect) {
                    prop_assert_eq!(r.offset, **o);
                    prop_assert_eq!(&r.value[..], &v[..]);
                    prop_assert!(r.offset < end);
                }
                if got.len() > 1 {
                    let bytes: usize = got.iter().map(|r| r.value.len()).sum();
                    prop_assert!(bytes <= max_bytes);
                }
                if got.len() < expect.len() {
                    // Stopped early: only because the next record would pass max_bytes.
                    let bytes: usize = got.iter().map(|r| r.value.len()).sum();
                    prop_assert!(bytes + expect[got.len()].1.len() > max_bytes);
                }
            }
            Op::Crash { in_flight, damage } => {
                let mut pending = Vec::new();
                let target = in_flight.as_ref().map_or(0, |(p, _)| *p);
                if let Some((partition, batches)) = in_flight {
                    let p = partition as usize;
                    j.hold("t", partition, true);
                    let end = j.end("t", partition).map_err(fail)?;
                    let n: u64 = batches.iter().map(|b| b.len() as u64).sum();
                    for batch in &batches {
                        let records = batch.iter().map(|v| Bytes::copy_from_slice(v)).collect();
                        pending.push(j.append("t", partition, records));
                        m.maybe[p].extend(batch.iter().cloned());
                    }
                    m.assign(p, end + n - 1);
                }
                let crashed = j.crash();
                for f in pending {
                    let outcome = futures::executor::block_on(f);
                    prop_assert!(
                        matches!(outcome, Err(JournalError::Closed)),
                        "an append pending at the crash resolved {:?}",
                        outcome
                    );
                }
                if let Some(c) = crashed.iter().find(|c| c.partition == target) {
                    damage_segment(&c.active_segment, c.durable_len, &damage);
                }
                drop(j);
                j = open(&s);
                check_reopened(&j, &mut m)?;
            }
            Op::Reopen => {
                let ends: Vec<u64> = (0..PARTITIONS)
                    .map(|p| j.end("t", p))
                    .collect::<Result<_, _>>()
                    .map_err(fail)?;
                drop(j);
                j = open(&s);
                for p in 0..PARTITIONS {
                    prop_assert_eq!(
                        j.end("t", p).map_err(fail)?,
                        ends[p as usize],
                        "clean reopen left a gap"
                    );
                }
                check_reopened(&j, &mut m)?;
            }
        }
    }
    Ok(())
}

fn damage_segment(path: &Path, durable_len: u64, damage: &Damage) {
    use std::io::Write as _;
    // Append mode: garbage and zeros go after the last byte.
    let file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    let len = file.metadata().unwrap().len();
    match damage {
        Damage::None => {}
        Damage::CutUnsynced(i) => {
            if len > durable_len {
                let at = durable_len + i.index((len - durable_len + 1) as usize) as u64;
                file.set_len(at).unwrap();
            }
        }
        Damage::Garbage(bytes) => (&file).write_all(bytes).unwrap(),
        Damage::Zeros(n) => (&file).write_all(&vec![0u8; *n]).unwrap(),
    }
}

fn check_reopened(j: &LocalJournal, m: &mut Model) -> Result<(), TestCaseError> {
    for partition in 0..PARTITIONS {
        let p = partition as usize;
        let report = j.recovery_report().partition("t", partition).unwrap();
        prop_assert!(report.quarantined.is_none(), "{:?}", report);
        let end = j.end("t", partition).map_err(fail)?;
        let records = read_all_paged(j, "t", partition, 3).map_err(fail)?;
        let mut maybe = std::mem::take(&mut m.maybe[p]);
        let mut present = BTreeMap::new();
        let mut last = None;
        for r in &records {
            prop_assert!(last.is_none_or(|l| r.offset > l), "offsets not increasing");
            last = Some(r.offset);
            prop_assert!(r.offset < end);
            match m.known[p].get(&r.offset) {
                Some(v) => prop_assert_eq!(&v[..], &r.value[..], "bytes changed at {}", r.offset),
                None => {
                    let i = maybe.iter().position(|v| v[..] == r.value[..]);
                    prop_assert!(i.is_some(), "phantom record at {}", r.offset);
                    if let Some(i) = i {
                        maybe.swap_remove(i);
                    }
                    m.known[p].insert(r.offset, r.value.to_vec());
                }
            }
            present.insert(r.offset, ());
        }
        for o in m.known[p].keys() {
            prop_assert!(
                present.contains_key(o),
                "record {} lost (acked: {})",
                o,
                m.acked[p].contains_key(o)
            );
        }
        if let Some(max) = m.max_assigned[p] {
            prop_assert!(end > max, "next offset {end} would reissue {max}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(48),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn journal_matches_the_model_across_crashes_and_reopens(
        ops in prop::collection::vec(an_op(), 1..40)
    ) {
        run(ops)?;
    }
}
