//! Power of two choices: sample two distinct candidates at random, take the
//! less loaded. Load is the number of calls in flight on each endpoint.

use rand::Rng;

/// Index of the chosen candidate among `loads`, or `None` when empty.
pub fn p2c(loads: &[u32], rng: &mut impl Rng) -> Option<usize> {
    match loads.len() {
        0 => None,
        1 => Some(0),
        n => {
            let a = rng.gen_range(0..n);
            let mut b = rng.gen_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            Some(if loads[b] < loads[a] { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    proptest! {
        #[test]
        fn picks_a_candidate_never_the_unique_worst(loads in prop::collection::vec(0u32..100, 0..20), seed in any::<u64>()) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let pick = p2c(&loads, &mut rng);
            prop_assert_eq!(pick.is_some(), !loads.is_empty());
            if let Some(i) = pick {
                prop_assert!(i < loads.len());
                let max = *loads.iter().max().unwrap();
                let worst: Vec<_> = loads.iter().enumerate().filter(|(_, l)| **l == max).collect();
                if loads.len() > 1 && worst.len() == 1 && loads.iter().any(|l| *l < max) {
                    prop_assert!(loads[i] < max, "the single most loaded endpoint is never chosen");
                }
            }
        }
    }

    #[test]
    fn spreads_over_equal_endpoints() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            hits[p2c(&[0, 0, 0, 0], &mut rng).unwrap()] += 1;
        }
        assert!(hits.iter().all(|h| *h > 800), "{hits:?}");
    }
}
