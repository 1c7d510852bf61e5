//! The read-store test suite: every store must pass it (`read_store_suite!(fresh())`, where
//! `fresh()` is an async expression giving `(Arc<dyn ReadStore>, guard)`).

use kiroku_journal::{Envelope, EventMetadata, StreamId};

use crate::{Batch, Change, Poison, ProjectedEvent, ROOMS};

pub fn envelope(room: &str, sequence: u64, position: u64) -> Envelope {
    Envelope {
        stream: StreamId::new("room", room),
        sequence,
        global_position: position,
        event_type: "test".into(),
        schema_version: 1,
        payload: vec![1, 2, 3],
        metadata: EventMetadata {
            command_id: format!("c{position}"),
            correlation_id: "corr".into(),
            causation_id: String::new(),
            principal: "alice".into(),
            timestamp_ms: 1_700_000_000_000 + position as i64,
        },
    }
}

pub fn ok(room: &str, sequence: u64, position: u64, change: Change) -> ProjectedEvent {
    ProjectedEvent {
        envelope: envelope(room, sequence, position),
        result: Ok(vec![change]),
    }
}

pub fn poison(room: &str, sequence: u64, position: u64) -> ProjectedEvent {
    ProjectedEvent {
        envelope: envelope(room, sequence, position),
        result: Err(Poison {
            error: "cannot decode".into(),
            attempts: 3,
        }),
    }
}

pub fn batch(version: u32, events: Vec<ProjectedEvent>) -> Batch {
    let position = events
        .iter()
        .map(|e| e.envelope.global_position)
        .max()
        .unwrap_or(0);
    Batch {
        projection: ROOMS.into(),
        version,
        last_event_ms: 1_700_000_000_000 + position as i64,
        position,
        events,
    }
}

pub fn created(name: &str) -> Change {
    Change::RoomCreated {
        name: name.into(),
        owner: "alice".into(),
    }
}

pub fn posted(id: &str, body: &str) -> Change {
    Change::MessagePosted {
        message_id: id.into(),
        author: "alice".into(),
        body: body.into(),
    }
}

