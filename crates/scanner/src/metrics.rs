//! Counters and latency histograms, served as Prometheus text on a loopback
//! `/metrics` endpoint.
//!
//! Encoding is `prometheus-client`'s (OpenMetrics text, which Prometheus
//! scrapes natively); the HTTP side is a minimal responder on tokio: one
//! `GET /metrics` per connection, anything else gets 404/405, requests are
//! size- and time-bounded.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::guests::{CountersView, GuestMetricsView, GuestRegistry};

/// One label named `decision`, `kind`, `reason` or `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    /// `allow`, `deny`, `allow_no_cache`.
    pub decision: String,
}

/// One label named `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// What kind (cache kind, protocol error kind).
    pub kind: String,
}

/// One label named `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why (e.g. `timeout`, `too_large`).
    pub reason: String,
}

/// One label named `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `failed`.
    pub result: String,
}

/// One label named `whole`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WholeLabel {
    /// `true` (the whole file came inline) or `false` (its first bytes).
    pub whole: String,
}

/// One label named `sink` (`file`, `webhook`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// The event destination.
    pub sink: String,
}

/// Labels `sink` and `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkReasonLabel {
    /// The event destination.
    pub sink: String,
    /// Why (`queue_full`, `channel_full`, `queue_error`).
    pub reason: String,
}

/// Label `guest`: the transport identity (§13), never the announced name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestLabel {
    guest: String,
}

/// Labels `guest` and `name` (the announced name, a label only).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestNameLabel {
    guest: String,
    name: String,
}

/// Labels `guest` and `decision`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestDecisionLabel {
    guest: String,
    decision: &'static str,
}

/// Labels `guest`, `action` and `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestActionLabel {
    guest: String,
    action: &'static str,
    status: &'static str,
}

/// Labels `guest` and `mode`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestModeLabel {
    guest: String,
    mode: &'static str,
}

/// The metrics labelled by guest, read from the guest registry at each
/// scrape (so a guest's series exist from its first handshake on and
/// nothing has to be removed by hand). Series: one set per guest seen
/// since the service started, about a dozen each.
#[derive(Debug, Default)]
struct GuestCollector {
    guests: OnceLock<Arc<GuestRegistry>>,
}

/// One metric family of the guest collector.
fn family<'a>(
    encoder: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
    metric_type: MetricType,
) -> Result<prometheus_client::encoding::MetricEncoder<'a>, std::fmt::Error> {
    encoder.encode_descriptor(name, help, None, metric_type)
}

