//! Given events, when a command, then events or a rejection — one table row per rule.

use kiroku_core::{Aggregate, Caller, RejectionKind};
use proptest::prelude::*;

use super::*;

use RoomCommand as C;
use RoomEvent as E;

fn created() -> E {
    E::Created {
        name: "lobby".into(),
        owner: "ann".into(),
    }
}
fn joined(user: &str) -> E {
    E::MemberAdded {
        user_id: user.into(),
    }
}
fn posted(id: &str, author: &str) -> E {
    E::MessagePosted {
        message_id: id.into(),
        author: author.into(),
        body: "hi".into(),
    }
}
fn post(id: &str, body: &str) -> C {
    C::PostMessage {
        message_id: id.into(),
        body: body.into(),
    }
}

type Then = Result<Vec<E>, RejectionKind>;

fn case<'a>(given: &[E], who: &'a str, when: C, then: Then) -> (Vec<E>, &'a str, C, Then) {
    (given.to_vec(), who, when, then)
}

#[test]
fn rules() {
    let long_name = "n".repeat(MAX_NAME_CHARS + 1);
    let max_name = "n".repeat(MAX_NAME_CHARS);
    let long_body = "b".repeat(MAX_BODY_CHARS + 1);
    let max_body = "é".repeat(MAX_BODY_CHARS);
    let base = [created()];
    let with_bob = [created(), joined("bob")];
    let with_msg = [created(), joined("bob"), posted("m1", "bob")];
    let archived = [created(), E::Archived];
    let cases = vec![
        // create
        case(
            &[],
            "ann",
            C::Create {
                name: "lobby".into(),
            },
            Ok(vec![created()]),
        ),
        case(
            &[],
            "ann",
            C::Create {
                name: max_name.clone(),
            },
            Ok(vec![E::Created {
                name: max_name,
                owner: "ann".into(),
            }]),
        ),
        case(
            &[],
            "ann",
            C::Create { name: "".into() },
            Err(RejectionKind::InvalidArgument),
        ),
        case(
            &[],
            "ann",
            C::Create { name: "   ".into() },
            Err(RejectionKind::InvalidArgument),
        ),
        case(
            &[],
            "ann",
            C::Create {
                name: long_name.clone(),
            },
            Err(RejectionKind::InvalidArgument),
        ),
        case(
            &base,
            "ann",
            C::Create {
                name: "again".into(),
            },
            Err(RejectionKind::AlreadyExists),
        ),
        // unknown room
        case(&[], "ann", post("m1", "hi"), Err(RejectionKind::NotFound)),
        case(&[], "ann", C::Archive, Err(RejectionKind::NotFound)),
        // rename
        case(
            &base,
            "ann",
            C::Rename {
                name: "hall".into(),
            },
            Ok(vec![E::Renamed {
                name: "hall".into(),
            }]),
        ),
        case(
            &base,
            "ann",
            C::Rename {
                name: "lobby".into(),
            },
            Ok(vec![]),
        ),
        case(
            &with_bob,
            "bob",
            C::Rename {
                name: "hall".into(),
            },
            Err(RejectionKind::FailedPrecondition),
        ),
        case(
            &base,
            "ann",
            C::Rename { name: long_name },
            Err(RejectionKind::InvalidArgument),
        ),
        // members
        case(
            &base,
            "ann",
            C::AddMember {
                user_id: "bob".into(),
            },
            Ok(vec![joined("bob")]),
        ),
        case(
            &with_bob,
            "ann",
            C::AddMember {
                user_id: "bob".into(),
            },
            Ok(vec![]),
        ),
        case(
            &base,
            "eve",
            C::AddMember {
                user_id: "eve".into(),
            },
            Err(RejectionKind::FailedPrecondition),
        ),
        case(
            &base,
            "ann",
            C::AddMember {
                user_id: "b b".into(),
            },
            Err(RejectionKind::InvalidArgument),
        ),
        case(
            &with_bob,
            "ann",
            C::RemoveMember {
                user_id: "bob".into(),
            },
            Ok(vec![E::MemberRemoved {
                user_id: "bob".into(),
            }]),
        ),
        case(
            &with_bob,
            "bob",
            C::RemoveMember {
                user_id: "bob".into(),
            },
            Ok(vec![E::MemberRemoved {
                user_id: "bob".into(),
            }]),
        ),
        case(
            &[created(), joined("bob"), joined("cy")],
            "bob",
            C::RemoveMember {
                user_id: "cy".into(),
            },
            Err(RejectionKind::FailedPrecondition),
        ),
        case(
            &with_bob,
            "ann",
            C::RemoveMember {
                user_id: "ann".into(),
            },
            Err(RejectionKind::FailedPrecondition),
        ),
        case(
            &base,
            "ann",
            C::RemoveMember {
                user_id: "zed".into(),
            },
            Err(RejectionKind::FailedPrecondition),
        ),
        // posting
        case(
            &with_bob,
            "bob",
            post("m1", "hi"),
            Ok(vec![posted("m1", "bob")]),
        ),
        case(
            &base,
            "ann",
            post("m9", &max_body),
            Ok(vec![E::MessagePosted {
                message_id: "m9".into(),
                author: "ann".into(),
                body: max_body.clone(),
            }]),
        ),
        case(
            &base,
            "eve",
            post("m1", "hi"),
            Err(RejectionKind::FailedPrecondition),
        ),
        case(
            &base,
            "ann",
            post("m1", ""),
            Err(RejectionKind::InvalidArgument),
        ),
        case(
            &base,
            "ann",
            post("m1", &long_body),
            Err(RejectionKind::InvalidArgument),
        ),
        case(
            &with_msg,
            "bob",
            post("m1", "again"),
            Err(RejectionKind::AlreadyExists),
        ),
        case(
            &[
                created(),
                joined("bob"),
                E::MemberRemoved {
                    user_id: "bob".into(),
                },
            ],
            "bob",
            post("m1", "hi"),
            Err(RejectionKind::FailedPrecondition),
        ),
        // editing and deleting
        case(
            &with_msg,
            "bob",
            C::EditMessage {
                message_id: "m1".into(),
                body: "yo".into(),
            },
            Ok(vec![E::MessageEdited {
                message_id: "m1".into(),
                body: "yo".into(),
            }]),
        ),
        case(
            &with_msg,
            "ann",
            C::EditMessage {
                message_id: "m1".into(),
                body: "yo".into(),
            },
            Err(RejectionKind::FailedPrecondition),
        ),
        case(
            &with_msg,
            "bob",
            C::EditMessage {
                message_id: "m2".into(),
                body: "yo".into(),
            },
            Err(RejectionKind::NotFound),
        ),
        case(
            &with_msg,
            "bob",
            C::EditMessage {
                message_id: "m1".into(),
                body: long_body,
            },
            Err(RejectionKind::InvalidArgument),
        ),
        case(
            &with_msg,
            "bob",
            C::DeleteMessage {
                message_id: "m1".into(),
            },
            Ok(vec![E::MessageDeleted {
                message_id: "m1".into(),
            }]),
        ),
        case(
            &with_msg,
            "ann",
            C::DeleteMessage {
                message_id: "m1".into(),
            },
            Err(RejectionKind::FailedPrecondition),
        ),
        case(
            &[
                created(),
                joined("bob"),
                posted("m1", "bob"),
                E::MessageDeleted {
                    message_id: "m1".into(),
                },
            ],
            "bob",
            C::DeleteMessage {
                message_id: "m1".into(),
            },
            Err(RejectionKind::NotFound),
        ),
        // archiving
        case(&base, "ann", C::Archive, Ok(vec![E::Archived])),
        case(
            &with_bob,
            "bob",
            C::Archive,
            Err(RejectionKind::FailedPrecondition),
        ),
        case(
            &archived,
            "ann",
            post("m1", "hi"),
            Err(RejectionKind::FailedPrecondition),
        ),
        case(
            &archived,
            "ann",
            C::Rename { name: "x".into() },
            Err(RejectionKind::FailedPrecondition),
        ),
        case(
            &archived,
            "ann",
            C::Archive,
            Err(RejectionKind::FailedPrecondition),
        ),
    ];
    for (i, (given, who, when, then)) in cases.into_iter().enumerate() {
        let mut room = Room::default();
        given.iter().for_each(|e| room.apply(e));
        let got = room.handle(&Caller::new(who), &when).map_err(|r| {
            assert!(
                !r.message.is_empty(),
                "case {i}: rejection without a reason"
            );
            r.kind
        });
        assert_eq!(got, then, "case {i}: {who} does {when:?} given {given:?}");
    }
}