#[macro_export]
macro_rules! read_store_suite {
    ($fresh:expr) => {
        mod read_store_suite {
            #[allow(unused_imports)]
            use super::*;
            use kiroku_journal::StreamId;
            use $crate::suite::*;
            use $crate::{Change, Cursor, ROOMS, StoreError};

            #[tokio::test]
            async fn views_follow_a_room() {
                let (store, _guard) = $fresh;
                let out = store
                    .commit(batch(
                        1,
                        vec![
                            ok("r1", 1, 1, created("lobby")),
                            ok(
                                "r1",
                                2,
                                2,
                                Change::MemberAdded {
                                    user_id: "bob".into(),
                                },
                            ),
                            ok("r1", 3, 3, posted("m1", "hello")),
                            ok("r1", 4, 4, posted("m2", "second")),
                            ok(
                                "r1",
                                5,
                                5,
                                Change::MessageEdited {
                                    message_id: "m1".into(),
                                    body: "hello!".into(),
                                },
                            ),
                            ok("r1", 6, 6, posted("m3", "gone soon")),
                            ok(
                                "r1",
                                7,
                                7,
                                Change::MessageDeleted {
                                    message_id: "m3".into(),
                                },
                            ),
                            ok(
                                "r1",
                                8,
                                8,
                                Change::RoomRenamed {
                                    name: "hall".into(),
                                },
                            ),
                        ],
                    ))
                    .await
                    .unwrap();
                assert_eq!(out.applied, 8);
                let room = store
                    .room("r1")
                    .await
                    .unwrap()
                    .expect("the room is projected");
                assert_eq!(room.name, "hall");
                assert_eq!(room.owner, "alice");
                assert_eq!(room.members, vec!["alice".to_string(), "bob".to_string()]);
                assert_eq!(room.message_count, 2);
                assert_eq!(room.version, 8);
                assert_eq!(room.last_activity_ms, 1_700_000_000_008);
                assert!(!room.archived);
                let page = store.messages("r1", None, 10).await.unwrap();
                let ids: Vec<_> = page
                    .messages
                    .iter()
                    .map(|m| m.message_id.as_str())
                    .collect();
                assert_eq!(ids, ["m2", "m1"], "newest first, deleted left out");
                assert!(page.messages[1].edited && page.messages[1].body == "hello!");
                assert_eq!(page.messages[1].edited_ms, Some(1_700_000_000_005));
                assert!(page.next_cursor.is_none());
                let bobs = store.member_rooms("bob", 10).await.unwrap();
                assert_eq!(bobs.len(), 1);
                assert_eq!(bobs[0].room_id, "r1");
                assert!(store.member_rooms("carol", 10).await.unwrap().is_empty());
                assert!(store.room("nope").await.unwrap().is_none());
                store
                    .commit(batch(
                        1,
                        vec![
                            ok(
                                "r1",
                                9,
                                9,
                                Change::MemberRemoved {
                                    user_id: "bob".into(),
                                },
                            ),
                            ok("r1", 10, 10, Change::RoomArchived),
                        ],
                    ))
                    .await
                    .unwrap();
                let room = store.room("r1").await.unwrap().unwrap();
                assert!(room.archived);
                assert_eq!(room.members, vec!["alice".to_string()]);
                assert!(store.member_rooms("bob", 10).await.unwrap().is_empty());
            }

            #[tokio::test]
            async fn a_batch_applied_twice_changes_nothing_the_second_time() {
                let (store, _guard) = $fresh;
                let b = batch(
                    1,
                    vec![
                        ok("r1", 1, 1, created("a")),
                        ok("r1", 2, 2, posted("m1", "x")),
                    ],
                );
                store.commit(b.clone()).await.unwrap();
                let before = store.dump(ROOMS, 1).await.unwrap();
                let again = store.commit(b).await.unwrap();
                assert_eq!((again.applied, again.duplicates), (0, 2));
                assert_eq!(store.dump(ROOMS, 1).await.unwrap(), before);
                assert_eq!(store.room("r1").await.unwrap().unwrap().message_count, 1);
            }

            #[tokio::test]
            async fn a_gap_is_refused_and_writes_nothing() {
                let (store, _guard) = $fresh;
                let err = store
                    .commit(batch(
                        1,
                        vec![
                            ok("r1", 1, 1, created("a")),
                            ok("r1", 3, 3, posted("m1", "x")),
                        ],
                    ))
                    .await
                    .unwrap_err();
                assert!(
                    matches!(
                        err,
                        StoreError::Gap {
                            expected: 2,
                            got: 3,
                            ..
                        }
                    ),
                    "{err:?}"
                );
                assert!(store.room("r1").await.unwrap().is_none());
                assert_eq!(store.checkpoint(ROOMS, 1).await.unwrap().position, 0);
            }

            #[tokio::test]
            async fn the_checkpoint_moves_with_each_batch_and_never_back() {
                let (store, _guard) = $fresh;
                store
                    .commit(batch(1, vec![ok("r1", 1, 5, created("a"))]))
                    .await
                    .unwrap();
                assert_eq!(store.checkpoint(ROOMS, 1).await.unwrap().position, 5);
                let mut old = batch(1, vec![ok("r1", 1, 5, created("a"))]);
                old.position = 3;
                store.commit(old).await.unwrap();
                let state = store.state(ROOMS).await.unwrap();
                assert_eq!(state.checkpoint.position, 5);
                assert_eq!(state.active_version, 1);
                assert_eq!(state.checkpoint.last_event_ms, 1_700_000_000_005);
            }

            #[tokio::test]
            async fn a_poison_event_parks_its_aggregate_only_and_resolves_in_order() {
                let (store, _guard) = $fresh;
                let out = store
                    .commit(batch(
                        1,
                        vec![
                            ok("r1", 1, 1, created("a")),
                            ok("r2", 1, 2, created("b")),
                            poison("r1", 2, 3),
                            ok("r1", 3, 4, posted("m2", "after the poison")),
                            ok("r2", 2, 5, posted("m1", "other room goes on")),
                        ],
                    ))
                    .await
                    .unwrap();
                assert_eq!((out.applied, out.parked), (3, 2));
                assert_eq!(store.room("r2").await.unwrap().unwrap().message_count, 1);
                assert_eq!(store.room("r1").await.unwrap().unwrap().message_count, 0);
                let r1 = StreamId::new("room", "r1");
                assert_eq!(store.applied_sequence(ROOMS, &r1).await.unwrap(), 1);
                let parked = store.parked(ROOMS, &r1).await.unwrap();
                assert_eq!(
                    parked
                        .iter()
                        .map(|d| d.envelope.sequence)
                        .collect::<Vec<_>>(),
                    [2, 3]
                );
                assert_eq!(parked[0].error, "cannot decode");
                assert_eq!(parked[0].attempts, 3);
                assert_eq!(parked[0].envelope.payload, vec![1, 2, 3]);
                assert_eq!(parked[0].envelope.metadata.principal, "alice");
                assert_eq!(store.state(ROOMS).await.unwrap().dead_letters, 2);
                // Later events of r1 keep parking behind it.
                store
                    .commit(batch(1, vec![ok("r1", 4, 6, posted("m3", "later"))]))
                    .await
                    .unwrap();
                assert_eq!(store.dead_letters(ROOMS, 10).await.unwrap().len(), 3);
                // Still failing: the error is updated, nothing applied.
                store
                    .resolve(ROOMS, &r1, vec![poison("r1", 2, 3)])
                    .await
                    .unwrap();
                assert_eq!(store.parked(ROOMS, &r1).await.unwrap()[0].attempts, 6);
                // Fixed: applied in order, removed from the dead letters.
                store
                    .resolve(
                        ROOMS,
                        &r1,
                        vec![
                            ok("r1", 2, 3, posted("m1", "fixed")),
                            ok("r1", 3, 4, posted("m2", "after the poison")),
                            ok("r1", 4, 6, posted("m3", "later")),
                        ],
                    )
                    .await
                    .unwrap();
                assert_eq!(store.applied_sequence(ROOMS, &r1).await.unwrap(), 4);
                assert_eq!(store.room("r1").await.unwrap().unwrap().message_count, 3);
                assert!(store.dead_letters(ROOMS, 10).await.unwrap().is_empty());
                // Resolving again is a conflict, not a double application.
                let err = store
                    .resolve(ROOMS, &r1, vec![ok("r1", 2, 3, posted("m1", "fixed"))])
                    .await
                    .unwrap_err();
                assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
                // And the aggregate flows again.
                store
                    .commit(batch(1, vec![ok("r1", 5, 7, posted("m4", "flowing"))]))
                    .await
                    .unwrap();
                assert_eq!(store.room("r1").await.unwrap().unwrap().message_count, 4);
            }

            #[tokio::test]
            async fn messages_page_newest_first_with_cursors() {
                let (store, _guard) = $fresh;
                let mut events = vec![ok("r1", 1, 1, created("a"))];
                for i in 2..=121u64 {
                    events.push(ok("r1", i, i, posted(&format!("m{i}"), "x")));
                }
                store.commit(batch(1, events)).await.unwrap();
                let mut seen = Vec::new();
                let mut cursor = None;
                loop {
                    let page = store.messages("r1", cursor, 50).await.unwrap();
                    seen.extend(page.messages.iter().map(|m| m.sequence));
                    match page.next_cursor {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
                assert_eq!(seen, (2..=121u64).rev().collect::<Vec<_>>());
                let c = Cursor(100);
                assert_eq!(Cursor::parse(&c.encode()), Ok(c));
                assert!(Cursor::parse("bogus").is_err());
            }

            #[tokio::test]
            async fn message_changes_come_in_the_order_they_happened() {
                let (store, _guard) = $fresh;
                store
                    .commit(batch(
                        1,
                        vec![
                            ok("r1", 1, 1, created("a")),
                            ok("r1", 2, 2, posted("m1", "one")),
                            ok("r1", 3, 3, posted("m2", "two")),
                            ok(
                                "r1",
                                4,
                                4,
                                Change::MessageEdited {
                                    message_id: "m1".into(),
                                    body: "uno".into(),
                                },
                            ),
                        ],
                    ))
                    .await
                    .unwrap();
                let changes = store.message_changes("r1", 0, 10).await.unwrap();
                let seen: Vec<_> = changes
                    .iter()
                    .map(|m| (m.message_id.as_str(), m.changed_version))
                    .collect();
                assert_eq!(seen, [("m2", 3), ("m1", 4)]);
                assert!(store.message_changes("r1", 4, 10).await.unwrap().is_empty());
                // The summary and the changes after a version, from one snapshot.
                let (room, changes) = store.room_changes("r1", 2, 10).await.unwrap().unwrap();
                assert_eq!(room.version, 4);
                let seen: Vec<_> = changes
                    .iter()
                    .map(|m| (m.message_id.as_str(), m.changed_version))
                    .collect();
                assert_eq!(seen, [("m2", 3), ("m1", 4)]);
                let (room, changes) = store.room_changes("r1", 4, 10).await.unwrap().unwrap();
                assert_eq!((room.version, changes.len()), (4, 0));
                assert_eq!(store.room_changes("nope", 0, 10).await.unwrap(), None);
            }

            #[tokio::test]
            async fn a_rebuild_fills_a_new_version_and_switches_atomically() {
                let (store, _guard) = $fresh;
                store
                    .commit(batch(1, vec![ok("r1", 1, 1, created("live"))]))
                    .await
                    .unwrap();
                let v = store.begin_rebuild(ROOMS).await.unwrap();
                assert_eq!(v, 2);
                assert_eq!(
                    store.begin_rebuild(ROOMS).await.unwrap(),
                    2,
                    "a second start resumes"
                );
                assert_eq!(store.checkpoint(ROOMS, 2).await.unwrap().position, 0);
                store
                    .commit(batch(2, vec![ok("r1", 1, 1, created("rebuilt"))]))
                    .await
                    .unwrap();
                assert_eq!(
                    store.room("r1").await.unwrap().unwrap().name,
                    "live",
                    "v1 serves"
                );
                let state = store.state(ROOMS).await.unwrap();
                assert_eq!((state.active_version, state.building_version), (1, Some(2)));
                store.finish_rebuild(ROOMS, 2).await.unwrap();
                assert_eq!(store.room("r1").await.unwrap().unwrap().name, "rebuilt");
                assert!(matches!(
                    store.finish_rebuild(ROOMS, 2).await,
                    Err(StoreError::Conflict(_))
                ));
                // The next rebuild starts empty at version 3; version 1 goes.
                assert_eq!(store.begin_rebuild(ROOMS).await.unwrap(), 3);
                assert!(store.dump(ROOMS, 3).await.unwrap().rooms.is_empty());
            }

            #[tokio::test]
            async fn unknown_projections_are_refused_and_migrating_again_is_harmless() {
                let (store, _guard) = $fresh;
                assert!(matches!(
                    store.state("nope").await,
                    Err(StoreError::UnknownProjection(_))
                ));
                assert!(matches!(
                    store.begin_rebuild("nope").await,
                    Err(StoreError::UnknownProjection(_))
                ));
                store
                    .commit(batch(1, vec![ok("r1", 1, 1, created("a"))]))
                    .await
                    .unwrap();
                store.migrate().await.unwrap();
                assert!(store.room("r1").await.unwrap().is_some());
            }
        }
    };
}
