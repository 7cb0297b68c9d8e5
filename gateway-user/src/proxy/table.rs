//! The routing table the accept loops read: per port, the weighted
//! clusters of its route, each with the load-balancing state of its
//! endpoints. Built from a [`istio::Snapshot`]; immutable once built, so a
//! connection that took a route at accept time keeps it whatever changes
//! after.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, OnceLock,
    },
};

use rand::Rng;

use super::health::Health;
use crate::{
    istio::{self, Address, Cluster, LbPolicy},
    telemetry::{
        counters::ClusterCounters,
        metrics::{self, Metrics},
        Counters,
    },
};

#[derive(Debug, Default)]
pub struct Table {
    pub generation: u64,
    routes: BTreeMap<u16, Arc<Route>>,
    /// By name, so the next table can carry their state over.
    clusters: HashMap<String, Arc<ClusterRt>>,
    /// The Gateway API status of the config it was built from, one line
    /// per route parent and Gateway (`gateway inspect routes`).
    pub status: Vec<String>,
}

/// A listener's route: Envoy's weighted clusters.
#[derive(Debug)]
pub struct Route {
    /// `namespace/name` of the VirtualService, for logs.
    pub virtual_service: Arc<str>,
    destinations: Vec<Destination>,
}

/// One weighted cluster of a route.
#[derive(Debug)]
struct Destination {
    /// The weights up to and including this one; the last is the total.
    cumulative: u64,
    weight: u32,
    cluster: Arc<ClusterRt>,
    /// Connections this route sent here. Carried to the next table while
    /// the route's weights stay the same, so that `inspect routes` compares
    /// a split with the weights it was made under.
    picks: Arc<AtomicU64>,
}

/// A route's split as `gateway inspect routes` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RouteView {
    pub port: u16,
    pub route: String,
    pub destinations: Vec<DestinationView>,
    /// Connections the route took since its weights were set.
    pub connections: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DestinationView {
    pub cluster: String,
    pub weight: u32,
    /// weight / the route's total weight.
    pub weight_share: f64,
    pub connections: u64,
    /// connections / the route's connections (0 before the first).
    pub share: f64,
}

/// A cluster as the data path uses it: its configuration plus what load
/// balancing tracks.
#[derive(Debug)]
pub struct ClusterRt {
    pub config: Arc<Cluster>,
    /// Active connections per endpoint, in `config.endpoints` order. Shared
    /// with the previous table's cluster of the same name for endpoints it
    /// also had, so least-request sees connections opened before a change.
    active: Vec<Arc<AtomicU64>>,
    /// Cumulative endpoint weights; the last is the total.
    weights: Vec<u64>,
    /// Every endpoint has the same weight (the common case: plain round
    /// robin and power of two choices, as Envoy does then).
    uniform: bool,
    next: AtomicUsize,
    pub counters: Arc<ClusterCounters>,
    /// Endpoints known not to answer are skipped (see [`Health`]); `None`
    /// for Istio's clusters, which try every endpoint as Envoy does
    /// without outlier detection.
    pub health: Option<Arc<Health>>,
    /// Istio's counters per endpoint, resolved at its first connection.
    istio: Vec<OnceLock<metrics::Counters>>,
}

