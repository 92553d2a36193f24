"""A live RTSP server for the pull tests: GStreamer's gst-rtsp-server (a real RTSP peer) serving H.264 video and
Opus audio from test sources at rtsp://127.0.0.1:PORT/cam. Usage: rtsp-server.py PORT. Prints "ready" once
it listens; runs until killed."""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! rtph264pay name=pay0 pt=96 "
    "audiotestsrc is-live=true ! audioconvert ! audioresample ! opusenc ! rtpopuspay name=pay1 pt=97 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
