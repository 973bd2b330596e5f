//! `GET /metrics`: the node and every service it runs, in the OpenMetrics text format that
//! Prometheus scrapes, encoded by `prometheus-client` from the typed status (the same
//! numbers `GET /v1/node` and `GET /v1/services/{name}/status` show, and the histograms their
//! latency figures come from).
//!
//! Every sample carries a `node` label, so the nodes of a cluster, each scraped on its own,
//! add up; per-service samples carry `service`. Names follow Prometheus' conventions: base
//! units in the name (`_seconds`, `_bytes`, `_cores`), counters ending in `_total`.

use std::fmt;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use shoal_node::{HistogramSnapshot, Node, NodeStatus, ServiceStatus};

use crate::error::{ApiError, ApiResult};

/// What the OpenMetrics text format is served as.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers a scrape.
pub(crate) async fn metrics(State(node): State<Node>) -> ApiResult<Response> {
    let scrape = Scrape {
        node_name: node.config().node_name.clone(),
        node: node.status().await?,
        services: node.service_statuses(),
    };
    let mut registry = Registry::with_prefix("shoal");
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "encoding the metrics failed",
        )
    })?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// One scrape's numbers.
#[derive(Debug)]
struct Scrape {
    node_name: String,
    node: NodeStatus,
    services: Vec<ServiceStatus>,
}

type Labels = Vec<(&'static str, String)>;

impl Scrape {
    fn node_labels(&self) -> Labels {
        vec![("node", self.node_name.clone())]
    }

    fn service_labels(&self, service: &ServiceStatus) -> Labels {
        vec![
            ("node", self.node_name.clone()),
            ("service", service.name.clone()),
        ]
    }

    /// One sample per service.
    fn per_service(&self, value: impl Fn(&ServiceStatus) -> f64) -> Vec<(Labels, f64)> {
        self.services
            .iter()
            .map(|service| (self.service_labels(service), value(service)))
            .collect()
    }

    /// One sample for the node.
    fn for_node(&self, value: f64) -> Vec<(Labels, f64)> {
        vec![(self.node_labels(), value)]
    }
}

/// Writes one family of gauges or counters.
fn family(
    encoder: &mut DescriptorEncoder<'_>,
    metric_type: MetricType,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: Vec<(Labels, f64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, unit.as_ref(), metric_type)?;
    for (labels, value) in samples {
        let metric = family.encode_family(&labels)?;
        match metric_type {
            MetricType::Counter => ConstCounter::new(value).encode(metric)?,
            _ => ConstGauge::new(value).encode(metric)?,
        }
    }
    Ok(())
}

/// Writes one histogram family, a histogram per service.
fn histograms(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: Vec<(Labels, &HistogramSnapshot)>,
) -> fmt::Result {
    let mut family =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, histogram) in samples {
        // The encoder takes counts per bucket, adds them up, and reads f64::MAX as +Inf.
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = histogram
            .buckets
            .iter()
            .map(|(bound, cumulative)| {
                let count = cumulative - below;
                below = *cumulative;
                let bound = if bound.is_finite() { *bound } else { f64::MAX };
                (bound, count)
            })
            .collect();
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(
                histogram.sum_seconds,
                histogram.count,
                &buckets,
                None,
            )?;
    }
    Ok(())
}

fn bytes(value: shoal_spec::ByteSize) -> f64 {
    value.0 as f64
}