/// Holds one active connection on an endpoint.
pub struct Active(Arc<AtomicU64>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Table {
    /// The table for `snapshot`, reusing `old`'s clusters where they did
    /// not change.
    pub fn build(
        generation: u64,
        snapshot: &istio::Snapshot,
        old: &Table,
        counters: &Counters,
    ) -> Table {
        let mut clusters: HashMap<String, Arc<ClusterRt>> = HashMap::new();
        let mut routes = BTreeMap::new();
        for l in &snapshot.listeners {
            let mut destinations = Vec::with_capacity(l.route.destinations.len());
            let mut total = 0u64;
            let same_split = old.routes.get(&l.port).filter(|r| {
                *r.virtual_service == *l.route.virtual_service
                    && r.destinations.len() == l.route.destinations.len()
                    && r.destinations
                        .iter()
                        .zip(&l.route.destinations)
                        .all(|(a, b)| {
                            a.weight == b.weight && a.cluster.config.name == b.cluster.name
                        })
            });
            for (k, d) in l.route.destinations.iter().enumerate() {
                let name = &d.cluster.name;
                let rt = match clusters.get(name) {
                    Some(c) => c.clone(),
                    None => {
                        let c = ClusterRt::carry(&d.cluster, old.clusters.get(name), counters);
                        clusters.insert(name.clone(), c.clone());
                        c
                    }
                };
                total += u64::from(d.weight);
                destinations.push(Destination {
                    cumulative: total,
                    weight: d.weight,
                    cluster: rt,
                    picks: same_split
                        .map(|r| r.destinations[k].picks.clone())
                        .unwrap_or_default(),
                });
            }
            if total == 0 {
                // The config layer never yields this; a route that could
                // pick nothing is better absent than wrong.
                continue;
            }
            routes.insert(
                l.port,
                Arc::new(Route {
                    virtual_service: l.route.virtual_service.as_str().into(),
                    destinations,
                }),
            );
        }
        Table {
            generation,
            routes,
            clusters,
            status: snapshot.status.iter().map(ToString::to_string).collect(),
        }
    }

    /// A table of one port routed to one cluster.
    pub fn fixed(
        port: u16,
        name: &str,
        cluster: Arc<Cluster>,
        health: Option<Arc<Health>>,
        counters: &Counters,
    ) -> Table {
        let mut rt = ClusterRt::carry(&cluster, None, counters);
        if let Some(rt) = Arc::get_mut(&mut rt) {
            rt.health = health;
        }
        let route = Route {
            virtual_service: name.into(),
            destinations: vec![Destination {
                cumulative: 1,
                weight: 1,
                cluster: rt.clone(),
                picks: Arc::default(),
            }],
        };
        Table {
            generation: 1,
            routes: BTreeMap::from([(port, Arc::new(route))]),
            clusters: HashMap::from([(cluster.name.clone(), rt)]),
            status: Vec::new(),
        }
    }

    pub fn route(&self, port: u16) -> Option<Arc<Route>> {
        self.routes.get(&port).cloned()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.routes.keys().copied().collect()
    }

    /// Each port's route with its weights and the split it really made.
    pub fn views(&self) -> Vec<RouteView> {
        self.routes
            .iter()
            .map(|(port, r)| {
                let total_weight = r.destinations.last().map_or(0, |d| d.cumulative);
                let picks: Vec<u64> = r
                    .destinations
                    .iter()
                    .map(|d| d.picks.load(Relaxed))
                    .collect();
                let connections: u64 = picks.iter().sum();
                let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
                RouteView {
                    port: *port,
                    route: r.virtual_service.to_string(),
                    connections,
                    destinations: r
                        .destinations
                        .iter()
                        .zip(picks)
                        .map(|(d, n)| DestinationView {
                            cluster: d.cluster.config.name.clone(),
                            weight: d.weight,
                            weight_share: ratio(u64::from(d.weight), total_weight),
                            connections: n,
                            share: ratio(n, connections),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

impl Route {
    /// A cluster, with probability weight / total weight.
    pub fn pick(&self, rng: &mut impl Rng) -> &Arc<ClusterRt> {
        let total = self.destinations.last().map_or(0, |d| d.cumulative);
        let draw = rng.random_range(0..total.max(1));
        let i = self.destinations.partition_point(|d| d.cumulative <= draw);
        let d = &self.destinations[i.min(self.destinations.len() - 1)];
        d.picks.fetch_add(1, Relaxed);
        &d.cluster
    }
}

impl ClusterRt {
    fn carry(
        config: &Arc<Cluster>,
        old: Option<&Arc<ClusterRt>>,
        counters: &Counters,
    ) -> Arc<Self> {
        if let Some(old) = old {
            if *old.config == **config {
                return old.clone();
            }
        }
        let key = |e: &istio::Endpoint| (e.address.clone(), e.port);
        let previous: HashMap<(Address, u16), Arc<AtomicU64>> = old
            .map(|o| {
                o.config
                    .endpoints
                    .iter()
                    .map(key)
                    .zip(o.active.iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        let active = config
            .endpoints
            .iter()
            .map(|e| previous.get(&key(e)).cloned().unwrap_or_default())
            .collect();
        let mut weights = Vec::with_capacity(config.endpoints.len());
        let mut total = 0u64;
        for e in &config.endpoints {
            total += u64::from(e.weight.max(1));
            weights.push(total);
        }
        let uniform = config
            .endpoints
            .windows(2)
            .all(|w| w[0].weight.max(1) == w[1].weight.max(1));
        Arc::new(ClusterRt {
            config: config.clone(),
            active,
            weights,
            uniform,
            next: AtomicUsize::new(0),
            counters: counters.cluster(&config.name),
            health: None,
            istio: config.endpoints.iter().map(|_| OnceLock::new()).collect(),
        })
    }

    /// The endpoints to try, in order: the load balancer's choice, then
    /// each other endpoint once.
    pub fn attempts(&self, rng: &mut impl Rng) -> impl Iterator<Item = usize> {
        let n = self.config.endpoints.len();
        let first = if n <= 1 { 0 } else { self.choose(rng) };
        (0..n).map(move |i| (first + i) % n)
    }

    fn choose(&self, rng: &mut impl Rng) -> usize {
        match self.config.lb {
            LbPolicy::RoundRobin => {
                let k = self.next.fetch_add(1, Relaxed);
                if self.uniform {
                    k % self.weights.len()
                } else {
                    self.by_weight(k as u64 % self.total())
                }
            }
            LbPolicy::Random => self.weighted_random(rng),
            LbPolicy::LeastRequest => {
                // Envoy's default: two random choices, the one with fewer
                // active requests wins (weighted: fewer per unit of weight).
                let (a, b) = (self.weighted_random(rng), self.weighted_random(rng));
                let load = |i: usize| {
                    let w = self.config.endpoints[i].weight.max(1);
                    (self.active[i].load(Relaxed) as f64) / f64::from(w)
                };
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
        }
    }

    fn total(&self) -> u64 {
        self.weights.last().copied().unwrap_or(1).max(1)
    }

    fn by_weight(&self, draw: u64) -> usize {
        self.weights
            .partition_point(|cum| *cum <= draw)
            .min(self.weights.len().saturating_sub(1))
    }

    fn weighted_random(&self, rng: &mut impl Rng) -> usize {
        if self.uniform {
            rng.random_range(0..self.weights.len().max(1))
        } else {
            self.by_weight(rng.random_range(0..self.total()))
        }
    }

    /// Istio's counters of endpoint `i`.
    pub fn istio(&self, i: usize, m: &Metrics) -> metrics::Counters {
        let make = || {
            m.counters(
                Some(&self.config),
                self.config.endpoints.get(i),
                metrics::NO_FLAGS,
            )
        };
        match self.istio.get(i) {
            Some(cell) => cell.get_or_init(make).clone(),
            None => make(),
        }
    }

    /// Marks a connection active on endpoint `i` until the guard drops.
    pub fn activate(&self, i: usize) -> Option<Active> {
        let a = self.active.get(i)?;
        a.fetch_add(1, Relaxed);
        Some(Active(a.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::{Endpoint, Snapshot, TcpRoute, WeightedCluster};
    use rand::{rngs::SmallRng, SeedableRng as _};
    use std::time::Duration;

    fn cluster(name: &str, lb: LbPolicy, weights: &[u32]) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: name.into(),
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, w)| Endpoint {
                    address: Address::Ip(std::net::IpAddr::from([127, 0, 0, i as u8 + 1])),
                    port: 9000,
                    weight: *w,
                    labels: BTreeMap::new(),
                })
                .collect(),
            lb,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: None,
        })
    }

    fn snapshot(dests: &[(u32, Arc<Cluster>)]) -> Snapshot {
        let origin = istio::Origin {
            file: Arc::from("t.yaml"),
            document: 1,
            id: None,
        };
        Snapshot {
            listeners: vec![istio::Listener {
                port: 31400,
                gateway: "ns/gw".into(),
                origin,
                server: 0,
                route: TcpRoute {
                    kind: istio::Kind::VirtualService,
                    virtual_service: "ns/vs".into(),
                    rule: 0,
                    destinations: dests
                        .iter()
                        .map(|(weight, cluster)| WeightedCluster {
                            weight: *weight,
                            cluster: cluster.clone(),
                        })
                        .collect(),
                },
            }],
            warnings: Vec::new(),
            status: Vec::new(),
        }
    }

    #[test]
    fn weighted_clusters_split_in_proportion() {
        let counters = Counters::default();
        let v1 = cluster("v1", LbPolicy::RoundRobin, &[1]);
        let v2 = cluster("v2", LbPolicy::RoundRobin, &[1]);
        let t = Table::build(
            1,
            &snapshot(&[(80, v1), (20, v2)]),
            &Table::default(),
            &counters,
        );
        let route = t.route(31400).unwrap_or_else(|| panic!("route"));
        let mut rng = SmallRng::seed_from_u64(7);
        let n = 100_000;
        let v2_count = (0..n)
            .filter(|_| route.pick(&mut rng).config.name == "v2")
            .count();
        // 4 sigma of a binomial(n, 0.2) is about 506.
        assert!((19_494..=20_506).contains(&v2_count), "{v2_count}");
        assert!(t.route(31401).is_none());
        let view = &t.views()[0];
        assert_eq!(view.connections, n as u64);
        assert_eq!(view.destinations[1].connections, v2_count as u64);
        assert_eq!(view.destinations[0].weight_share, 0.8);
    }

    #[test]
    fn a_split_is_counted_across_tables_until_its_weights_change() {
        let counters = Counters::default();
        let v1 = cluster("v1", LbPolicy::RoundRobin, &[1]);
        let v2 = cluster("v2", LbPolicy::RoundRobin, &[1]);
        let eighty = snapshot(&[(80, v1.clone()), (20, v2.clone())]);
        let t1 = Table::build(1, &eighty, &Table::default(), &counters);
        let mut rng = SmallRng::seed_from_u64(7);
        let route = t1.route(31400).unwrap_or_else(|| panic!("route"));
        for _ in 0..10 {
            route.pick(&mut rng);
        }
        let t2 = Table::build(2, &eighty, &t1, &counters);
        assert_eq!(t2.views()[0].connections, 10);
        let t3 = Table::build(3, &snapshot(&[(100, v2)]), &t2, &counters);
        assert_eq!(t3.views()[0].connections, 0);
    }

    #[test]
    fn round_robin_cycles_and_failover_tries_each_endpoint_once() {
        let counters = Counters::default();
        let c = cluster("c", LbPolicy::RoundRobin, &[1, 1, 1]);
        let t = Table::build(1, &snapshot(&[(1, c)]), &Table::default(), &counters);
        let route = t.route(31400).unwrap_or_else(|| panic!("route"));
        let mut rng = SmallRng::seed_from_u64(1);
        let cl = route.pick(&mut rng).clone();
        let firsts: Vec<usize> = (0..6)
            .filter_map(|_| cl.attempts(&mut rng).next())
            .collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        let all: Vec<usize> = cl.attempts(&mut rng).collect();
        assert_eq!(all, [0, 1, 2]);
    }

    #[test]
    fn weighted_round_robin_follows_endpoint_weights() {
        let counters = Counters::default();
        let c = cluster("c", LbPolicy::RoundRobin, &[3, 1]);
        let t = Table::build(1, &snapshot(&[(1, c)]), &Table::default(), &counters);
        let cl = t.clusters["c"].clone();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut seen = [0; 2];
        for _ in 0..400 {
            if let Some(i) = cl.attempts(&mut rng).next() {
                seen[i] += 1;
            }
        }
        assert_eq!(seen, [300, 100]);
    }

    #[test]
    fn least_request_avoids_the_busier_endpoint() {
        let counters = Counters::default();
        let c = cluster("c", LbPolicy::LeastRequest, &[1, 1]);
        let t = Table::build(1, &snapshot(&[(1, c)]), &Table::default(), &counters);
        let cl = t.clusters["c"].clone();
        let _busy: Vec<Active> = (0..5).filter_map(|_| cl.activate(0)).collect();
        let mut rng = SmallRng::seed_from_u64(3);
        let to_idle = (0..1000)
            .filter(|_| cl.attempts(&mut rng).next() == Some(1))
            .count();
        // Two draws pick the busy endpoint twice a quarter of the time.
        assert!((700..=800).contains(&to_idle), "{to_idle}");
        drop(_busy);
        assert_eq!(cl.active[0].load(Relaxed), 0);
    }

    #[test]
    fn unchanged_clusters_carry_over_and_changed_ones_keep_active_counts() {
        let counters = Counters::default();
        let c = cluster("c", LbPolicy::LeastRequest, &[1, 1]);
        let t1 = Table::build(
            1,
            &snapshot(&[(1, c.clone())]),
            &Table::default(),
            &counters,
        );
        let held = t1.clusters["c"].activate(1);
        let t2 = Table::build(2, &snapshot(&[(1, c)]), &t1, &counters);
        assert!(Arc::ptr_eq(&t1.clusters["c"], &t2.clusters["c"]));
        // Same name, one endpoint fewer: the survivor keeps its count.
        let mut smaller = (*cluster("c", LbPolicy::LeastRequest, &[1, 1])).clone();
        smaller.endpoints.remove(0);
        let t3 = Table::build(3, &snapshot(&[(1, Arc::new(smaller))]), &t2, &counters);
        assert_eq!(t3.clusters["c"].active[0].load(Relaxed), 1);
        drop(held);
        assert_eq!(t3.clusters["c"].active[0].load(Relaxed), 0);
        assert!(Arc::ptr_eq(
            &t1.clusters["c"].counters,
            &t3.clusters["c"].counters
        ));
    }
}