impl Collector for GuestCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(registry) = self.guests.get() else {
            return Ok(());
        };
        let guests = registry.metrics_view();
        let label = |g: &GuestMetricsView| GuestLabel {
            guest: g.identity.clone(),
        };
        let gauge = |v: i64| ConstGauge::new(v);
        // Host-side: what this scanner saw and did.
        {
            let mut m = family(
                &mut encoder,
                "guest_connected",
                "1 while the guest has a session, 0 after; labelled with its announced name",
                MetricType::Gauge,
            )?;
            for g in &guests {
                let l = GuestNameLabel {
                    guest: g.identity.clone(),
                    name: g.name.clone(),
                };
                gauge(i64::from(g.connected)).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = family(
                &mut encoder,
                "guest_last_seen_seconds",
                "When the guest was last heard from (or disconnected), Unix time",
                MetricType::Gauge,
            )?;
            for g in &guests {
                ConstGauge::new(g.last_seen_secs).encode(m.encode_family(&label(g))?)?;
            }
        }
        {
            let mut m = family(
                &mut encoder,
                "guest_verdicts",
                "Verdicts sent to the guest, by decision",
                MetricType::Counter,
            )?;
            for g in &guests {
                for (decision, n) in [
                    ("allow", g.counters.verdicts_allow),
                    ("deny", g.counters.verdicts_deny),
                ] {
                    let l = GuestDecisionLabel {
                        guest: g.identity.clone(),
                        decision,
                    };
                    ConstCounter::new(n).encode(m.encode_family(&l)?)?;
                }
            }
        }
        for (name, help, pick) in [
            (
                "guest_policy_verdicts",
                "Verdicts sent to the guest that policy decided, not a scan (timeouts, read or engine failures, limits)",
                (|c: &CountersView| c.verdicts_policy) as fn(&CountersView) -> u64,
            ),
            (
                "guest_queries_abandoned",
                "Queries of the guest that ended with no verdict (the guest left)",
                |c| c.abandoned,
            ),
            (
                "guest_bytes_read",
                "File content bytes pulled from the guest with ReadRequests",
                |c| c.bytes_read,
            ),
            (
                "guest_detections",
                "Detections on the guest (opens denied for a threat)",
                |c| c.detections,
            ),
        ] {
            let mut m = family(&mut encoder, name, help, MetricType::Counter)?;
            for g in &guests {
                ConstCounter::new(pick(&g.counters)).encode(m.encode_family(&label(g))?)?;
            }
        }
        {
            let mut m = family(
                &mut encoder,
                "guest_host_actions",
                "Host actions on the guest that ended, by action (remediate, scan_tree, policy, restore) and status (done, changed, timed-out, completed, ...)",
                MetricType::Counter,
            )?;
            for g in &guests {
                for a in &g.counters.actions {
                    let l = GuestActionLabel {
                        guest: g.identity.clone(),
                        action: a.action,
                        status: a.status,
                    };
                    ConstCounter::new(a.n).encode(m.encode_family(&l)?)?;
                }
            }
        }
        // Guest-side: its last `Health` report (§14.8), for guests that sent one.
        let reported: Vec<(&GuestMetricsView, &thinagent_protocol::Health)> = guests
            .iter()
            .filter_map(|g| g.health.as_ref().map(|h| (g, h)))
            .collect();
        {
            let mut m = family(
                &mut encoder,
                "guest_reported_on_access",
                "1 when the guest's last Health report says its opens are being judged",
                MetricType::Gauge,
            )?;
            for (g, h) in &reported {
                let on = h.state.contains(thinagent_protocol::HealthState::ON_ACCESS);
                gauge(i64::from(on)).encode(m.encode_family(&label(g))?)?;
            }
        }
        {
            let mut m = family(
                &mut encoder,
                "guest_reported_fail_mode",
                "The fail mode in effect on the guest (1 for the mode it reports)",
                MetricType::Gauge,
            )?;
            for (g, h) in &reported {
                let mode = match h.fail_mode {
                    thinagent_protocol::FailMode::Open => "open",
                    thinagent_protocol::FailMode::Closed => "closed",
                };
                let l = GuestModeLabel {
                    guest: g.identity.clone(),
                    mode,
                };
                gauge(1).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = family(
                &mut encoder,
                "guest_reported_policy_version",
                "The host policy version in effect on the guest (0: none received)",
                MetricType::Gauge,
            )?;
            for (g, h) in &reported {
                ConstGauge::new(h.policy_version).encode(m.encode_family(&label(g))?)?;
            }
        }
        for (name, help, pick) in [
            (
                "guest_reported_events_sent",
                "FileEvents the guest sent since its agent started",
                (|h: &thinagent_protocol::Health| h.events_sent)
                    as fn(&thinagent_protocol::Health) -> u64,
            ),
            (
                "guest_reported_cache_hits",
                "Opens the guest answered from its verdict cache since its agent started",
                |h| h.cache_hits,
            ),
            (
                "guest_reported_denied",
                "Opens the guest denied on a host verdict since its agent started",
                |h| h.denied,
            ),
            (
                "guest_reported_fail_decisions",
                "Opens the guest decided by its fail mode (deadline passed, no connection) since its agent started",
                |h| h.fail_decisions,
            ),
        ] {
            let mut m = family(&mut encoder, name, help, MetricType::Counter)?;
            for (g, h) in &reported {
                ConstCounter::new(pick(h)).encode(m.encode_family(&label(g))?)?;
            }
        }
        Ok(())
    }
}

