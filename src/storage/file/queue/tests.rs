use std::sync::Arc;

use super::*;

fn temp_queue(name: &str) -> (PathBuf, Queue, Arc<Mutex<Vec<String>>>) {
    let dir = std::env::temp_dir().join(format!("huey-rs-queue-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let reports: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = reports.clone();
    let report: Report = Arc::new(move |damage: Damage| {
        sink.lock().push(damage.reason());
        Ok(())
    });
    let queue = Queue::open(dir.clone(), false, true, report).unwrap();
    (dir, queue, reports)
}

#[test]
fn segments_roll_over_and_drained_ones_are_deleted() {
    let (dir, queue, reports) = temp_queue("roll");
    let big = vec![7u8; (SEGMENT_BYTES / 3) as usize];
    for i in 0..7u8 {
        let mut data = big.clone();
        data[0] = i;
        queue.enqueue(&data, 1).unwrap();
    }
    queue.enqueue(b"small", 0).unwrap();
    assert_eq!(queue.size().unwrap(), 8);
    let segs = |dir: &Path| {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
            .count()
    };
    assert_eq!(segs(&dir), 5); // two records a segment: four for priority 1, one for 0
    assert_eq!(queue.items(Some(2)).unwrap().len(), 2);
    for i in 0..7u8 {
        assert_eq!(queue.dequeue().unwrap().unwrap()[0], i);
    }
    assert_eq!(queue.dequeue().unwrap().unwrap(), b"small");
    assert_eq!(queue.dequeue().unwrap(), None);
    assert_eq!(segs(&dir), 2); // the current tail segments
    assert!(reports.lock().is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn redelivered_records_carry_their_count_and_plain_readers_skip_it() {
    let (dir, queue, _) = temp_queue("count");
    queue.enqueue_delivered(b"again", 3, 2).unwrap();
    queue.enqueue(b"first", 3).unwrap();
    assert_eq!(
        queue.items(None).unwrap(),
        vec![b"again".to_vec(), b"first".to_vec()]
    );
    let got = queue
        .dequeue_with(|m| Ok((m.data, m.priority, m.deliveries)))
        .unwrap();
    assert_eq!(got, Some((b"again".to_vec(), 3, 2)));
    // A failing `keep` leaves the message queued.
    let failed = queue.dequeue_with(|_| -> Result<()> { Err(FileError::Levels(-1)) });
    assert!(failed.is_err());
    assert_eq!(queue.size().unwrap(), 1);
    assert_eq!(queue.dequeue().unwrap().unwrap(), b"first");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torn_record_past_the_tail_is_overwritten() {
    let (dir, queue, reports) = temp_queue("torn");
    queue.enqueue(b"one", 0).unwrap();
    // What a writer killed mid-record leaves: bytes past the tail.
    let seg = queue.segment_path(0, 0);
    let file = OpenOptions::new().write(true).open(&seg).unwrap();
    file.write_all_at(&[0xab; 40], frame::record_len(3))
        .unwrap();
    assert_eq!(queue.items(None).unwrap(), vec![b"one".to_vec()]);
    queue.enqueue(b"two", 0).unwrap();
    assert_eq!(queue.dequeue().unwrap().unwrap(), b"one");
    assert_eq!(queue.dequeue().unwrap().unwrap(), b"two");
    assert_eq!(queue.dequeue().unwrap(), None);
    assert!(reports.lock().is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_import_lands_after_what_was_queued_and_removes_its_files() {
    let (dir, queue, _) = temp_queue("import");
    let claim = dir.join("claim");
    fs::create_dir_all(&claim).unwrap();
    fs::write(claim.join("fffe-000000000001"), b"legacy").unwrap();
    queue.enqueue(b"own", 1).unwrap();
    let messages = vec![(1, b"legacy".to_vec()), (0, b"low".to_vec())];
    queue.import(&messages, &claim).unwrap();
    assert!(!claim.join("fffe-000000000001").exists());
    // Nothing pending afterwards: an empty import changes no tail.
    let plan = dir.join(IMPORT_PLAN);
    let mut locked = queue.locked().unwrap();
    let index = locked.index();
    let tails: Vec<u64> = [0, 1]
        .iter()
        .map(|&p| index.tail(p).load(Ordering::SeqCst))
        .collect();
    drop(locked);
    queue.import(&[], &claim).unwrap(); // an empty plan: a no-op
    locked = queue.locked().unwrap();
    let index = locked.index();
    let again: Vec<u64> = [0, 1]
        .iter()
        .map(|&p| index.tail(p).load(Ordering::SeqCst))
        .collect();
    assert_eq!(tails, again);
    drop(locked);
    assert!(!plan.exists());
    assert_eq!(
        queue.items(None).unwrap(),
        vec![b"own".to_vec(), b"legacy".to_vec(), b"low".to_vec()]
    );
    assert_eq!(queue.size().unwrap(), 3);
    fs::remove_dir_all(&dir).unwrap();
}
