//! Tests of the results and counters stores.

use super::*;
use sys::{FileError, Scratch};

/// The stores of a FileStorage laid out in a scratch directory.
trait Stores {
    fn results(&self, levels: usize) -> Results;
    fn counters(&self) -> Counters;
    fn tmp_entries(&self) -> usize;
}

impl Stores for Scratch {
    fn results(&self, levels: usize) -> Results {
        // FileStorage creates tmp/ when it opens, before anything else runs.
        fs::create_dir_all(self.0.join("tmp")).unwrap();
        let tmp = TmpDir::new(self.0.join("tmp"), false);
        Results::new(self.0.join("results"), levels, tmp).unwrap()
    }

    fn counters(&self) -> Counters {
        Counters::new(self.0.join("counters")).unwrap()
    }

    fn tmp_entries(&self) -> usize {
        fs::read_dir(self.0.join("tmp")).map_or(0, |entries| entries.count())
    }
}

fn value(v: &[u8]) -> Option<Vec<u8>> {
    Some(v.to_vec())
}

#[test]
fn peek_keeps_the_value_and_pop_takes_it() {
    let scratch = Scratch::new("kv-peek-pop");
    let results = scratch.results(2);
    assert_eq!(results.peek(b"k").unwrap(), None);
    assert_eq!(results.pop(b"k").unwrap(), None);
    assert!(!results.has(b"k"));

    results.put(b"k", b"value").unwrap();
    assert!(results.has(b"k"));
    assert_eq!(results.peek(b"k").unwrap(), value(b"value"));
    assert_eq!(results.peek(b"k").unwrap(), value(b"value"));
    assert_eq!(results.pop(b"k").unwrap(), value(b"value"));
    assert_eq!(results.pop(b"k").unwrap(), None);
    assert!(!results.has(b"k"));
    assert_eq!(scratch.tmp_entries(), 0);
}

#[test]
fn pop_takes_a_value_after_tmp_was_removed_under_the_store() {
    let scratch = Scratch::new("kv-pop-no-tmp");
    let results = scratch.results(2);
    results.put(b"k", b"value").unwrap();
    fs::remove_dir_all(scratch.0.join("tmp")).unwrap();
    assert_eq!(results.pop(b"k").unwrap(), value(b"value"));
    assert!(!results.has(b"k"));
    assert_eq!(results.pop(b"k").unwrap(), None);
}

#[test]
fn put_replaces_a_value_but_put_if_empty_does_not() {
    let scratch = Scratch::new("kv-overwrite");
    let results = scratch.results(2);
    results.put(b"k", b"first").unwrap();
    results.put(b"k", b"second").unwrap();
    assert_eq!(results.peek(b"k").unwrap(), value(b"second"));

    assert!(!results.put_if_empty(b"k", b"third").unwrap());
    assert_eq!(results.peek(b"k").unwrap(), value(b"second"));
    // An empty value is a value, not a missing one.
    assert!(results.put_if_empty(b"fresh", b"").unwrap());
    assert_eq!(results.peek(b"fresh").unwrap(), value(b""));
    assert!(!results.put_if_empty(b"fresh", b"again").unwrap());
    // The links' sources and the losing writes leave nothing in tmp/.
    assert_eq!(scratch.tmp_entries(), 0);
}

#[test]
fn a_result_file_is_named_by_the_md5_of_its_key_and_holds_the_key() {
    let scratch = Scratch::new("kv-layout");
    // md5(b"key") = 3c6e0b8a9c15224a8228b9a98ca1531d
    let hash = "3c6e0b8a9c15224a8228b9a98ca1531d";
    let nested = scratch.results(2);
    let path = nested.path_for_key(b"key");
    assert_eq!(
        path,
        scratch.0.join("results").join("3").join("c").join(hash)
    );
    nested.put(b"key", b"value").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"\x00\x00\x00\x03keyvalue");

    let flat = scratch.results(0);
    assert_eq!(
        flat.path_for_key(b"key"),
        scratch.0.join("results").join(hash)
    );
}

