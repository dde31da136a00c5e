//! The whole cluster under swarm faults: all nine services (two instances
//! of the stateless ones), the registry node and the broker node; a user
//! acting through the gateways; checkers of every invariant asserted as
//! events happen (breaker: on every call outcome and transition, in every
//! node's pool; retry: every decision, and the budget over every window;
//! registration: after every registry wipe; one transcode job per video: on
//! every JobSubmitted; one success per job, two workers racing for leases
//! when the job queue is JetStream: on every JobCompleted; end to end: the auditor's model of every answer, and
//! the user never refused for load it did not cause while, in half the
//! seeds, a stalled client holds more requests open on each gateway than its API budget;
//! the call policy: an intruder with the worker's identity calling what the
//! policy closes to it is never answered by a service; on the seeds that
//! run mutual TLS, its calls with a certificate of another CA, an expired
//! one or none never reach a service, while every node's certificate is
//! renewed every 10 s of a 30 s life).
//!
//! Safety phase: [`SAFETY`] of faults drawn by the seed. Liveness phase:
//! after every fault has healed, within [`LIVENESS_BOUND`] every service is
//! registered again and every acknowledged video has settled (ready and
//! playable, or failed after its job gave up; deleted ones gone; titles as
//! last acknowledged). On failure the run's timeline is written as HTML
//! (`SWARM_TIMELINE_DIR`, default `target/sim-timelines`) and the seed's
//! replay command is printed.
//!
//! `STREAMGATE_INJECT_BUG=<name>` switches on one deliberate bug (see
//! `streamgate::rt::faults::Bug`); `ci/sim-bugs` shows each is caught.
//! `ci/sim-shrink <seed>` narrows a failing seed's faults down to those it
//! needs (`SWARM_KEEP`).

pub(crate) mod certs;
mod check;
mod cluster;
mod coverage;
mod disk;
mod disk_faults;
mod faults;
mod intruder;
mod orphans;
mod stalled;
mod timeline;
mod workload;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::Handle;
use rand::Rng as _;
use streamgate::bus::events::{JobCompleted, JobSubmitted, MetadataUpdated, Payload as _};
use streamgate::bus::{EventBus as _, EventType, handler};
use streamgate::rt;
use streamgate::services::ServiceKind;

use crate::broker::SimBus;
use crate::trace::announce;
use cluster::{BROKER, CLIENT, Cluster, INTRUDER, STALLED};
use faults::{Plan, Shared};
use timeline::{Kind, Timeline};

/// How long faults strike.
const SAFETY: Duration = Duration::from_secs(40);
/// How long after the last fault healed the cluster has to settle.
const LIVENESS_BOUND: Duration = Duration::from_secs(150);
/// How long after the registry came back (empty) every undisturbed service
/// must be registered again: a heartbeat interval to notice, one round trip
/// to register, one check interval to turn passing, and slack.
const REREGISTRATION_BOUND: Duration = Duration::from_secs(5);

/// What to write when the run fails.
struct Autopsy {
    tl: Timeline,
    seed: u64,
    header: String,
}

thread_local! {
    /// The run on this thread (madsim runs a seed on one thread).
    static RUN: std::cell::RefCell<Option<Autopsy>> = const { std::cell::RefCell::new(None) };
}

impl Autopsy {
    /// Registers the run; a panic anywhere in it (a checker, a node, the
    /// workload) writes its timeline as HTML. madsim unwinds out of the
    /// runtime without dropping the run's futures, so a panic hook is the
    /// one place that sees every failure.
    fn install(self) {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if let Some(run) = RUN.with(|r| r.borrow_mut().take()) {
                    run.write(&info.to_string());
                }
                previous(info);
            }));
        });
        RUN.with(|r| *r.borrow_mut() = Some(self));
    }

    /// Ends the run without failure.
    fn finish() {
        if let Some(run) = RUN.with(|r| r.borrow_mut().take()) {
            cluster::clean_up(run.seed);
            if std::env::var_os("SWARM_TIMELINE_ALWAYS").is_some() {
                run.write("passed");
            }
        }
    }

    fn write(&self, panic: &str) {
        let seed = self.seed;
        cluster::clean_up(seed);
        let dir = std::env::var_os("SWARM_TIMELINE_DIR")
            .map_or_else(|| PathBuf::from("target/sim-timelines"), PathBuf::from);
        let header = format!("{}\n{panic}", self.header);
        match self.tl.write_html(&dir, seed, &header) {
            Ok(path) => println!("swarm seed {seed}: timeline in {}", path.display()),
            Err(e) => println!("swarm seed {seed}: timeline not written: {e}"),
        }
        println!(
            "replay: MADSIM_TEST_SEED={seed} cargo test --features sim  (or: MADSIM_TEST_SEED={seed} cargo sim swarm)"
        );
    }
}

