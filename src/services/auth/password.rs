//! Password hashing: Argon2id with the crate's defaults (the OWASP
//! recommendation: 19 MiB, 2 passes, 1 lane), salts from the runtime's rng.
//! CPU-heavy and 19 MiB each: callers run it through [`Hashing`], which
//! runs a bounded number at once on the blocking pool and refuses past a
//! bounded queue, so a flood of sign-ups or log-ins cannot grow the
//! process's memory with it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use super::error::AuthError;

/// Fewest bytes of a password.
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Most bytes of a password (Argon2 takes any length; this bounds the work).
pub const MAX_PASSWORD_BYTES: usize = 128;
/// Bytes of a salt.
const SALT_BYTES: usize = 16;

/// Hashes (or verifications) run at once at most: each holds 19 MiB
/// while it runs, and a core is busy for it.
pub const MAX_HASHING: usize = 4;
/// Calls waiting for a turn at most; more are refused at once.
pub const MAX_WAITING: usize = 64;

/// Where hashes run: at most [`MAX_HASHING`] at once on the blocking
/// pool, at most [`MAX_WAITING`] calls waiting their turn.
#[derive(Debug)]
pub struct Hashing {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    /// The working memory of hashes that ran, for the next ones: no more
    /// than run at once. Reusing it keeps the process's memory at that
    /// (the allocator, given 19 MiB freed on one thread and asked for 19
    /// MiB on another, would often keep both: 1 GiB resident after a
    /// flood of sign-ups, measured by tests/signup_flood.rs).
    memories: Arc<std::sync::Mutex<Vec<Memory>>>,
}

/// A hash's working memory: Argon2's blocks (19 MiB with OWASP's
/// parameters), kept from one hash to the next.
pub type Memory = Vec<Block>;

impl Default for Hashing {
    fn default() -> Self {
        Self::new(MAX_HASHING, MAX_WAITING)
    }
}

/// Counts a waiting call while it lives (a call dropped while waiting
/// gives its place back).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hashing {
    /// `running` at once, `waiting` in line.
    #[must_use]
    pub fn new(running: usize, waiting: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(running.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting: waiting,
            memories: Arc::default(),
        }
    }

    /// Runs `work` on the blocking pool when its turn comes. The turn is
    /// held by the work itself: a caller that goes away meanwhile does not
    /// let another hash start while its own still runs.
    ///
    /// # Errors
    /// [`AuthError::Busy`] when [`MAX_WAITING`] calls already wait;
    /// [`AuthError::Task`] if the work panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Memory) -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(AuthError::Busy);
                }
                let _waiting = Waiting(&self.waiting);
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| AuthError::Busy)?
            }
        };
        let memories = self.memories.clone();
        Ok(crate::rt::blocking(move || {
            let _turn = permit;
            let lock = || {
                memories
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            };
            let mut memory = lock().pop().unwrap_or_default();
            let out = work(&mut memory);
            lock().push(memory);
            out
        })
        .await?)
    }
}

/// The hasher: OWASP's parameters; in fuzzing builds (`cargo fuzz` sets
/// `--cfg fuzzing`) and in the simulator the cheapest ones, so a fuzzer or
/// a simulated cluster spends its time on the handlers rather than on
/// 19 MiB hashes. Verification reads the
/// parameters from the stored hash either way.
fn hasher() -> Argon2<'static> {
    if cfg!(any(fuzzing, madsim)) {
        let cheap = argon2::Params::new(argon2::Params::MIN_M_COST, 1, 1, None).unwrap_or_default();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, cheap)
    } else {
        Argon2::default()
    }
}

/// The PHC string (`$argon2id$v=19$m=...`) of `password` with a fresh salt.
///
/// # Errors
/// [`AuthError::Hash`] if Argon2 refuses its parameters (a bug).
pub fn hash(password: &str) -> Result<String, AuthError> {
    hash_in(password, &mut Memory::new())
}

/// [`hash`] working in `memory`.
///
/// # Errors
/// As [`hash`].
pub fn hash_in(password: &str, memory: &mut Memory) -> Result<String, AuthError> {
    let mut salt = [0u8; SALT_BYTES];
    rand::RngCore::fill_bytes(&mut crate::rt::rng(), &mut salt);
    hash_salted(password, &salt, memory)
}

