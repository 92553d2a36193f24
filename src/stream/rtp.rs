//! RTP/UDP rebroadcast of a stream through `rtpbin`, to targets that can change while it runs.
//!
//! ```text
//!  track branch ─ tee ─ queue ─────────────────────────────────────────────► mux (HTTP)
//!                   └─ queue(leaky) ─ valve ─ [rtp-*.pipeline: payloader] ─ rtpbin ─ multiudpsink  RTP  P / P+2
//!                                                                              └──── multiudpsink  RTCP P+1 / P+3
//! ```
//!
//! Port scheme for a target `host:P`: video RTP on P and its RTCP on P+1, audio RTP on P+2 and its RTCP on
//! P+3 (RTCP sender reports on; a BYE goes out when the stream ends). The valve is shut while there are no
//! targets, so a stream nobody receives over RTP costs nothing there; the leaky queue means a slow RTP branch
//! drops its own packets and never holds back the HTTP output. Sending to a port nobody listens on only makes
//! multiudpsink warn.

use std::net::SocketAddr;
use std::sync::Mutex;

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_sdp as gst_sdp;

use crate::error::{Error, Result};
use crate::templates::{Part, Templates};

/// RTP session numbers within rtpbin, which also fix the port offsets.
const VIDEO_SESSION: u32 = 0;
const AUDIO_SESSION: u32 = 1;

/// Ports for session `session` of a target whose base port is `base`: (RTP, RTCP).
pub fn ports(base: u16, session: u32) -> (u16, u16) {
    let rtp = base + 2 * session as u16;
    (rtp, rtp + 1)
}

/// Parses one `IP:port` target (400 otherwise).
pub fn parse_target(t: &str) -> Result<SocketAddr> {
    t.parse()
        .map_err(|_| Error::bad_request(format!("RTP/UDP target '{t}' is not an IP:port")))
}