fn any_event() -> impl Strategy<Value = RoomEvent> {
    let s = || "[a-z0-9é]{0,12}";
    prop_oneof![
        (s(), s()).prop_map(|(name, owner)| E::Created { name, owner }),
        s().prop_map(|name| E::Renamed { name }),
        s().prop_map(|user_id| E::MemberAdded { user_id }),
        s().prop_map(|user_id| E::MemberRemoved { user_id }),
        (s(), s(), s()).prop_map(|(message_id, author, body)| E::MessagePosted {
            message_id,
            author,
            body
        }),
        (s(), s()).prop_map(|(message_id, body)| E::MessageEdited { message_id, body }),
        s().prop_map(|message_id| E::MessageDeleted { message_id }),
        Just(E::Archived),
    ]
}

proptest! {
    #[test]
    fn every_event_survives_its_protobuf_form(event in any_event()) {
        let encoded = Room::encode(&event);
        prop_assert_eq!(Room::decode(&encoded.event_type, encoded.schema_version, &encoded.payload), Ok(event));
    }

    /// Folding from a snapshot taken at any point and then the tail equals folding from zero.
    #[test]
    fn snapshot_plus_tail_equals_replay(events in prop::collection::vec(any_event(), 0..40), cut in 0usize..40) {
        use kiroku_core::{BincodeSnapshotCodec, SnapshotCodec};
        let cut = cut.min(events.len());
        let mut full = Room::default();
        events.iter().for_each(|e| full.apply(e));
        let mut head = Room::default();
        events[..cut].iter().for_each(|e| head.apply(e));
        let codec = BincodeSnapshotCodec::default();
        let mut restored: Room = codec.decode(&codec.encode(&head)).unwrap();
        events[cut..].iter().for_each(|e| restored.apply(e));
        prop_assert_eq!(restored, full);
    }
}

#[test]
fn foreign_events_do_not_decode() {
    assert!(Room::decode("kiroku.chat.v1.Nope", 1, &[]).is_err());
    assert!(Room::decode("other.Thing", 1, &[]).is_err());
    assert!(Room::decode("kiroku.chat.v1.RoomCreated", 2, &[]).is_err());
    assert!(Room::decode("kiroku.chat.v1.RoomCreated", 1, &[0xff, 0xff]).is_err());
}
