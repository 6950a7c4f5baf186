//! The queue API's tests: order, limits, restarts, damage.

use super::test_support::*;
use super::*;

#[test]
fn clear_empties_the_outbox_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), 1 << 20, Duration::from_secs(60)).unwrap();
    o.push(1, b"secret sample").unwrap();
    o.clear().unwrap();
    assert!(o.is_empty() && o.peek(2).unwrap().is_none());
    o.push(3, b"after").unwrap();
    drop(o);
    let mut o = Outbox::open(dir.path(), 1 << 20, Duration::from_secs(60)).unwrap();
    assert_eq!(o.peek(4).unwrap().as_deref(), Some(&b"after"[..]));
}

#[test]
fn fifo_order_across_segment_rolls() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open_with(tmp.path(), 1 << 20, TTL, 128).unwrap();
    for i in 0..40 {
        ob.push(1000 + u64::from(i), &msg(i)).unwrap();
    }
    assert!(segment_files(tmp.path()).len() > 5, "small segments should have rolled");
    assert_eq!(ob.stats().queued, 40);
    let got = drain(&mut ob, 2000);
    assert_eq!(got, (0..40).map(msg).collect::<Vec<_>>());
    assert!(ob.is_empty());
    assert_eq!(ob.stats().queued_bytes, 0);
}

#[test]
fn peek_does_not_remove_and_ack_removes_the_oldest() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(tmp.path(), 1 << 20, TTL).unwrap();
    ob.push(1, b"a").unwrap();
    ob.push(2, b"b").unwrap();
    assert_eq!(ob.peek(10).unwrap().as_deref(), Some(&b"a"[..]));
    assert_eq!(ob.peek(10).unwrap().as_deref(), Some(&b"a"[..]));
    ob.ack().unwrap();
    assert_eq!(ob.peek(10).unwrap().as_deref(), Some(&b"b"[..]));
    ob.ack().unwrap();
    assert_eq!(ob.peek(10).unwrap(), None);
    // Nothing outstanding: a stray ack removes nothing and does not fail.
    ob.ack().unwrap();
}

#[test]
fn full_outbox_drops_oldest_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let max = 100;
    let mut ob = Outbox::open_with(tmp.path(), max, TTL, 64).unwrap();
    for i in 0..15u8 {
        ob.push(u64::from(i), &[i; 10]).unwrap();
        assert!(ob.stats().queued_bytes <= max);
    }
    let s = ob.stats();
    assert_eq!((s.queued, s.queued_bytes, s.dropped_full), (10, 100, 5));
    let got = drain(&mut ob, 20);
    assert_eq!(got, (5..15u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
    // The drops were persisted: a restart does not bring the dropped records back.
    ob.push(30, &[99; 10]).unwrap();
    drop(ob);
    let ob = Outbox::open_with(tmp.path(), max, TTL, 64).unwrap();
    assert_eq!(ob.stats().queued, 1);
}

// Regression: an ack after a push had dropped the peeked record removed the next,
// never-sent record instead.
#[test]
fn ack_after_the_peeked_record_was_dropped_removes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(tmp.path(), 20, TTL).unwrap();
    ob.push(1, &[1; 10]).unwrap();
    ob.push(1, &[2; 10]).unwrap();
    assert_eq!(ob.peek(2).unwrap(), Some(vec![1; 10]));
    ob.push(1, &[3; 10]).unwrap(); // drops [1; 10]
    ob.ack().unwrap();
    assert_eq!(drain(&mut ob, 2), vec![vec![2; 10], vec![3; 10]]);
    assert_eq!(ob.stats().dropped_full, 1);
}

#[test]
fn expired_records_are_dropped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(tmp.path(), 1 << 20, Duration::from_millis(1000)).unwrap();
    ob.push(0, b"old").unwrap();
    ob.push(100, b"older-ish").unwrap();
    ob.push(500, b"fresh").unwrap();
    assert_eq!(ob.peek(1200).unwrap().as_deref(), Some(&b"fresh"[..]));
    let s = ob.stats();
    assert_eq!((s.dropped_expired, s.queued), (2, 1));
    // Exactly at the TTL is still deliverable; one past it is not.
    assert_eq!(ob.peek(1500).unwrap().as_deref(), Some(&b"fresh"[..]));
    assert_eq!(ob.peek(1501).unwrap(), None);
    assert_eq!(ob.stats().dropped_expired, 3);
    assert!(ob.is_empty());
}

#[test]
fn payload_over_the_limit_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(tmp.path(), 100, TTL).unwrap();
    ob.push(1, &[0; 100]).unwrap();
    let err = ob.push(1, &[0; 101]).unwrap_err();
    assert!(matches!(err, OutboxError::TooLarge { len: 101, limit: 100, .. }));
    let text = err.to_string();
    assert!(text.contains("101 bytes") && text.contains("100 bytes"), "{text}");
    // The refused push changed nothing.
    assert_eq!(ob.stats().queued, 1);
    assert_eq!(ob.stats().dropped_full, 0);
    assert!(matches!(Outbox::open(tmp.path(), 0, TTL), Err(OutboxError::ZeroLimit { .. })));
}

#[test]
fn acked_segments_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open_with(tmp.path(), 1 << 20, TTL, 100).unwrap();
    for i in 0..30 {
        ob.push(1, &msg(i)).unwrap();
    }
    let before = segment_files(tmp.path());
    assert!(before.len() > 5);
    for _ in 0..15 {
        ob.peek(2).unwrap();
        ob.ack().unwrap();
    }
    let mid = segment_files(tmp.path());
    assert!(mid.len() < before.len() && mid.len() > 1, "{mid:?}");
    drain(&mut ob, 2);
    // Only the segment being appended to remains.
    assert_eq!(segment_files(tmp.path()), vec![*before.last().unwrap()]);
    // And once it fills, the next roll lets it go too.
    for i in 0..5 {
        ob.push(3, &msg(i)).unwrap();
        ob.peek(4).unwrap();
        ob.ack().unwrap();
    }
    assert_eq!(segment_files(tmp.path()).len(), 1);
}
