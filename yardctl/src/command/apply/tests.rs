//! Cutting manifests into batches.

use super::cut;

#[test]
fn batches_hold_at_most_the_item_limit() {
    assert_eq!(cut(&[10; 2500], 1000, usize::MAX), [1000, 1000, 500]);
    assert_eq!(cut(&[10; 1000], 1000, usize::MAX), [1000]);
    assert!(cut(&[], 1000, 100).is_empty());
}

#[test]
fn batches_stay_under_the_byte_budget() {
    assert_eq!(cut(&[40, 40, 40, 40, 40], 1000, 100), [2, 2, 1]);
    assert_eq!(
        cut(&[50, 50, 50], 1000, 100),
        [2, 1],
        "exactly the budget fits"
    );
}

#[test]
fn an_item_over_the_budget_goes_alone() {
    assert_eq!(cut(&[10, 500, 10], 1000, 100), [1, 1, 1]);
}