/// Runs `argon` over `password` and `salt` into `out`, in `memory` (grown
/// to the parameters' block count if need be).
fn run_argon(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    memory: &mut Memory,
) -> Result<(), argon2::Error> {
    let blocks = argon.params().block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    argon.hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
}

fn hash_salted(password: &str, salt: &[u8], memory: &mut Memory) -> Result<String, AuthError> {
    let argon = hasher();
    let params = argon.params();
    let mut out = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    run_argon(&argon, password.as_bytes(), salt, &mut out, memory)
        .map_err(|e| AuthError::Hash(e.into()))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(AuthError::Hash)?,
        salt: Some(Salt::new(salt).map_err(|e| AuthError::Hash(e.into()))?),
        hash: Some(Output::new(&out).map_err(|e| AuthError::Hash(e.into()))?),
    };
    Ok(phc.to_string())
}

/// True if `password` matches the PHC string `stored`; false for a
/// mismatch or a stored value that does not parse.
#[must_use]
pub fn verify(password: &str, stored: &str) -> bool {
    verify_in(password, stored, &mut Memory::new())
}

/// [`verify`] working in `memory`. The parameters are the stored hash's
/// (only this service writes them).
#[must_use]
pub fn verify_in(password: &str, stored: &str, memory: &mut Memory) -> bool {
    let Ok(phc) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&phc) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(phc.algorithm.as_str()) else {
        return false;
    };
    let Ok(version) = phc
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    if run_argon(&argon, password.as_bytes(), salt.as_ref(), &mut out, memory).is_err() {
        return false;
    }
    // Output's equality is constant-time.
    Output::new(&out).is_ok_and(|computed| &computed == expected)
}

/// A hash to verify against when the email is unknown, so an unknown email
/// costs the same time as a wrong password. Computed once, on first use,
/// without drawing randomness: what it hashes never matters (its result is
/// ignored), and a once-per-process draw would make the simulator's runs of
/// one seed differ between the first and later runs in a process.
///
/// # Errors
/// As [`hash`].
pub fn decoy() -> Result<&'static str, AuthError> {
    static DECOY: OnceLock<String> = OnceLock::new();
    if let Some(h) = DECOY.get() {
        return Ok(h);
    }
    let h = hash_salted(
        "decoy: never a password",
        &[0x5a; SALT_BYTES],
        &mut Memory::new(),
    )?;
    Ok(DECOY.get_or_init(|| h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashes_run_a_bounded_number_at_once_and_a_flood_is_refused() {
        use std::sync::atomic::AtomicUsize;
        let hashing = Arc::new(Hashing::new(2, 3));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(std::sync::Mutex::new(gate));
        let calls: Vec<_> = (0..5)
            .map(|_| {
                let (hashing, running, most, gate) =
                    (hashing.clone(), running.clone(), most.clone(), gate.clone());
                crate::rt::spawn(async move {
                    hashing
                        .run(move |_| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            let _ = gate.lock().unwrap().recv();
                            running.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                })
            })
            .collect();
        // Two run, three wait: a sixth is refused at once.
        while hashing.waiting.load(Ordering::SeqCst) < 3 || running.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(hashing.run(|_| ()).await, Err(AuthError::Busy)));
        for _ in 0..5 {
            release.send(()).unwrap();
        }
        for call in calls {
            call.await.unwrap().expect("ran");
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "never more than two at once"
        );
        assert_eq!(hashing.waiting.load(Ordering::SeqCst), 0);
        hashing.run(|_| ()).await.expect("room again");
    }

    #[test]
    fn a_hash_verifies_its_password_only() {
        let start = crate::rt::now();
        let h = hash("correct horse").expect("hash");
        let hashed = start.elapsed();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(!h.contains("correct horse"));
        let start = crate::rt::now();
        assert!(verify("correct horse", &h));
        let verified = start.elapsed();
        assert!(!verify("correct horsE", &h));
        assert!(!verify("correct horse", "not a hash"));
        assert_ne!(h, hash("correct horse").expect("hash"), "salted");
        eprintln!("argon2id hash {hashed:?}, verify {verified:?}");
        assert!(!verify("x", decoy().expect("decoy")));
    }
}