#[test]
fn delete_says_whether_there_was_a_value() {
    let scratch = Scratch::new("kv-delete");
    let results = scratch.results(1);
    assert!(!results.delete(b"k").unwrap());
    results.put(b"k", b"v").unwrap();
    assert!(results.delete(b"k").unwrap());
    assert!(!results.has(b"k"));
    assert!(!results.delete(b"k").unwrap());
}

#[test]
fn a_damaged_result_is_an_error_and_stays_for_inspection() {
    let scratch = Scratch::new("kv-damaged");
    let results = scratch.results(2);
    let path = results.path_for_key(b"k");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, b"\x00\x00").unwrap(); // shorter than its own length prefix
    assert!(matches!(results.peek(b"k"), Err(FileError::Damaged { .. })));
    assert!(matches!(results.pop(b"k"), Err(FileError::Damaged { .. })));
    assert_eq!(fs::read(&path).unwrap(), b"\x00\x00");

    // A well-formed file holding some other key is damage too, not a value of `k`.
    results.put(b"other", b"v").unwrap();
    fs::rename(results.path_for_key(b"other"), &path).unwrap();
    match results.peek(b"k") {
        Err(FileError::Damaged { path: named, .. }) => assert_eq!(named, path),
        other => panic!("expected a damaged-file error, got {other:?}"),
    }
}

#[test]
fn items_and_size_count_only_result_files() {
    let scratch = Scratch::new("kv-items");
    let results = scratch.results(2);
    assert_eq!(results.size().unwrap(), 0);
    results.put(b"a", b"1").unwrap();
    results.put(b"b", b"2").unwrap();
    // A write in progress (or left by a crash) is not a result.
    let dir = results.path_for_key(b"a");
    fs::write(dir.parent().unwrap().join("123.tmp"), b"junk").unwrap();
    assert_eq!(results.size().unwrap(), 2);
    let mut items = results.items().unwrap();
    items.sort();
    assert_eq!(
        items,
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec())
        ]
    );

    // A result file moved to another key's name is left out of the items.
    let misplaced = results.path_for_key(b"c");
    fs::create_dir_all(misplaced.parent().unwrap()).unwrap();
    fs::rename(results.path_for_key(b"b"), misplaced).unwrap();
    assert_eq!(
        results.items().unwrap(),
        vec![(b"a".to_vec(), b"1".to_vec())]
    );
}

#[test]
fn flush_removes_every_result() {
    let scratch = Scratch::new("kv-flush");
    let results = scratch.results(2);
    for n in 0..20u8 {
        results.put(&[n], &[n, n]).unwrap();
    }
    assert_eq!(results.size().unwrap(), 20);
    results.flush().unwrap();
    assert_eq!(results.size().unwrap(), 0);
    assert_eq!(results.peek(&[3]).unwrap(), None);
    assert!(scratch.0.join("results").is_dir());
    // Usable again afterwards.
    results.put(b"k", b"v").unwrap();
    assert_eq!(results.peek(b"k").unwrap(), value(b"v"));
}

#[test]
fn wait_returns_true_for_a_stored_value_and_false_at_its_timeout() {
    let scratch = Scratch::new("kv-wait");
    let results = scratch.results(2);
    let watchers = Watchers::default();
    results.put(b"here", b"v").unwrap();
    assert!(results.wait(&watchers, b"here", Duration::from_secs(10), 1.5, 0.05));

    let timeout = Duration::from_millis(50);
    let begin = Instant::now();
    assert!(!results.wait(&watchers, b"absent", timeout, 1.5, 0.05));
    assert!(begin.elapsed() >= timeout);
}

#[test]
fn wait_ends_when_another_thread_stores_the_value() {
    let scratch = Scratch::new("kv-wait-woken");
    let results = scratch.results(2);
    let watchers = Watchers::default();
    let begin = Instant::now();
    let found = std::thread::scope(|s| {
        let waiter = s.spawn(|| results.wait(&watchers, b"k", Duration::from_secs(30), 1.5, 0.05));
        results.put(b"k", b"v").unwrap();
        waiter.join().unwrap()
    });
    assert!(found);
    // Far below the 30 s timeout: the value ended the wait.
    assert!(begin.elapsed() < Duration::from_secs(10));
}

