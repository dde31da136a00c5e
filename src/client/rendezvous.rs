//! Rendezvous (highest-random-weight) hashing: a key belongs to the
//! instance with the highest weight `hash(instance id, key)`. Callers that
//! see the same instances agree on every owner without talking to each
//! other, and removing an instance moves only the keys it owned.

use sha2::{Digest as _, Sha256};

/// The weight of `instance` for `key`: the first 8 bytes (big-endian) of
/// SHA-256 over the id's length (u64 LE), the id and the key. Keyless and
/// specified, unlike std's `RandomState` or `DefaultHasher`: gateways of
/// different builds must agree. Never change it without renaming the keys.
#[must_use]
pub fn weight(instance: &str, key: &[u8]) -> u64 {
    let digest = Sha256::new()
        .chain_update((instance.len() as u64).to_le_bytes())
        .chain_update(instance.as_bytes())
        .chain_update(key)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Index of the owner of `key` among `instances` (their ids), or `None`
/// when there are none. Equal weights go to the greater id, so the answer
/// never depends on the order of `instances`.
#[must_use]
pub fn owner<S: AsRef<str>>(key: &[u8], instances: &[S]) -> Option<usize> {
    instances
        .iter()
        .enumerate()
        .max_by_key(|&(_, id)| (weight(id.as_ref(), key), id.as_ref()))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owner_id<'a>(key: &[u8], instances: &'a [String]) -> Option<&'a str> {
        owner(key, instances).map(|i| instances[i].as_str())
    }

    /// 1..=8 distinct instance ids, in some order.
    fn instances() -> impl Strategy<Value = Vec<String>> {
        prop::collection::btree_set("[a-z]{1,6}-[0-9]{1,3}", 1..=8)
            .prop_map(|set| set.into_iter().collect::<Vec<_>>())
            .prop_shuffle()
    }

    fn keys() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..64)
    }

    proptest! {
        #[test]
        fn same_inputs_same_owner(ids in instances(), keys in keys()) {
            for key in &keys {
                let first = owner(key, &ids);
                prop_assert!(first.is_some_and(|i| i < ids.len()));
                prop_assert_eq!(first, owner(key, &ids));
            }
        }

        #[test]
        fn the_order_of_instances_does_not_matter(
            ids in instances(),
            keys in keys(),
            rotate in 0usize..8,
        ) {
            let mut sorted = ids.clone();
            sorted.sort();
            let mut reversed = sorted.clone();
            reversed.reverse();
            let mut rotated = ids.clone();
            rotated.rotate_left(rotate % ids.len());
            for key in &keys {
                let want = owner_id(key, &ids);
                prop_assert_eq!(owner_id(key, &sorted), want);
                prop_assert_eq!(owner_id(key, &reversed), want);
                prop_assert_eq!(owner_id(key, &rotated), want);
            }
        }

        #[test]
        fn removing_an_instance_moves_only_its_keys(
            ids in instances(),
            keys in keys(),
            gone in 0usize..8,
        ) {
            prop_assume!(ids.len() > 1);
            let gone = gone % ids.len();
            let mut left = ids.clone();
            let removed = left.remove(gone);
            for key in &keys {
                let before = owner_id(key, &ids).expect("an owner");
                let after = owner_id(key, &left).expect("an owner");
                if before == removed {
                    prop_assert_ne!(after, removed.as_str());
                } else {
                    prop_assert_eq!(after, before, "a key of a remaining instance moved");
                }
            }
        }

        #[test]
        fn adding_an_instance_moves_keys_only_to_it(
            ids in instances(),
            keys in keys(),
            new in "[A-Z]{1,6}",
        ) {
            let mut more = ids.clone();
            more.push(new.clone());
            for key in &keys {
                let before = owner_id(key, &ids).expect("an owner");
                let after = owner_id(key, &more).expect("an owner");
                prop_assert!(after == before || after == new, "{before} -> {after}");
            }
        }
    }

    #[test]
    fn no_instances_no_owner() {
        assert_eq!(owner::<String>(b"k", &[]), None);
        assert_eq!(owner(b"k", &["only"]), Some(0));
    }

    /// Pinned values: every gateway, whatever its build, must compute these.
    #[test]
    fn weights_are_fixed() {
        let a = weight("cache-127.0.0.1-9006", b"video:v1:abc");
        let b = weight("cache-127.0.0.1-9006", b"video:v1:abd");
        let c = weight("cache-127.0.0.1-9007", b"video:v1:abc");
        // Also computed outside Rust (Python's hashlib) from the definition.
        assert_eq!(
            [a, b, c],
            [
                0x331c_e186_b49d_0da1,
                0x0f4c_38d9_a3d8_b47f,
                0x2ce5_e1f9_4854_e788
            ],
            "{a:#018x} {b:#018x} {c:#018x}"
        );
        // The id's length is part of the input: ("ab", "c") is not ("a", "bc").
        assert_ne!(weight("ab", b"c"), weight("a", b"bc"));
    }

    #[test]
    fn keys_spread_evenly() {
        const KEYS: usize = 12_000;
        for n in [2usize, 3, 5, 8] {
            let ids: Vec<String> = (0..n).map(|i| format!("cache-10.0.0.{i}-9006")).collect();
            let mut counts = vec![0usize; n];
            for k in 0..KEYS {
                let key = format!("video:v1:{k:016x}");
                counts[owner(key.as_bytes(), &ids).expect("an owner")] += 1;
            }
            // Each count is binomial(KEYS, 1/n): allow six standard deviations.
            let p = 1.0 / n as f64;
            let fair = KEYS as f64 * p;
            let slack = 6.0 * (KEYS as f64 * p * (1.0 - p)).sqrt();
            assert!(
                counts.iter().all(|&c| (c as f64 - fair).abs() < slack),
                "{n} instances: {counts:?}, fair {fair}, slack {slack:.0}"
            );
        }
    }
}