/// After every registry comeback, checks that every service not disturbed
/// since re-registered within [`REREGISTRATION_BOUND`].
async fn check_registrations(cluster: Cluster, tl: Timeline, broken: Shared) {
    let registry = cluster.registry();
    let mut checked = None;
    loop {
        rt::sleep(Duration::from_millis(500)).await;
        let (back, network) = {
            let b = broken.lock().expect("faults");
            (b.registry_back, b.network_disturbed)
        };
        let Some(back) = back else { continue };
        if checked == Some(back) || tl.elapsed() < back + REREGISTRATION_BOUND {
            continue;
        }
        checked = Some(back);
        if network.is_some_and(|n| n + REREGISTRATION_BOUND >= back) {
            continue;
        }
        let mut missing = Vec::new();
        let mut abandoned = false;
        for kind in ServiceKind::ALL {
            let Ok(found) = registry.discover(kind.name()).await else {
                continue;
            };
            let b = broken.lock().expect("faults");
            // The registry went again, or the network was disturbed while
            // the check ran (slow heartbeats may let an entry lapse).
            if b.registry_down
                || b.registry_back != Some(back)
                || b.network
                || b.network_disturbed != network
            {
                abandoned = true;
                break;
            }
            for m in cluster.members.iter().filter(|m| m.kind == kind) {
                if !b.disturbed_since(m.id, back.saturating_sub(REREGISTRATION_BOUND))
                    && !found.iter().any(|i| i.address == m.ip.to_string())
                {
                    missing.push(m.name.clone());
                }
            }
        }
        if abandoned {
            continue;
        }
        rt::coverage::hit(coverage::REGISTRATION);
        if missing.is_empty() {
            tl.record(
                "registry",
                Kind::Check,
                "every undisturbed service registered again",
            );
        } else {
            tl.violated(
                "registry",
                format_args!(
                    "{missing:?} not registered {REREGISTRATION_BOUND:?} after the registry came back"
                ),
            );
        }
    }
}

/// Every member registered and passing, or who is not.
async fn unregistered(cluster: &Cluster) -> Vec<String> {
    let registry = cluster.registry();
    let mut missing = Vec::new();
    for kind in ServiceKind::ALL {
        let found = registry.discover(kind.name()).await.unwrap_or_default();
        for m in cluster.members.iter().filter(|m| m.kind == kind) {
            if !found.iter().any(|i| i.address == m.ip.to_string()) {
                missing.push(m.name.clone());
            }
        }
    }
    missing
}

