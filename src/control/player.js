/*
 * transcast's low-latency player: plain JavaScript, no build step, no dependencies.
 *
 *   <script src="https://HOST/player.js"></script>
 *   <video data-transcast="https://HOST/live/NAME" muted autoplay playsinline controls></video>
 *
 * or from a script: `const p = transcast.play(videoOrAudioElement, "https://HOST/live/NAME", {target: 0.2})`;
 * `p.stats` says how it is doing, `p.destroy()` stops it. The element's `transcast` property is its player.
 *
 * It reads `/live/NAME?format=tracks` with fetch(): the stream's tracks apart, each a WebM of its own, in records
 * ([index: u8][length: u32 BE][payload]; index 255 is a JSON description of the tracks). Each track goes to its own
 * Media Source Extensions SourceBuffer. The playhead is kept `target` seconds behind the newest media: a gentle
 * playbackRate change (0.95 to 1.1) keeps it there, a jump brings it back from further away (a hidden tab, a
 * stall). A broken or ended response reconnects, with a growing pause, without reloading the page. Without MSE
 * (or for codecs it cannot play) the element plays `/live/NAME` itself, as a plain <video src> does.
 */
(function (global) {
  'use strict';

  var DEFAULTS = {
    target: 0.2,        // seconds of media kept ahead of the playhead
    band: 0.06,         // how far the buffer may drift from the target before the rate changes
    jumpAfter: 1.0,     // further behind than target + this: jump
    keep: 10,           // seconds kept behind the playhead in the SourceBuffers
    silence: 4,         // no bytes for this long: reconnect
    reconnectMin: 0.5,  // first pause before reconnecting (s), doubling up to reconnectMax
    reconnectMax: 5
  };
  var DESCRIPTION = 255;

  function tracksUrl(url) {
    var u = new URL(url, global.location.href);
    u.searchParams.set('format', 'tracks');
    return u.toString();
  }

  function Player(media, url, options) {
    var self = this;
    this.media = media;
    this.url = url;
    this.opts = {};
    var k;
    for (k in DEFAULTS) this.opts[k] = DEFAULTS[k];
    for (k in options || {}) this.opts[k] = options[k];
    this.stats = {
      mode: '', state: 'connecting', behind: null, buffer: null, stalls: 0, jumps: 0,
      rateChanges: 0, reconnects: 0, bytes: 0, error: ''
    };
    this.gen = 0;
    this.jumpedAt = -Infinity;
    this.backoff = this.opts.reconnectMin;
    this.destroyed = false;
    this.tracks = [];
    media.transcast = this;
    // A stall: the playhead ran out of media while playing (not the wait that follows the player's own jump).
    this.onWaiting = function () {
      var jumping = media.seeking || performance.now() - self.jumpedAt < 1000;
      if (self.stats.state === 'playing' && !jumping) self.stats.stalls++;
    };
    this.onPlaying = function () { if (self.stats.mode === 'mse') self.stats.state = 'playing'; };
    // Only the viewer pauses (the player never does): it stays paused until they play again.
    this.onPause = function () { if (self.stats.state === 'playing') self.userPaused = true; };
    this.onPlay = function () { self.userPaused = false; };
    media.addEventListener('waiting', this.onWaiting);
    media.addEventListener('playing', this.onPlaying);
    media.addEventListener('pause', this.onPause);
    media.addEventListener('play', this.onPlay);
    if (!Player.supported()) {
      this.plain('this browser has no Media Source Extensions');
      return;
    }
    this.stats.mode = 'mse';
    this.timer = setInterval(function () { self.tick(); }, 100);
    this.connect();
  }

  Player.supported = function () {
    return !!(global.MediaSource && global.fetch && global.ReadableStream && global.AbortController);
  };

  /** The plain way: the element reads the stream itself (1-3 s behind, but it plays). */
  Player.prototype.plain = function (why) {
    this.teardown();
    clearInterval(this.timer);
    this.stats.mode = 'plain';
    this.stats.state = 'plain';
    this.stats.error = why;
    this.media.src = this.url;
    var p = this.media.play();
    if (p && p.catch) p.catch(function () {});
  };

  Player.prototype.teardown = function () {
    if (this.abort) this.abort.abort();
    this.abort = null;
    this.tracks = [];
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = null;
    this.ms = null;
  };

  Player.prototype.destroy = function () {
    this.destroyed = true;
    this.gen++;
    clearInterval(this.timer);
    clearTimeout(this.retryTimer);
    this.teardown();
    this.media.removeEventListener('waiting', this.onWaiting);
    this.media.removeEventListener('playing', this.onPlaying);
    this.media.removeEventListener('pause', this.onPause);
    this.media.removeEventListener('play', this.onPlay);
    this.media.removeAttribute('src');
    this.media.load();
  };

  Player.prototype.connect = function () {
    var self = this;
    var gen = ++this.gen;
    this.teardown();
    var abort = this.abort = new AbortController();
    this.stats.state = 'connecting';
    this.lastBytes = performance.now();
    fetch(tracksUrl(this.url), { signal: abort.signal, cache: 'no-store' }).then(function (response) {
      if (gen !== self.gen) return null;
      if (!response.ok) {
        return response.text().then(function (t) {
          throw new Error('HTTP ' + response.status + ' ' + t.slice(0, 200));
        });
      }
      self.stats.error = '';
      var ms = new MediaSource();
      self.ms = ms;
      self.objectUrl = URL.createObjectURL(ms);
      self.media.src = self.objectUrl;
      return new Promise(function (resolve) {
        ms.addEventListener('sourceopen', resolve, { once: true });
      }).then(function () { return self.read(gen, response.body.getReader()); });
    }).catch(function (e) {
      if (gen === self.gen && !self.destroyed) self.retry(e);
    });
  };

  /** Reads records until the response ends or breaks. */
  Player.prototype.read = function (gen, reader) {
    var self = this;
    var buf = new Uint8Array(0);
    function next() {
      return reader.read().then(function (r) {
        if (gen !== self.gen) { reader.cancel(); return; }
        if (r.done) throw new Error('the stream ended');
        self.lastBytes = performance.now();
        self.stats.bytes += r.value.length;
        var joined = new Uint8Array(buf.length + r.value.length);
        joined.set(buf, 0);
        joined.set(r.value, buf.length);
        var at = 0;
        var view = new DataView(joined.buffer);
        while (joined.length - at >= 5) {
          var index = joined[at];
          var len = view.getUint32(at + 1);
          if (joined.length - at - 5 < len) break;
          var payload = joined.slice(at + 5, at + 5 + len);
          at += 5 + len;
          if (index === DESCRIPTION) {
            if (!self.describe(JSON.parse(new TextDecoder().decode(payload)))) return;
          } else {
            self.append(index, payload);
          }
        }
        buf = joined.slice(at);
        return next();
      });
    }
    return next();
  };

  /** The tracks: one SourceBuffer each. False when this browser cannot play them (it falls back). */
  Player.prototype.describe = function (d) {
    var self = this;
    var unsupported = d.tracks.filter(function (t) { return !MediaSource.isTypeSupported(t.type); });
    if (unsupported.length) {
      this.plain('MSE cannot play ' + unsupported.map(function (t) { return t.type; }).join(', '));
      return false;
    }
    this.tracks = d.tracks.map(function (t) {
      var sb = self.ms.addSourceBuffer(t.type);
      var track = { kind: t.kind, sb: sb, queue: [] };
      sb.addEventListener('updateend', function () { self.flush(track); });
      sb.addEventListener('error', function () { self.stats.error = t.kind + ' SourceBuffer error'; });
      return track;
    });
    this.stats.state = 'buffering';
    return true;
  };

  Player.prototype.append = function (index, payload) {
    var t = this.tracks[index];
    if (!t) return;
    t.queue.push(payload);
    this.flush(t);
  };

  /** Appends what is queued, in one call, once the SourceBuffer is free. */
  Player.prototype.flush = function (t) {
    if (!this.ms || this.ms.readyState !== 'open' || t.sb.updating || !t.queue.length) return;
    var data = t.queue[0];
    if (t.queue.length > 1) {
      var n = 0, i;
      for (i = 0; i < t.queue.length; i++) n += t.queue[i].length;
      data = new Uint8Array(n);
      n = 0;
      for (i = 0; i < t.queue.length; i++) { data.set(t.queue[i], n); n += t.queue[i].length; }
    }
    t.queue = [];
    try {
      t.sb.appendBuffer(data);
    } catch (e) {
      // QuotaExceededError: drop what is behind the playhead and try again.
      t.queue.unshift(data);
      this.trim(t, 2);
      this.stats.error = e.name + ': ' + e.message;
    }
  };

  /** Removes media more than `keep` seconds behind the playhead. */
  Player.prototype.trim = function (t, keep) {
    var b = t.sb.buffered;
    var upTo = this.media.currentTime - keep;
    if (t.sb.updating || !b.length || b.start(0) >= upTo - 1) return;
    try { t.sb.remove(0, upTo); } catch (e) { /* the MediaSource went away */ }
  };

  Player.prototype.retry = function (e) {
    var self = this;
    this.stats.state = 'reconnecting';
    this.stats.error = String(e && e.message || e);
    this.stats.reconnects++;
    var wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, this.opts.reconnectMax);
    this.gen++;
    this.teardown();
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(function () { self.connect(); }, wait * 1000);
  };

  /** Ten times a second: where the playhead is against the newest media, and what to do about it. */
  Player.prototype.tick = function () {
    var m = this.media, o = this.opts, s = this.stats;
    if (this.tracks.length && performance.now() - this.lastBytes > o.silence * 1000) {
      this.retry(new Error('no data for ' + o.silence + ' s'));
      return;
    }
    var b = m.buffered;
    if (!b.length) return;
    var start = b.start(b.length - 1), end = b.end(b.length - 1);
    var now = performance.now();
    if (end !== this.lastEnd) { this.lastEnd = end; this.lastEndAt = now; }
    var buffer = end - m.currentTime;
    s.buffer = buffer;
    // Behind the newest media, and behind by however long none has come.
    s.behind = buffer + (now - this.lastEndAt) / 1000;
    if (s.state === 'buffering' || s.state === 'connecting') this.backoff = o.reconnectMin;
    if (m.seeking) return;
    if (m.currentTime < start || buffer > o.target + o.jumpAfter) {
      m.currentTime = Math.max(start, end - o.target);
      this.jumpedAt = now;
      s.jumps++;
      buffer = end - m.currentTime;
    }
    if (m.paused && (s.state === 'buffering' || m.autoplay) && !m.ended && !this.userPaused) {
      var p = m.play();
      if (p && p.catch) p.catch(function () {});
    }
    // Faster (1.05, far ahead 1.1) or slower (0.95) until the buffer is back within half the band.
    var rate = m.playbackRate;
    if (buffer > o.target + 4 * o.band) rate = 1.1;
    else if (buffer > o.target + o.band) rate = rate > 1 ? rate : 1.05;
    else if (buffer < o.target - o.band) rate = 0.95;
    else if (Math.abs(buffer - o.target) < o.band / 2) rate = 1;
    if (rate !== m.playbackRate) {
      m.playbackRate = rate;
      s.rateChanges++;
    }
    for (var i = 0; i < this.tracks.length; i++) this.trim(this.tracks[i], o.keep);
  };

  function play(media, url, options) {
    return new Player(media, url, options);
  }

  function auto() {
    var els = document.querySelectorAll('video[data-transcast], audio[data-transcast]');
    for (var i = 0; i < els.length; i++) {
      if (!els[i].transcast) play(els[i], els[i].getAttribute('data-transcast'));
    }
  }

  global.transcast = { play: play, Player: Player, defaults: DEFAULTS };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', auto);
  else auto();
})(window);