fn cores(value: shoal_spec::Cpu) -> f64 {
    value.0 as f64 / 1000.0
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let e = &mut encoder;
        use MetricType::{Counter, Gauge};

        // Per service: requests and their timings.
        let outcomes = self
            .services
            .iter()
            .flat_map(|service| {
                service
                    .metrics
                    .outcomes
                    .iter()
                    .map(move |(outcome, class, count)| {
                        let mut labels = self.service_labels(service);
                        labels.push(("outcome", outcome.to_string()));
                        labels.push(("code", format!("{class}xx")));
                        (labels, *count as f64)
                    })
            })
            .collect::<Vec<_>>();
        family(
            e,
            Counter,
            "requests",
            "Requests the gateway answered, by outcome (ok, or the error's kind) and status class.",
            None,
            outcomes,
        )?;
        let timing = |pick: fn(&ServiceStatus) -> &HistogramSnapshot| {
            self.services
                .iter()
                .map(|service| (self.service_labels(service), pick(service)))
                .collect::<Vec<_>>()
        };
        histograms(
            e,
            "request_duration",
            "From a request's arrival at the gateway to its response, queueing included.",
            timing(|service| &service.metrics.request_seconds),
        )?;
        histograms(
            e,
            "guest_duration",
            "From a replica's grant to the guest's end, streaming included.",
            timing(|service| &service.metrics.guest_seconds),
        )?;
        histograms(
            e,
            "queue_wait",
            "How long requests waited for a replica.",
            timing(|service| &service.metrics.queue_seconds),
        )?;
        family(
            e,
            Gauge,
            "queue_depth",
            "Requests waiting for a replica.",
            None,
            self.per_service(|s| f64::from(s.queued)),
        )?;
        family(
            e,
            Gauge,
            "in_flight_requests",
            "Requests being served.",
            None,
            self.per_service(|s| f64::from(s.in_flight)),
        )?;

        // Per service: replicas and scaling.
        family(
            e,
            Gauge,
            "replicas",
            "Replicas running on this node.",
            None,
            self.per_service(|s| f64::from(s.replicas.current)),
        )?;
        family(
            e,
            Gauge,
            "replicas_desired",
            "Replicas the autoscaler wants on this node.",
            None,
            self.per_service(|s| f64::from(s.replicas.desired)),
        )?;
        family(
            e,
            Gauge,
            "replicas_busy",
            "Replicas with a request in flight.",
            None,
            self.per_service(|s| f64::from(s.replicas.busy)),
        )?;
        family(
            e,
            Counter,
            "cold_starts",
            "Requests that found no replica and started the first.",
            None,
            self.per_service(|s| s.requests.cold_starts as f64),
        )?;
        family(
            e,
            Counter,
            "scale_events",
            "Scale events reported (replica count changes and stops at capacity).",
            None,
            self.per_service(|s| s.metrics.scale_events as f64),
        )?;

        // Per service: what its guests used.
        family(
            e,
            Counter,
            "guest_fuel",
            "Fuel the service's guests burnt, in wasmtime's units (about one per instruction).",
            None,
            self.per_service(|s| s.metrics.fuel as f64),
        )?;
        family(
            e,
            Counter,
            "guest_cpu",
            "CPU time the service's guests used.",
            Some(Unit::Seconds),
            self.per_service(|s| s.cpu.used_seconds),
        )?;
        family(
            e,
            Gauge,
            "memory_reserved",
            "Memory the service's replicas reserve from the node.",
            Some(Unit::Bytes),
            self.per_service(|s| bytes(s.resources.reserved.memory)),
        )?;

        // The node.
        let node = &self.node;
        // Capacity, reservations and what is left, of memory in bytes and of cpu in cores.
        for (what, help, amounts) in [
            ("capacity", "the node offers to replicas", &node.capacity),
            ("reserved", "replicas reserve", &node.reserved),
            ("free", "is left for replicas", &node.free),
        ] {
            family(
                e,
                Gauge,
                &format!("node_memory_{what}"),
                &format!("Memory {help}."),
                Some(Unit::Bytes),
                self.for_node(bytes(amounts.memory)),
            )?;
            family(
                e,
                Gauge,
                &format!("node_cpu_{what}"),
                &format!("CPU {help}."),
                Some(Unit::Other("cores".into())),
                self.for_node(cores(amounts.cpu)),
            )?;
        }
        family(
            e,
            Gauge,
            "node_resource_allocation",
            "resource_allocation = performance_need / resource_limit: requests against capacity.",
            Some(Unit::Other("ratio".into())),
            vec![
                (
                    vec![
                        ("node", self.node_name.clone()),
                        ("resource", "memory".into()),
                    ],
                    (node.resource_allocation.memory),
                ),
                (
                    vec![("node", self.node_name.clone()), ("resource", "cpu".into())],
                    (node.resource_allocation.cpu),
                ),
            ],
        )?;
        family(
            e,
            Counter,
            "node_compiles",
            "Modules compiled.",
            None,
            self.for_node(node.compile.compiled as f64),
        )?;
        let tiers = [
            ("baseline", node.compile.baseline),
            ("optimized", node.compile.optimized),
        ];
        let per_tier = |value: fn(&shoal_node::TierTimes) -> f64| {
            tiers
                .iter()
                .map(|(tier, times)| {
                    (
                        vec![("node", self.node_name.clone()), ("tier", (*tier).into())],
                        value(times),
                    )
                })
                .collect()
        };
        family(
            e,
            Counter,
            "node_tier_compiles",
            "Compiles per tier: baseline (Winch) and optimized (Cranelift).",
            None,
            per_tier(|times| times.compiles as f64),
        )?;
        family(
            e,
            Counter,
            "node_tier_compile",
            "Time spent compiling, per tier.",
            Some(Unit::Seconds),
            per_tier(|times| times.seconds),
        )?;
        family(
            e,
            Gauge,
            "node_optimizing_modules",
            "Modules waiting for Cranelift in the background, or being compiled by it.",
            None,
            self.for_node(node.compile.optimizing as f64),
        )?;
        family(
            e,
            Counter,
            "node_artifact_cache_hits",
            "Modules loaded from the artifact cache instead of compiled.",
            None,
            self.for_node(node.compile.cache_hits as f64),
        )?;
        family(
            e,
            Gauge,
            "node_in_flight_requests",
            "Requests the gateway is answering.",
            None,
            self.for_node(node.in_flight as f64),
        )?;
        family(
            e,
            Gauge,
            "node_services",
            "Services this node runs.",
            None,
            self.for_node(node.services as f64),
        )?;
        family(
            e,
            Counter,
            "node_guest_cpu",
            "CPU time every guest on the node used.",
            Some(Unit::Seconds),
            self.for_node(node.cpu.used_seconds),
        )?;
        Ok(())
    }
}