/// Follows the bus: one transcode job per video, one success per job; video
/// states on the timeline.
async fn tap(tl: &Timeline) -> Vec<streamgate::bus::Subscription> {
    let bus = SimBus::new(BROKER);
    let jobs = Arc::new(Mutex::new(check::OneJobPerVideo::default()));
    let t = tl.clone();
    let on_job = handler(move |e| {
        let (t, jobs) = (t.clone(), jobs.clone());
        async move {
            let p = JobSubmitted::from_event(&e)?;
            if let Some(video) = &p.video_id {
                rt::coverage::hit(coverage::ONE_JOB);
                let verdict = jobs.lock().expect("jobs").observe(video, &p.job_id);
                match verdict {
                    Ok(()) => t.record(
                        "worker-0",
                        Kind::State,
                        format_args!("job {} submitted", p.job_id),
                    ),
                    Err(msg) => t.violated("worker-0", msg),
                }
            }
            Ok(())
        }
    });
    let t = tl.clone();
    let successes = Arc::new(Mutex::new(check::OneSuccessPerJob::default()));
    let on_completed = handler(move |e| {
        let (t, successes) = (t.clone(), successes.clone());
        async move {
            let p = JobCompleted::from_event(&e)?;
            rt::coverage::hit(coverage::ONE_SUCCESS);
            let verdict = successes.lock().expect("jobs").observe(&p.job_id, &e.id);
            match verdict {
                Ok(()) => t.record(
                    "worker-0",
                    Kind::State,
                    format_args!("job {} succeeded", p.job_id),
                ),
                Err(msg) => t.violated("worker-0", msg),
            }
            Ok(())
        }
    });
    let t = tl.clone();
    let on_update = handler(move |e| {
        let t = t.clone();
        async move {
            let p = MetadataUpdated::from_event(&e)?;
            let id = p.video_id.get(..8).unwrap_or(&p.video_id);
            t.record(
                "metadata-0",
                Kind::State,
                format_args!("video {id}: {}", p.state),
            );
            Ok(())
        }
    });
    let mut subs = Vec::new();
    for (subject, h) in [
        (EventType::JobSubmitted.subject(), on_job),
        (EventType::JobCompleted.subject(), on_completed),
        (EventType::MetadataUpdated.subject(), on_update),
    ] {
        loop {
            match bus.subscribe(subject, None, h.clone()).await {
                Ok(sub) => {
                    subs.push(sub);
                    break;
                }
                Err(_) => rt::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    subs
}

#[madsim::test]
async fn swarm() {
    let _progress = announce("swarm");
    // `SWARM_LOG=warn,streamgate=info`: the services' own logs (tracing),
    // to see why a seed fails.
    if let Ok(filter) = std::env::var("SWARM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init();
    }
    rt::coverage::begin_seed();
    let tl = Timeline::new();
    let plan = Plan::draw();
    let bug = streamgate::rt::faults::Bug::ALL
        .into_iter()
        .find(|b| streamgate::rt::faults::injected(*b));
    let mut header = format!(
        "{}\ninjected bug: {}",
        plan.describe(),
        bug.map_or("none", |b| b.name())
    );
    if let Ok(keep) = std::env::var("SWARM_KEEP") {
        header.push_str(&format!(
            "\nonly faults {keep} of the schedule (SWARM_KEEP)"
        ));
    }
    Autopsy {
        tl: tl.clone(),
        seed: Handle::current().seed(),
        header,
    }
    .install();
    tl.print("swarm", Kind::Check, plan.describe());
    let cluster = cluster::start(&tl, &plan);
    let client = Handle::current()
        .create_node()
        .name("client")
        .ip(CLIENT)
        .build();
    let intruder_node = Handle::current()
        .create_node()
        .name("intruder")
        .ip(INTRUDER)
        .build();
    let stalled_node = plan.stalled_clients.then(|| {
        Handle::current()
            .create_node()
            .name("stalled")
            .ip(STALLED)
            .build()
    });
    client
        .spawn(async move {
            let broken: Shared = Arc::default();
            let _subs = tap(&tl).await;
            let checker = rt::spawn(check_registrations(cluster.clone(), tl.clone(), broken.clone()));
            // Every node's certificate renewed while the run goes on.
            let _renewer = cluster.ca.clone().map(|ca| {
                let nodes = cluster
                    .members
                    .iter()
                    .filter_map(|m| Some((m.name.clone(), m.tls.clone()?)))
                    .collect();
                rt::spawn(certs::renew(ca, nodes, tl.clone()))
            });
            let injector = rt::spawn(faults::inject(
                cluster.clone(),
                plan.clone(),
                tl.clone(),
                broken.clone(),
                SAFETY,
            ));

            // Safety: the user acts while faults strike.
            let mut user =
                workload::User::sign_up(tl.clone(), cluster.gateways(), SAFETY).await;
            // Once the user is in, the stalled client holds requests open
            // until the faults end.
            let stalled = stalled_node
                .map(|node| node.spawn(stalled::run(cluster.gateways(), tl.clone(), SAFETY)));
            let intruder =
                intruder_node.spawn(intruder::run(cluster.clone(), tl.clone(), SAFETY));
            // buggify once the cluster is up, until healing.
            if plan.buggify {
                streamgate::rt::faults::set_buggify(true);
            }
            let idle = std::env::var_os("SWARM_IDLE").is_some();
            while tl.elapsed() < SAFETY {
                if !idle {
                    user.act().await;
                }
                rt::sleep(Duration::from_millis(rt::rng().gen_range(50..600))).await;
            }
            injector.await.expect("injector");
            if let Some(stalled) = stalled {
                stalled.await.expect("stalled client");
            }
            intruder.await.expect("intruder");
            while !faults::all_healed(&broken) {
                rt::sleep(Duration::from_millis(100)).await;
            }
            streamgate::rt::faults::set_buggify(false);
            let healed = tl.elapsed();
            tl.print("swarm", Kind::Heal, "every fault healed; liveness phase");

            // Liveness: everything settles within the bound.
            let mut pending: BTreeSet<String> = user.videos.keys().cloned().collect();
            rt::coverage::hits(coverage::SETTLED, pending.len() as u64);
            let mut why = String::new();
            loop {
                let missing = unregistered(&cluster).await;
                let mut still = BTreeSet::new();
                for id in &pending {
                    if let Err(e) = user.settled(id).await {
                        why = format!("video {id}: {e}");
                        still.insert(id.clone());
                    }
                }
                pending = still;
                if missing.is_empty() && pending.is_empty() {
                    break;
                }
                if !missing.is_empty() {
                    why = format!("not registered: {missing:?}");
                }
                if tl.elapsed() - healed > LIVENESS_BOUND {
                    tl.violated(
                        "swarm",
                        format_args!(
                            "not settled {LIVENESS_BOUND:?} after healing ({} videos left; {why})",
                            pending.len()
                        ),
                    );
                }
                rt::sleep(Duration::from_secs(1)).await;
            }
            let listed = loop {
                match user.listed().await {
                    Ok(l) => break l,
                    Err(e) if tl.elapsed() - healed > LIVENESS_BOUND => {
                        tl.violated("swarm", format_args!("list failed after healing: {e}"))
                    }
                    Err(_) => rt::sleep(Duration::from_secs(1)).await,
                }
            };
            let alive = user
                .videos
                .iter()
                .filter(|(_, v)| !v.deleted && !v.maybe_deleted)
                .map(|(id, _)| id);
            for id in alive {
                if !listed.contains(id) {
                    tl.violated("swarm", format_args!("video {id} missing from the list"));
                }
            }
            if let Some(db) = &cluster.catalog_db {
                rt::coverage::hit(coverage::ONE_APPLICATION);
                let twice = db.applied_twice();
                if !twice.is_empty() {
                    tl.violated(
                        "database",
                        format_args!("events applied twice to the catalog: {twice:?}"),
                    );
                }
            }
            let catalog: BTreeSet<String> = listed.iter().cloned().collect();
            let grace = cluster::orphan_sweep(cluster.db.is_some()).grace;
            orphans::check(&cluster.blobs, &catalog, grace, &tl).await;
            let unknown = listed.iter().filter(|id| !user.videos.contains_key(*id)).count();
            if unknown > user.maybe_uploads as usize {
                tl.violated(
                    "swarm",
                    format_args!(
                        "{unknown} listed videos nobody uploaded ({} uploads unanswered)",
                        user.maybe_uploads
                    ),
                );
            }
            checker.abort();
            rt::coverage::hits(coverage::AUDITOR, u64::from(user.ok));
            rt::coverage::hits(coverage::UNCLEAR, u64::from(user.unclear));
            let faults_struck = broken.lock().expect("faults").count;
            tl.print(
                "swarm",
                Kind::Check,
                format_args!(
                    "settled {:?} after healing: {} videos ({} deleted), {faults_struck} faults, {} answers as predicted, {} unclear",
                    tl.elapsed() - healed,
                    user.videos.len(),
                    user.videos.values().filter(|v| v.deleted).count(),
                    user.ok,
                    user.unclear
                ),
            );
        })
        .await
        .expect("swarm run");
    Autopsy::finish();
    coverage::end_seed();
}