/// Every metric of the service. Cheap to update from any task.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Sessions accepted since start.
    pub sessions: Counter,
    /// Sessions open now.
    pub sessions_active: Gauge,
    /// Connections refused (`kind`: `max_sessions`, `max_sessions_per_guest`,
    /// `max_pending_handshakes`, `max_pending_per_peer`, `cid_not_allowed`,
    /// `tls_handshake`).
    pub sessions_refused: Family<KindLabel, Counter>,
    /// File queries received.
    pub queries: Counter,
    /// Verdicts sent, by decision.
    pub verdicts: Family<DecisionLabel, Counter>,
    /// Verdicts served from a cache, by kind (`guest`, `content`).
    pub cache_hits: Family<KindLabel, Counter>,
    /// Content bytes pulled from guests with `ReadRequest`s (inline bytes
    /// are counted in `inline_content_bytes` instead).
    pub bytes_read: Counter,
    /// Content bytes guests sent inline with their `FileEvent`s (protocol
    /// version 2).
    pub inline_content_bytes: Counter,
    /// `FileEvent`s that carried inline content, by `whole` (`true`: the
    /// whole file, no `ReadRequest` needed; `false`: its first bytes).
    pub inline_events: Family<WholeLabel, Counter>,
    /// Protocol errors, by kind.
    pub protocol_errors: Family<KindLabel, Counter>,
    /// Engine failures, by engine.
    pub engine_errors: Family<KindLabel, Counter>,
    /// Seconds from FileEvent to Verdict.
    pub query_latency: Histogram,
    /// Signature (re)loads by result.
    pub signature_reloads: Family<ResultLabel, Counter>,
    /// Reloads of the `tls://` files (SIGHUP), by result.
    pub tls_reloads: Family<ResultLabel, Counter>,
    /// TLS sessions ended because a reload's files no longer accept the
    /// guest's certificate (revoked, CA removed, expired).
    pub tls_sessions_untrusted: Counter,
    /// Reloads of the farm's password and TLS files (SIGHUP), by result.
    pub farm_reloads: Family<ResultLabel, Counter>,
    /// Signatures in the active set: built-in ones, hash signatures and
    /// YARA rules (clamd's database is not counted: its size is unknown).
    pub signatures_loaded: Gauge,
    /// Audit records not written: the sink could not keep up (its queue was
    /// full) or the write failed (e.g. a full disk).
    pub audit_records_not_written: Counter,
    /// Log lines peers caused that were held back and summarised.
    pub log_lines_suppressed: Counter,
    /// Connections accepted that have not completed `Hello` yet.
    pub handshakes_pending: Gauge,
    /// Verdicts decided by policy rather than by a scan, by reason
    /// (`timeout`: the scan budget expired; `too_large`, `read_failed`,
    /// `engine_failed`, `no_content_capability`, `session_closing`,
    /// `over_limit`).
    pub policy_verdicts: Family<ReasonLabel, Counter>,
    /// Events handed to the event sink ([`crate::events`]).
    pub events_emitted: Counter,
    /// Events a destination took, by `sink`.
    pub events_delivered: Family<SinkLabel, Counter>,
    /// Failed delivery attempts (each retried), by `sink`.
    pub events_failed: Family<SinkLabel, Counter>,
    /// Events lost, by `sink` and `reason`.
    pub events_dropped: Family<SinkReasonLabel, Counter>,
    /// Events waiting in a destination's on-disk queue, by `sink`.
    pub events_queue_depth: Family<SinkLabel, Gauge>,
    /// The scanner farm's requests and reachability ([`crate::farm`]).
    pub farm: crate::farm::FarmMetrics,
    /// The metrics labelled by guest, once [`attach_guests`](Self::attach_guests).
    guests: Arc<GuestCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("thinagent_scanner");
        let sessions = Counter::default();
        let sessions_active = Gauge::default();
        let sessions_refused = Family::<KindLabel, Counter>::default();
        let queries = Counter::default();
        let verdicts = Family::<DecisionLabel, Counter>::default();
        let cache_hits = Family::<KindLabel, Counter>::default();
        let bytes_read = Counter::default();
        let inline_content_bytes = Counter::default();
        let inline_events = Family::<WholeLabel, Counter>::default();
        let protocol_errors = Family::<KindLabel, Counter>::default();
        let engine_errors = Family::<KindLabel, Counter>::default();
        // 50 µs .. ~ 26 s.
        let query_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 20));
        let signature_reloads = Family::<ResultLabel, Counter>::default();
        let tls_reloads = Family::<ResultLabel, Counter>::default();
        let tls_sessions_untrusted = Counter::default();
        let farm_reloads = Family::<ResultLabel, Counter>::default();
        let signatures_loaded = Gauge::default();
        let audit_records_not_written = Counter::default();
        let log_lines_suppressed = Counter::default();
        let handshakes_pending = Gauge::default();
        let policy_verdicts = Family::<ReasonLabel, Counter>::default();
        let events_emitted = Counter::default();
        let events_delivered = Family::<SinkLabel, Counter>::default();
        let events_failed = Family::<SinkLabel, Counter>::default();
        let events_dropped = Family::<SinkReasonLabel, Counter>::default();
        let events_queue_depth = Family::<SinkLabel, Gauge>::default();
        registry.register("sessions", "Guest sessions accepted", sessions.clone());
        registry.register(
            "sessions_active",
            "Guest sessions open now",
            sessions_active.clone(),
        );
        registry.register(
            "sessions_refused",
            "Connections refused, by reason",
            sessions_refused.clone(),
        );
        registry.register("queries", "File queries received", queries.clone());
        registry.register("verdicts", "Verdicts sent, by decision", verdicts.clone());
        registry.register(
            "cache_hits",
            "Verdicts answered from a cache, by cache kind",
            cache_hits.clone(),
        );
        registry.register(
            "bytes_read",
            "File content bytes pulled from guests with ReadRequests (not inline bytes)",
            bytes_read.clone(),
        );
        registry.register(
            "inline_content_bytes",
            "File content bytes guests sent inline with their FileEvents (protocol version 2)",
            inline_content_bytes.clone(),
        );
        registry.register(
            "inline_events",
            "FileEvents that carried inline content, by whether it was the whole file",
            inline_events.clone(),
        );
        registry.register(
            "protocol_errors",
            "Protocol errors by kind (each closes or degrades one session only)",
            protocol_errors.clone(),
        );
        registry.register(
            "engine_errors",
            "Engine failures on a file, by engine",
            engine_errors.clone(),
        );
        registry.register(
            "query_latency_seconds",
            "Time from FileEvent received to Verdict sent",
            query_latency.clone(),
        );
        registry.register(
            "signature_reloads",
            "Signature set loads, by result",
            signature_reloads.clone(),
        );
        registry.register(
            "tls_reloads",
            "Reloads of the tls:// certificate, key, guest CA and revocation list files, by result",
            tls_reloads.clone(),
        );
        registry.register(
            "tls_sessions_untrusted",
            "TLS guest sessions ended because the reloaded files no longer accept the guest's certificate",
            tls_sessions_untrusted.clone(),
        );
        registry.register(
            "farm_reloads",
            "Reloads of the farm's Redis password and TLS files, by result",
            farm_reloads.clone(),
        );
        registry.register(
            "signatures_loaded",
            "Signatures in the active set: built-in, hash and YARA (clamd's database is not counted)",
            signatures_loaded.clone(),
        );
        registry.register(
            "audit_records_not_written",
            "Audit records dropped because the audit sink could not keep up or its write failed",
            audit_records_not_written.clone(),
        );
        registry.register(
            "log_lines_suppressed",
            "Log lines about peers held back by rate limiting (each window ends with a summary line)",
            log_lines_suppressed.clone(),
        );
        registry.register(
            "handshakes_pending",
            "Connections accepted that have not completed Hello yet",
            handshakes_pending.clone(),
        );
        registry.register(
            "policy_verdicts",
            "Verdicts decided by policy instead of a scan, by reason (timeout = scan budget expired)",
            policy_verdicts.clone(),
        );
        registry.register(
            "events_emitted",
            "Events (detections, guest state changes) handed to the event sink",
            events_emitted.clone(),
        );
        registry.register(
            "events_delivered",
            "Events a destination took, by sink (file, webhook)",
            events_delivered.clone(),
        );
        registry.register(
            "events_failed",
            "Failed event delivery attempts, by sink (the events stay queued and are retried)",
            events_failed.clone(),
        );
        registry.register(
            "events_dropped",
            "Events lost, by sink and reason (queue_full: events.max_queue_bytes reached; channel_full: the writer fell behind; queue_error: the queue file could not be written)",
            events_dropped.clone(),
        );
        registry.register(
            "events_queue_depth",
            "Events waiting in a destination's on-disk queue, by sink",
            events_queue_depth.clone(),
        );
        let farm = crate::farm::FarmMetrics::default();
        registry.register(
            "farm_requests",
            "Requests to the scanner farm's Redis, by op (content, identity: lookups; put: verdict writes; publish: events stream and guest entries; ping: probes) and result (hit, miss, ok, error, timeout, dropped: the write queue was full, skipped: Redis down)",
            farm.requests.clone(),
        );
        registry.register(
            "farm_up",
            "1 while the scanner farm's Redis answers, 0 otherwise (and without a farm)",
            farm.up.clone(),
        );
        let guests = Arc::new(GuestCollector::default());
        registry.register_collector(Box::new(Arc::clone(&guests)));
        Self {
            farm,
            guests,
            registry,
            sessions,
            sessions_active,
            sessions_refused,
            queries,
            verdicts,
            cache_hits,
            bytes_read,
            inline_content_bytes,
            inline_events,
            protocol_errors,
            engine_errors,
            query_latency,
            signature_reloads,
            tls_reloads,
            tls_sessions_untrusted,
            farm_reloads,
            signatures_loaded,
            audit_records_not_written,
            log_lines_suppressed,
            handshakes_pending,
            policy_verdicts,
            events_emitted,
            events_delivered,
            events_failed,
            events_dropped,
            events_queue_depth,
        }
    }

    /// Serves the `guest_*` metrics from `guests` (the service's registry);
    /// the first call wins.
    pub fn attach_guests(&self, guests: Arc<GuestRegistry>) {
        let _ = self.guests.guests.set(guests);
    }

    /// Counts `n` events delivered to `sink`.
    pub fn event_delivered(&self, sink: &str, n: u64) {
        self.events_delivered
            .get_or_create(&SinkLabel { sink: sink.into() })
            .inc_by(n);
    }

    /// Counts a failed delivery attempt to `sink`.
    pub fn event_failed(&self, sink: &str) {
        self.events_failed
            .get_or_create(&SinkLabel { sink: sink.into() })
            .inc();
    }

    /// Counts an event `sink` lost, and why.
    pub fn event_dropped(&self, sink: &str, reason: &str) {
        self.events_dropped
            .get_or_create(&SinkReasonLabel {
                sink: sink.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Sets the depth of `sink`'s queue.
    pub fn event_queue_depth(&self, sink: &str, depth: i64) {
        self.events_queue_depth
            .get_or_create(&SinkLabel { sink: sink.into() })
            .set(depth);
    }

    /// Counts a verdict decided by policy.
    pub fn policy_verdict(&self, reason: &str) {
        self.policy_verdicts
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a verdict by decision name.
    pub fn verdict(&self, decision: &str) {
        self.verdicts
            .get_or_create(&DecisionLabel {
                decision: decision.to_string(),
            })
            .inc();
    }

    /// Counts a `FileEvent` that carried `bytes` inline, `whole` when they
    /// were the whole file.
    pub fn inline_event(&self, bytes: u64, whole: bool) {
        self.inline_content_bytes.inc_by(bytes);
        self.inline_events
            .get_or_create(&WholeLabel {
                whole: whole.to_string(),
            })
            .inc();
    }

    /// Counts a cache hit of `kind`.
    pub fn cache_hit(&self, kind: &str) {
        self.cache_hits
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts a protocol error of `kind`.
    pub fn protocol_error(&self, kind: &str) {
        self.protocol_errors
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts an engine failure.
    pub fn engine_error(&self, engine: &str) {
        self.engine_errors
            .get_or_create(&KindLabel {
                kind: engine.to_string(),
            })
            .inc();
    }

    /// Counts a refused connection.
    pub fn refused(&self, kind: &str) {
        self.sessions_refused
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts a signature load.
    pub fn reload(&self, ok: bool) {
        count_result(&self.signature_reloads, ok);
    }

    /// Counts a reload of the `tls://` files.
    pub fn tls_reload(&self, ok: bool) {
        count_result(&self.tls_reloads, ok);
    }

    /// Counts a reload of the farm's files.
    pub fn farm_reload(&self, ok: bool) {
        count_result(&self.farm_reloads, ok);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                std::io::Result::Ok(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                tracing::debug!(%peer, "metrics: request timed out or failed");
                return;
            }
            let line = buf.split(|b| *b == b'\n').next().unwrap_or(&[]);
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, ctype, body) = match (method, path) {
                ("GET", "/metrics") => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.encode(),
                ),
                ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".into()),
                _ => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "only GET /metrics\n".into(),
                ),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Counts `ok` (`result="ok"`) or a failure (`result="failed"`).
fn count_result(family: &Family<ResultLabel, Counter>, ok: bool) {
    family
        .get_or_create(&ResultLabel {
            result: if ok { "ok" } else { "failed" }.into(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_and_histogram() {
        let m = Metrics::new();
        m.sessions.inc();
        m.verdict("deny");
        m.verdict("deny");
        m.cache_hit("content");
        m.protocol_error("bad_magic");
        m.query_latency.observe(0.001);
        m.inline_event(68, true);
        m.inline_event(100, false);
        m.inline_event(0, true);
        let text = m.encode();
        assert!(
            text.contains("thinagent_scanner_sessions_total 1"),
            "{text}"
        );
        assert!(
            text.contains("thinagent_scanner_verdicts_total{decision=\"deny\"} 2"),
            "{text}"
        );
        assert!(text.contains("thinagent_scanner_cache_hits_total{kind=\"content\"} 1"));
        assert!(text.contains("thinagent_scanner_protocol_errors_total{kind=\"bad_magic\"} 1"));
        assert!(text.contains("thinagent_scanner_query_latency_seconds_count 1"));
        assert!(
            text.contains("thinagent_scanner_inline_content_bytes_total 168"),
            "{text}"
        );
        assert!(text.contains("thinagent_scanner_inline_events_total{whole=\"true\"} 2"));
        assert!(text.contains("thinagent_scanner_inline_events_total{whole=\"false\"} 1"));
    }

    #[tokio::test]
    async fn http_get_metrics_and_404() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let m = Arc::new(Metrics::new());
        m.queries.inc();
        let task = tokio::spawn(serve(l, m));
        for (path, want) in [
            ("/metrics", "thinagent_scanner_queries_total 1"),
            ("/", "404"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.contains(want), "{out}");
        }
        task.abort();
    }
}