#[test]
fn counters_start_at_zero_and_add_signed_amounts() {
    let scratch = Scratch::new("kv-counters");
    let counters = scratch.counters();
    assert_eq!(counters.incr(b"c", 1).unwrap(), 1);
    assert_eq!(counters.incr(b"c", 5).unwrap(), 6);
    assert_eq!(counters.incr(b"c", -10).unwrap(), -4);
    assert_eq!(counters.incr(b"other", 0).unwrap(), 0);
    assert_eq!(counters.incr(b"c", 0).unwrap(), -4);
}

#[test]
fn a_counter_file_is_decimal_text_of_a_fixed_width() {
    let scratch = Scratch::new("kv-counter-text");
    let counters = scratch.counters();
    let path = counters.path_for_key(b"c");
    assert_eq!(path, scratch.0.join("counters").join(hex_md5(b"c")));
    counters.incr(b"c", -42).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), format!("{:>20}", -42));

    // Text another writer left, shorter or longer than ours, is read and rewritten.
    fs::write(&path, "7").unwrap();
    assert_eq!(counters.incr(b"c", 1).unwrap(), 8);
    assert_eq!(fs::read_to_string(&path).unwrap(), format!("{:>20}", 8));
    fs::write(&path, format!("{:>30}", 5)).unwrap();
    assert_eq!(counters.incr(b"c", 1).unwrap(), 6);
    assert_eq!(fs::read_to_string(&path).unwrap(), format!("{:>20}", 6));
}

#[test]
fn delete_and_flush_start_counters_again_from_zero() {
    let scratch = Scratch::new("kv-counter-reset");
    let counters = scratch.counters();
    counters.incr(b"a", 3).unwrap();
    counters.incr(b"b", 4).unwrap();
    counters.delete(b"a").unwrap();
    counters.delete(b"never-used").unwrap();
    assert_eq!(counters.incr(b"a", 1).unwrap(), 1);
    assert_eq!(counters.incr(b"b", 1).unwrap(), 5);
    counters.flush().unwrap();
    assert_eq!(counters.incr(b"a", 1).unwrap(), 1);
    assert_eq!(counters.incr(b"b", 1).unwrap(), 1);
}

#[test]
fn a_counter_that_is_not_a_number_is_reported_and_left_alone() {
    let scratch = Scratch::new("kv-counter-damaged");
    let counters = scratch.counters();
    let path = counters.path_for_key(b"c");
    fs::write(&path, "twelve").unwrap();
    assert!(matches!(
        counters.incr(b"c", 1),
        Err(FileError::Damaged { .. })
    ));
    assert_eq!(fs::read_to_string(&path).unwrap(), "twelve");
}

#[test]
fn an_overflowing_increment_fails_and_keeps_the_value() {
    let scratch = Scratch::new("kv-counter-overflow");
    let counters = scratch.counters();
    assert_eq!(counters.incr(b"c", i64::MAX).unwrap(), i64::MAX);
    match counters.incr(b"c", 1) {
        Err(FileError::Io { source, .. }) => {
            assert_eq!(source.kind(), io::ErrorKind::InvalidData)
        }
        other => panic!("expected an overflow error, got {other:?}"),
    }
    assert_eq!(counters.incr(b"c", 0).unwrap(), i64::MAX);
    assert_eq!(counters.incr(b"c", i64::MIN).unwrap(), -1);
}

#[test]
fn concurrent_increments_are_all_counted() {
    let scratch = Scratch::new("kv-counter-threads");
    let counters = scratch.counters();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..200 {
                    counters.incr(b"c", 1).unwrap();
                }
            });
        }
    });
    assert_eq!(counters.incr(b"c", 0).unwrap(), 800);
}
