//! `GET /metrics`: Prometheus text, computed at scrape time from the live registry plus the totals of
//! streams that have ended. No label carries a stream name, so cardinality stays bounded whatever is pushed.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::state::AppState;
use crate::stream::Mode;

#[derive(Debug)]
struct StateCollector(std::sync::Weak<AppState>);

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(app) = self.0.upgrade() else {
            return Ok(());
        };
        let (live, mut t) = app.registry.snapshot();
        let (mut starting, mut pass, mut trans) = (0i64, 0i64, 0i64);
        let (mut live_now, mut fallback_now) = (0i64, 0i64);
        let mut clients_now = 0i64;
        let mut rt_min: Option<f64> = None;
        for e in &live {
            let mode = e.mode();
            match mode {
                Mode::Starting => starting += 1,
                Mode::Passthrough => pass += 1,
                Mode::Transcode => trans += 1,
            }
            match e.state() {
                crate::stream::State::Live => live_now += 1,
                crate::stream::State::Fallback => fallback_now += 1,
                _ => {}
            }
            let s = &e.hub.stats;
            t.bytes_in += e.bytes_in.load(Relaxed);
            t.bytes_out += s.bytes_sent.load(Relaxed);
            t.clients += s.clients_total.load(Relaxed);
            t.clients_dropped += s.dropped.load(Relaxed);
            clients_now += s.clients_now.load(Relaxed) as i64;
            t.frames_dropped += e.frames_dropped();
            t.failovers += e.counters.failovers.load(Relaxed);
            t.resumes += e.counters.resumes.load(Relaxed);
            t.continuations += e.counters.continuations.load(Relaxed);
            t.fallback_seconds += e.fallback_seconds();
            if mode == Mode::Transcode
                && let Some(rt) = e.rates.lock().unwrap().realtime_factor
            {
                rt_min = Some(rt_min.map_or(rt, |m: f64| m.min(rt)));
            }
        }
        let (
            streams_ended,
            bytes_in,
            bytes_out,
            clients_total,
            dropped,
            pipeline_errors,
            frames_dropped,
        ) = (
            t.streams,
            t.bytes_in,
            t.bytes_out,
            t.clients,
            t.clients_dropped,
            t.pipeline_errors,
            t.frames_dropped,
        );

        let g = ConstGauge::new(0i64);
        let mut streams = enc.encode_descriptor(
            "transcast_streams",
            "Live streams by mode",
            None,
            g.metric_type(),
        )?;
        for (mode, n) in [
            ("starting", starting),
            ("passthrough", pass),
            ("transcode", trans),
        ] {
            ConstGauge::new(n).encode(streams.encode_family(&[("mode", mode)])?)?;
        }
        let g = ConstGauge::new(0i64);
        let mut states = enc.encode_descriptor(
            "transcast_streams_by_state",
            "Streams by state: live (a source on air) or fallback (showing the slate)",
            None,
            g.metric_type(),
        )?;
        for (state, n) in [("live", live_now), ("fallback", fallback_now)] {
            ConstGauge::new(n).encode(states.encode_family(&[("state", state)])?)?;
        }
        counter(
            &mut enc,
            "transcast_failovers",
            "Times a stream lost its source and switched to its fallback",
            t.failovers,
        )?;
        counter(
            &mut enc,
            "transcast_resumes",
            "Times a stream on its fallback took a returning source back",
            t.resumes,
        )?;
        counter(
            &mut enc,
            "transcast_continuations",
            "Pushes that continued a source's input with Content-Range (souphttpclientsink's pieces)",
            t.continuations,
        )?;
        let c = ConstCounter::new(t.fallback_seconds);
        let m = enc.encode_descriptor(
            "transcast_fallback_seconds",
            "Seconds streams spent on their fallback",
            None,
            c.metric_type(),
        )?;
        c.encode(m)?;
        gauge(
            &mut enc,
            "transcast_clients",
            "HTTP clients connected now",
            clients_now,
        )?;
        counter(
            &mut enc,
            "transcast_streams_ended",
            "Streams that have ended",
            streams_ended,
        )?;
        counter(
            &mut enc,
            "transcast_bytes_in",
            "Bytes received from sources",
            bytes_in,
        )?;
        counter(
            &mut enc,
            "transcast_bytes_out",
            "Bytes sent to HTTP clients",
            bytes_out,
        )?;
        counter(
            &mut enc,
            "transcast_clients_served",
            "HTTP clients that joined a stream",
            clients_total,
        )?;
        counter(
            &mut enc,
            "transcast_clients_dropped",
            "Clients disconnected for lagging longer than --max-lag",
            dropped,
        )?;
        counter(
            &mut enc,
            "transcast_pipeline_errors",
            "Streams ended or refused by a pipeline error",
            pipeline_errors,
        )?;
        counter(
            &mut enc,
            "transcast_frames_dropped",
            "Frames dropped because a transcode fell behind real time",
            frames_dropped,
        )?;
        counter(
            &mut enc,
            "transcast_source_workers_started",
            "Source worker processes started (--source-isolation on)",
            crate::source::worker::STARTED.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "transcast_source_worker_deaths",
            "Source worker processes that died (a signal, an exit not asked for, a broken protocol); the log names the stream",
            crate::source::worker::DIED.load(Relaxed),
        )?;
        let mut outgoing = vec![
            (
                "transcast_hook_events_sent",
                "--hook-url events the endpoint took (2xx)",
                app.hooks.sent.load(Relaxed),
            ),
            (
                "transcast_hook_events_failed",
                "--hook-url events given up after every try",
                app.hooks.failed.load(Relaxed),
            ),
            (
                "transcast_hook_events_dropped",
                "--hook-url events dropped because the queue was full",
                app.hooks.dropped.load(Relaxed),
            ),
        ];
        if let Some(a) = &app.ext_auth {
            outgoing.extend([
                (
                    "transcast_auth_requests",
                    "Questions sent to --auth-url (cached answers not counted)",
                    a.stats.requests.load(Relaxed),
                ),
                (
                    "transcast_auth_refused",
                    "Pushes and views --auth-url refused (401/403, cached answers included)",
                    a.stats.refused.load(Relaxed),
                ),
                (
                    "transcast_auth_failures",
                    "Questions --auth-url left undecided (--auth-default applied)",
                    a.stats.failures.load(Relaxed),
                ),
            ]);
        }
        for (name, help, v) in outgoing {
            counter(&mut enc, name, help, v)?;
        }
        if let Some(rt) = rt_min {
            let g = ConstGauge::new(rt);
            let m = enc.encode_descriptor(
                "transcast_encoder_realtime_factor_min",
                "Lowest media-seconds-per-second of the transcoding streams (below 1: falling behind)",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        Ok(())
    }
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// The registry behind `/metrics`, reading `app` at each scrape.
pub fn registry(app: &Arc<AppState>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(StateCollector(Arc::downgrade(app))));
    r
}

pub async fn scrape(State(app): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    let registry = app.metrics.get().expect("set at startup");
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        return crate::error::Error::internal(format!("encoding metrics: {e}")).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}
