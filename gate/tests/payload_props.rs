//! Property tests: every valid payload round-trips byte for byte, and any single-byte change of
//! a rendered payload is either refused or parses to a payload that renders to exactly the
//! changed bytes (one spelling per meaning: nothing is normalised).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use gate::{ApprovalPayload, Op, Role};
use proptest::prelude::*;

fn payload() -> impl Strategy<Value = ApprovalPayload> {
    (
        "[a-z0-9-]{1,20}",
        "[a-z0-9-]{1,20}",
        "[0-9a-f]{16}",
        0usize..13,
        100u32..=999_999_999,
        proptest::option::of("[0-9a-f]{40}"),
        (
            proptest::collection::btree_map("[a-z0-9-]{1,12}", "[A-Za-z0-9._:/,=@+-]{0,20}", 0..6),
            proptest::collection::btree_map("[a-z0-9-]{1,12}", "[A-Za-z0-9._:/,=@+-]{1,20}", 0..4),
        ),
        any::<bool>(),
        "[0-9a-f]{32}",
        0i64..4_000_000_000,
        1i64..200_000,
        proptest::option::of("[A-Za-z0-9._/-]{1,20}"),
    )
        .prop_map(
            |(fleet, host, epoch, op, vmid, dig, (params, bind), rec, nonce, nb, len, ticket)| {
                ApprovalPayload {
                    fleet,
                    host,
                    state_epoch: epoch,
                    op: Op::KNOWN[op].clone(),
                    vmid,
                    guest_config_sha1: dig,
                    params: params.into_iter().collect::<BTreeMap<_, _>>(),
                    bind: bind.into_iter().collect::<BTreeMap<_, _>>(),
                    role: if rec {
                        Role::Recovery
                    } else {
                        Role::Operational
                    },
                    nonce,
                    not_before: nb,
                    expires_at: nb + len,
                    ticket,
                }
            },
        )
}

proptest! {
    #[test]
    fn valid_payloads_round_trip(p in payload()) {
        let s = p.render().unwrap();
        prop_assert_eq!(ApprovalPayload::parse(s.as_bytes()).unwrap(), p);
    }

    #[test]
    fn single_byte_changes_are_refused_or_exact(p in payload(), pos in any::<prop::sample::Index>(), b in any::<u8>()) {
        let mut bytes = p.render().unwrap().into_bytes();
        let i = pos.index(bytes.len());
        bytes[i] = b;
        if let Ok(q) = ApprovalPayload::parse(&bytes) {
            prop_assert_eq!(q.render().unwrap().into_bytes(), bytes);
        }
    }
}

// ---------------------------------------------------------------- `drover-job v1`

fn job() -> impl Strategy<Value = gate::JobPayload> {
    (
        "[a-z0-9-]{1,20}",
        "[a-z0-9-]{1,20}",
        "[0-9a-f]{16}",
        0usize..6,
        100u32..=999_999_999,
        proptest::option::of("[0-9a-f]{40}"),
        proptest::collection::btree_map("[a-z0-9-]{1,12}", "[A-Za-z0-9._:/,=@+-]{0,20}", 0..6),
        proptest::collection::btree_map("[a-z0-9-]{1,12}", "[A-Za-z0-9._:/,=@+-]{0,20}", 0..6),
        any::<bool>(),
        "[0-9a-f]{32}",
        (0i64..4_000_000_000, 1i64..200_000),
        proptest::option::of("[A-Za-z0-9._/-]{1,20}"),
    )
        .prop_map(
            |(
                fleet,
                host,
                epoch,
                kind,
                vmid,
                dig,
                params,
                binds,
                rec,
                nonce,
                (nb, len),
                ticket,
            )| {
                gate::JobPayload {
                    fleet,
                    host,
                    state_epoch: epoch,
                    kind: gate::JobKind::ALL[kind],
                    vmid,
                    guest_config_sha1: dig,
                    params,
                    binds,
                    role: if rec {
                        Role::Recovery
                    } else {
                        Role::Operational
                    },
                    nonce,
                    not_before: nb,
                    expires_at: nb + len,
                    ticket,
                }
            },
        )
}

proptest! {
    #[test]
    fn valid_jobs_round_trip(p in job()) {
        let s = p.render().unwrap();
        prop_assert_eq!(gate::JobPayload::parse(s.as_bytes()).unwrap(), p);
    }

    #[test]
    fn single_byte_changes_of_a_job_are_refused_or_exact(p in job(), pos in any::<prop::sample::Index>(), b in any::<u8>()) {
        let mut bytes = p.render().unwrap().into_bytes();
        let i = pos.index(bytes.len());
        bytes[i] = b;
        if let Ok(q) = gate::JobPayload::parse(&bytes) {
            prop_assert_eq!(q.render().unwrap().into_bytes(), bytes);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_job_parser(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = gate::JobPayload::parse(&bytes);
    }

    #[test]
    fn a_job_never_parses_as_an_approval(p in job()) {
        let s = p.render().unwrap();
        prop_assert!(ApprovalPayload::parse(s.as_bytes()).is_err());
    }
}