/// `base` followed by the targets of `add` it does not have yet, in order (no duplicates).
pub fn merge_targets(
    base: &[SocketAddr],
    add: impl IntoIterator<Item = SocketAddr>,
) -> Vec<SocketAddr> {
    let mut out = Vec::with_capacity(base.len());
    for t in base.iter().copied().chain(add) {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

#[derive(Debug)]
struct Session {
    index: u32,
    media: &'static str,
    valve: glib::WeakRef<gst::Element>,
    payloader: glib::WeakRef<gst::Element>,
    rtp_sink: glib::WeakRef<gst::Element>,
    rtcp_sink: glib::WeakRef<gst::Element>,
}

/// The RTP side of one stream's pipeline.
#[derive(Debug)]
pub struct RtpOutput {
    rtpbin: glib::WeakRef<gst::Element>,
    sessions: Mutex<Vec<Session>>,
    targets: Mutex<Vec<SocketAddr>>,
}

impl RtpOutput {
    /// Adds an `rtpbin` to `pipeline`; tracks are attached as they are linked.
    pub fn new(pipeline: &gst::Pipeline, targets: Vec<SocketAddr>) -> Result<RtpOutput> {
        let rtpbin = gst::ElementFactory::make("rtpbin").name("rtpbin").build()?;
        pipeline.add(&rtpbin)?;
        Ok(RtpOutput {
            rtpbin: rtpbin.downgrade(),
            sessions: Mutex::default(),
            targets: Mutex::new(targets),
        })
    }

    /// Builds the RTP branch of a track from `tee`, for the encoded caps `codec` (e.g. `video/x-vp8`).
    /// Returns false when there is no RTP template for the codec.
    pub fn attach(
        &self,
        pipeline: &gst::Pipeline,
        templates: &Templates,
        tee: &gst::Element,
        codec: &str,
    ) -> Result<bool> {
        let (part, index, media) = match codec {
            "video/x-vp8" => (Part::RtpVp8, VIDEO_SESSION, "video"),
            "video/x-vp9" => (Part::RtpVp9, VIDEO_SESSION, "video"),
            "audio/x-opus" => (Part::RtpOpus, AUDIO_SESSION, "audio"),
            "audio/x-vorbis" => (Part::RtpVorbis, AUDIO_SESSION, "audio"),
            _ => return Ok(false),
        };
        let rtpbin = self
            .rtpbin
            .upgrade()
            .ok_or_else(|| Error::pipeline("rtpbin gone"))?;
        // `sessions` is held from reading the targets to registering the session, and target changes take it
        // first: a change can neither slip in between (leaving this branch with stale targets) nor be lost.
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let targets = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let valve = gst::ElementFactory::make("valve")
            .property("drop", targets.is_empty())
            .property_from_str("drop-mode", "forward-sticky-events")
            .build()?;
        let branch = templates.bin(part)?;
        let payloader = branch
            .iterate_recurse()
            .into_iter()
            .flatten()
            .find(|e| {
                e.factory()
                    .is_some_and(|f| f.name().starts_with("rtp") && f.name().ends_with("pay"))
            })
            .ok_or_else(|| {
                Error::pipeline(format!(
                    "template {} has no RTP payloader",
                    part.file_name()
                ))
            })?;
        let udp = |port_of: fn(u16, u32) -> u16| -> Result<gst::Element> {
            Ok(gst::ElementFactory::make("multiudpsink")
                .property("clients", clients(&targets, index, port_of))
                .property("sync", false)
                .property("async", false)
                .build()?)
        };
        let rtp_sink = udp(|b, s| ports(b, s).0)?;
        let rtcp_sink = udp(|b, s| ports(b, s).1)?;
        pipeline.add_many([&valve, branch.upcast_ref(), &rtp_sink, &rtcp_sink])?;
        valve.link(&branch)?;
        let send_sink = rtpbin
            .request_pad_simple(&format!("send_rtp_sink_{index}"))
            .ok_or_else(|| Error::pipeline("rtpbin refused a send session"))?;
        branch
            .static_pad("src")
            .expect("checked at load")
            .link(&send_sink)
            .map_err(|e| {
                Error::pipeline(format!("linking {} to rtpbin: {e:?}", part.file_name()))
            })?;
        rtpbin.link_pads(
            Some(&format!("send_rtp_src_{index}")),
            &rtp_sink,
            Some("sink"),
        )?;
        let rtcp_src = rtpbin
            .request_pad_simple(&format!("send_rtcp_src_{index}"))
            .ok_or_else(|| Error::pipeline("rtpbin refused an RTCP pad"))?;
        rtcp_src
            .link(
                &rtcp_sink
                    .static_pad("sink")
                    .expect("multiudpsink has a sink"),
            )
            .map_err(|e| Error::pipeline(format!("linking RTCP: {e:?}")))?;
        for e in [&rtp_sink, &rtcp_sink, branch.upcast_ref(), &valve] {
            e.sync_state_with_parent()?;
        }
        let tee_src = tee
            .request_pad_simple("src_%u")
            .ok_or_else(|| Error::pipeline("tee refused a pad"))?;
        tee_src
            .link(&valve.static_pad("sink").expect("valve has a sink"))
            .map_err(|e| Error::pipeline(format!("linking the RTP tap: {e:?}")))?;
        sessions.push(Session {
            index,
            media,
            valve: valve.downgrade(),
            payloader: payloader.downgrade(),
            rtp_sink: rtp_sink.downgrade(),
            rtcp_sink: rtcp_sink.downgrade(),
        });
        tracing::debug!(%codec, session = index, "RTP branch attached");
        Ok(true)
    }

    pub fn targets(&self) -> Vec<SocketAddr> {
        self.targets.lock().unwrap().clone()
    }

    /// Replaces the target list on the running pipeline (no restart; HTTP untouched).
    pub fn set_targets(&self, targets: Vec<SocketAddr>) {
        self.edit_targets(|_| targets);
    }

    /// Changes the target list atomically: `edit` gets the current list and returns the new one, with no
    /// other change in between (two PATCHes at once both take effect). Returns the new list.
    pub fn edit_targets(
        &self,
        edit: impl FnOnce(Vec<SocketAddr>) -> Vec<SocketAddr>,
    ) -> Vec<SocketAddr> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let current = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let targets = edit(current);
        for s in sessions.iter() {
            if let (Some(rtp), Some(rtcp), Some(valve)) = (
                s.rtp_sink.upgrade(),
                s.rtcp_sink.upgrade(),
                s.valve.upgrade(),
            ) {
                rtp.set_property("clients", clients(&targets, s.index, |b, i| ports(b, i).0));
                rtcp.set_property("clients", clients(&targets, s.index, |b, i| ports(b, i).1));
                valve.set_property("drop", targets.is_empty());
            }
        }
        *self.targets.lock().unwrap_or_else(|e| e.into_inner()) = targets.clone();
        targets
    }

    /// An SDP for `target` from the payloaders' negotiated caps.
    pub fn sdp(&self, stream: &str, target: SocketAddr) -> Result<String> {
        let mut sdp = gst_sdp::SDPMessage::new();
        sdp.set_version("0");
        let (addrtype, addr) = match target.ip() {
            std::net::IpAddr::V4(a) => ("IP4", a.to_string()),
            std::net::IpAddr::V6(a) => ("IP6", a.to_string()),
        };
        let id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        sdp.set_origin("-", &id.to_string(), "1", "IN", addrtype, &addr);
        sdp.set_session_name(&format!("transcast {stream}"));
        sdp.set_connection("IN", addrtype, &addr, 0, 0);
        // No add_time(): "t=0 0" is the default, and add_time with an empty repeat list makes as_text()
        // crash (gstreamer-sdp 0.25).
        let sessions = self.sessions.lock().unwrap();
        let mut media_count = 0;
        for s in sessions.iter() {
            let Some(caps) = s
                .payloader
                .upgrade()
                .and_then(|p| p.static_pad("src"))
                .and_then(|p| p.current_caps())
            else {
                continue;
            };
            let (rtp, rtcp) = ports(target.port(), s.index);
            let mut media = gst_sdp::SDPMedia::new();
            // Formats, rtpmap and fmtp from the caps; then our transport.
            media
                .set_media_from_caps(&caps)
                .map_err(|e| Error::pipeline(format!("SDP from {caps}: {e}")))?;
            media.set_media(s.media);
            media.set_port_info(u32::from(rtp), 1);
            media.set_proto("RTP/AVP");
            media.add_attribute("rtcp", Some(&rtcp.to_string()));
            media.add_attribute("recvonly", None);
            sdp.add_media(media);
            media_count += 1;
        }
        if media_count == 0 {
            return Err(Error::not_found(format!(
                "stream '{stream}' has no RTP output yet"
            )));
        }
        Ok(sdp
            .as_text()
            .map_err(|e| Error::internal(e.to_string()))?
            .to_string())
    }
}

/// `host:port,host:port` for multiudpsink.
fn clients(targets: &[SocketAddr], session: u32, port_of: fn(u16, u32) -> u16) -> String {
    targets
        .iter()
        .map(|t| format!("{}:{}", t.ip(), port_of(t.port(), session)))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_scheme() {
        assert_eq!(ports(5000, VIDEO_SESSION), (5000, 5001));
        assert_eq!(ports(5000, AUDIO_SESSION), (5002, 5003));
        let t: Vec<SocketAddr> = vec![
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.2:6000".parse().unwrap(),
        ];
        assert_eq!(
            clients(&t, AUDIO_SESSION, |b, s| ports(b, s).1),
            "127.0.0.1:5003,127.0.0.2:6003"
        );
    }

    #[test]
    fn merging_keeps_order_and_drops_every_duplicate() {
        let t = |s: &str| parse_target(s).unwrap();
        let merged = merge_targets(
            &[t("127.0.0.1:5000"), t("127.0.0.1:6000")],
            [
                t("127.0.0.1:7000"),
                t("127.0.0.1:5000"),
                t("127.0.0.1:7000"),
            ],
        );
        assert_eq!(
            merged,
            vec![
                t("127.0.0.1:5000"),
                t("127.0.0.1:6000"),
                t("127.0.0.1:7000")
            ]
        );
        // Duplicates that are not adjacent go too (Vec::dedup would keep them).
        assert_eq!(
            merge_targets(&[], [t("127.0.0.1:1"), t("127.0.0.1:2"), t("127.0.0.1:1")]).len(),
            2
        );
        assert!(parse_target("localhost:5000").is_err());
    }

    #[test]
    fn targets_must_be_allowed_and_leave_room_for_four_ports() {
        use crate::config::{check_rtp_targets, loopback_masks};
        let allow = loopback_masks();
        assert!(check_rtp_targets(&["127.0.0.1:5000".parse().unwrap()], &allow).is_ok());
        let e = check_rtp_targets(&["10.0.0.1:5000".parse().unwrap()], &allow).unwrap_err();
        assert_eq!(e.kind, crate::error::Kind::Forbidden);
        assert!(check_rtp_targets(&["127.0.0.1:65534".parse().unwrap()], &allow).is_err());
    }
}
