// livevsr viewer: plays a stream's upscaled rendition over WHEP, optionally beside the original,
// and shows the server's live stats from /api/streams. Static, no build step, no dependencies.
//
// URL: /view/<name> or /?stream=<name> (default: the first stream). Query options:
//   mode=upscaled|compare|side   start in that view
//   probe=1                      read the timestamp barcode from each frame (glass-to-glass latency)
//   cell=8                       the barcode's cell size on the source, in pixels (livevsr/telemetry/barcode.py)
//   token=...                    the viewer token when the server has http.viewer_token set; kept for
//                                this tab (sessionStorage) and taken out of the address bar
// Everything the page measures is in window.livevsrStats, for tests and the console.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const TOKEN_KEY = 'livevsr.viewerToken';
  let token = params.get('token') || storage('get') || '';
  if (params.has('token')) {
    storage('set', token);
    const url = new URL(location.href);
    url.searchParams.delete('token');
    history.replaceState(null, '', url);
  }
  const authHeaders = () => (token ? { Authorization: `Bearer ${token}` } : {});

  function storage(op, value) {
    try {
      if (op === 'get') return sessionStorage.getItem(TOKEN_KEY);
      sessionStorage.setItem(TOKEN_KEY, value);
    } catch (_) { /* storage disabled: the token lives as long as the page */ }
    return null;
  }
  const PROBE = params.get('probe') === '1';
  const SOURCE_CELL_PX = Number(params.get('cell')) || 8;
  const POLL_MS = 1000;
  const STAGES = ['decode', 'queue', 'engine', 'encode', 'send', 'total'];
  const SPARK_POINTS = 120;

  const playerStats = () => ({
    connection: 'new', videoWidth: 0, videoHeight: 0, currentTime: 0,
    framesDecoded: 0, framesDropped: 0, freezeCount: 0, fps: 0, bitrate_bps: 0,
    jitterBuffer_ms: null, retries: 0, lastError: null, audioSamples: null, muted: true,
  });
  const stats = {
    stream: null, state: 'unknown', reason: '', engine: null, version: null,
    api: null, apiError: null, mode: 'upscaled',
    upscaled: playerStats(), source: playerStats(), probe: null,
  };
  window.livevsrStats = stats;

  // ---------------------------------------------------------------------------------------------
  // WHEP player: one RTCPeerConnection per video, non-trickle ICE, retried with backoff

  function iceGatheringDone(pc, timeoutMs) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs); // host candidates are enough on a LAN
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); }
      });
    });
  }

  class WhepPlayer {
    // audio: also ask for the stream's Opus audio (the upscaled player; the original stays silent)
    constructor(url, video, st, audio = false) {
      this.url = url;
      this.audio = audio;
      this.video = video;
      this.st = st;
      this.pc = null;
      this.resource = null;
      this.generation = 0;
      this.failures = 0;
      this.retryTimer = null;
      this.running = false;
      this.lastFrames = 0;
      this.lastProgress = performance.now();
      this.lastBytes = null;
    }

    start() {
      if (this.running) return;
      this.running = true;
      this.connect();
    }

    stop() {
      this.running = false;
      this.generation++;
      clearTimeout(this.retryTimer);
      this.teardown();
      this.video.srcObject = null;
      this.st.connection = 'stopped';
    }

    async connect() {
      clearTimeout(this.retryTimer);
      if (!this.running) return;
      const gen = ++this.generation;
      this.teardown();
      const pc = new RTCPeerConnection();
      this.pc = pc;
      this.st.connection = 'connecting';
      try {
        pc.addTransceiver('video', { direction: 'recvonly' });
        if (this.audio) pc.addTransceiver('audio', { direction: 'recvonly' });
        // Audio and video share one MediaStream, so the browser lip-syncs them (RTCP sender reports).
        const media = new MediaStream();
        pc.ontrack = (ev) => {
          // keep playout buffering minimal: this is a live monitor, not a film
          try { ev.receiver.jitterBufferTarget = 0; } catch (_) { /* not in every browser */ }
          media.addTrack(ev.track);
          if (this.video.srcObject !== media) this.video.srcObject = media;
          this.video.play().catch(() => {});
        };
        pc.onconnectionstatechange = () => {
          if (gen !== this.generation) return;
          this.st.connection = pc.connectionState;
          if (pc.connectionState === 'connected') this.failures = 0;
          if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
            this.retry(`connection ${pc.connectionState}`);
          } else if (pc.connectionState === 'disconnected') {
            setTimeout(() => {
              if (gen === this.generation && pc.connectionState === 'disconnected') this.retry('disconnected');
            }, 4000);
          }
        };
        await pc.setLocalDescription(await pc.createOffer());
        await iceGatheringDone(pc, 2000);
        if (gen !== this.generation) return;
        const res = await fetch(this.url, {
          method: 'POST', body: pc.localDescription.sdp, headers: { 'Content-Type': 'application/sdp', ...authHeaders() },
        });
        if (res.status !== 201) {
          let detail = '';
          try { detail = (await res.json()).error || ''; } catch (_) { /* not JSON */ }
          throw new Error(`WHEP ${res.status}${detail ? `: ${detail}` : ''}`);
        }
        const location = res.headers.get('Location');
        const resource = location ? new URL(location, this.url).toString() : null;
        const answer = await res.text();
        if (gen !== this.generation) { deleteResource(resource); return; }
        this.resource = resource;
        await pc.setRemoteDescription({ type: 'answer', sdp: answer });
        this.lastProgress = performance.now();
      } catch (err) {
        if (gen === this.generation) this.retry(err && err.message ? err.message : String(err));
      }
    }

    retry(reason) {
      if (!this.running) return;
      this.st.lastError = reason;
      this.st.retries++;
      this.teardown();
      this.generation++;
      const delay = Math.min(1000 * 2 ** this.failures, 8000);
      this.failures++;
      this.retryTimer = setTimeout(() => this.connect(), delay);
    }

    teardown() {
      deleteResource(this.resource);
      this.resource = null;
      if (this.pc) {
        this.pc.ontrack = null;
        this.pc.onconnectionstatechange = null;
        this.pc.close();
        this.pc = null;
      }
    }

    // Once a second: receiver stats, and a watchdog for a connection that carries no frames.
    async tick(dtS, streamLive) {
      const st = this.st;
      const v = this.video;
      st.videoWidth = v.videoWidth;
      st.videoHeight = v.videoHeight;
      st.currentTime = v.currentTime;
      if (!this.pc) return;
      let report;
      try { report = await this.pc.getStats(); } catch (_) { return; }
      st.muted = v.muted;
      report.forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'audio') st.audioSamples = r.totalSamplesReceived || 0;
        if (r.type !== 'inbound-rtp' || r.kind !== 'video') return;
        const frames = r.framesDecoded || 0;
        st.fps = dtS > 0 ? Math.max(0, (frames - st.framesDecoded) / dtS) : 0;
        st.framesDecoded = frames;
        st.framesDropped = r.framesDropped || 0;
        st.freezeCount = r.freezeCount || 0;
        if (this.lastBytes !== null && dtS > 0) st.bitrate_bps = (8 * (r.bytesReceived - this.lastBytes)) / dtS;
        this.lastBytes = r.bytesReceived;
        if (r.jitterBufferEmittedCount) {
          st.jitterBuffer_ms = (1000 * r.jitterBufferDelay) / r.jitterBufferEmittedCount;
        }
      });
      const now = performance.now();
      if (st.framesDecoded !== this.lastFrames) {
        this.lastFrames = st.framesDecoded;
        this.lastProgress = now;
      } else if (streamLive && st.connection === 'connected' && now - this.lastProgress > 6000) {
        this.retry('no frames for 6 s');
      }
    }
  }

  function deleteResource(resource) {
    if (resource) fetch(resource, { method: 'DELETE', keepalive: true }).catch(() => {});
  }

  // ---------------------------------------------------------------------------------------------
  // Timestamp barcode reader: the layout of livevsr/telemetry/barcode.py, read from a canvas

  const START_BITS = [1, 0, 1, 0, 1, 1, 0, 0];
  const VALUE_BITS = 48;
  const TOTAL_CELLS = START_BITS.length + VALUE_BITS + 16;
  const VALUE_MOD = 2 ** 48;
  const MIN_CONTRAST = 64;

  function crc16(bytes) {
    let crc = 0xffff;
    for (const b of bytes) {
      crc ^= b << 8;
      for (let i = 0; i < 8; i++) crc = (crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1) & 0xffff;
    }
    return crc;
  }

  // pixels: RGBA of the top `height` rows, `width` wide. Returns the value in µs, or null.
  function decodeBarcode(pixels, width, height, cell) {
    const perRow = Math.floor(width / cell);
    if (perRow < START_BITS.length) return null;
    const rows = Math.ceil(TOTAL_CELLS / perRow);
    if (rows * cell > height) return null;
    const levels = new Float64Array(TOTAL_CELLS);
    for (let i = 0; i < TOTAL_CELLS; i++) {
      const r = Math.floor(i / perRow);
      const c = i % perRow;
      const y0 = Math.floor(r * cell + cell * 0.25);
      const y1 = Math.max(Math.floor(r * cell + cell * 0.75), y0 + 1);
      const x0 = Math.floor(c * cell + cell * 0.25);
      const x1 = Math.max(Math.floor(c * cell + cell * 0.75), x0 + 1);
      let sum = 0;
      for (let y = y0; y < y1; y++) {
        let p = (y * width + x0) * 4;
        for (let x = x0; x < x1; x++, p += 4) {
          sum += 0.299 * pixels[p] + 0.587 * pixels[p + 1] + 0.114 * pixels[p + 2];
        }
      }
      levels[i] = sum / ((y1 - y0) * (x1 - x0));
    }
    let white = 0;
    let black = 0;
    START_BITS.forEach((b, i) => { if (b) white += levels[i]; else black += levels[i]; });
    white /= 4;
    black /= 4;
    if (white - black < MIN_CONTRAST) return null;
    const bits = [];
    for (let i = 0; i < TOTAL_CELLS; i++) {
      const n = (levels[i] - black) / (white - black);
      if (n > 0.3 && n < 0.7) return null;
      bits.push(n >= 0.5 ? 1 : 0);
    }
    for (let i = 0; i < START_BITS.length; i++) if (bits[i] !== START_BITS[i]) return null;
    let value = 0;
    for (let i = 0; i < VALUE_BITS; i++) value = value * 2 + bits[START_BITS.length + i];
    let check = 0;
    for (let i = START_BITS.length + VALUE_BITS; i < TOTAL_CELLS; i++) check = check * 2 + bits[i];
    const bytes = [];
    for (let i = 5; i >= 0; i--) bytes.push(Math.floor(value / 2 ** (8 * i)) % 256);
    return crc16(bytes) === check ? value : null;
  }

  window.livevsrBarcode = { decode: decodeBarcode }; // for tests: the same layout as barcode.py

  function percentile(sorted, q) {
    if (!sorted.length) return null;
    return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  }

  class BarcodeProbe {
    constructor(video, key) {
      this.video = video;
      this.canvas = document.createElement('canvas');
      this.ctx = this.canvas.getContext('2d', { willReadFrequently: true });
      this.samples = [];
      this.cell = null;
      this.st = {
        frames: 0, read: 0, cell_px: null, last_ms: null,
        p50_ms: null, p95_ms: null, p99_ms: null, max_ms: null, count: 0,
      };
      stats.probe[key] = this.st;
      if (!('requestVideoFrameCallback' in HTMLVideoElement.prototype)) {
        this.st.error = 'this browser has no requestVideoFrameCallback';
        return;
      }
      const onFrame = (now, meta) => {
        try { this.frame(now, meta); } catch (err) { this.st.error = String(err); }
        video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
    }

    candidates(width) {
      const input = stats.api && stats.api.input;
      const out = [];
      if (this.cell) out.push(this.cell);
      if (input && input.width) out.push((SOURCE_CELL_PX * width) / input.width);
      for (const k of [4, 1, 2]) out.push(SOURCE_CELL_PX * k);
      return [...new Set(out)];
    }

    frame(now, meta) {
      const v = this.video;
      const width = v.videoWidth;
      const height = v.videoHeight;
      if (!width || !height) return;
      this.st.frames++;
      const cells = this.candidates(width);
      const band = Math.min(height, Math.ceil(Math.max(...cells.map(
        (c) => Math.ceil(TOTAL_CELLS / Math.max(1, Math.floor(width / c))) * c))));
      if (this.canvas.width !== width || this.canvas.height !== band) {
        this.canvas.width = width;
        this.canvas.height = band;
      }
      this.ctx.drawImage(v, 0, 0, width, band, 0, 0, width, band);
      const pixels = this.ctx.getImageData(0, 0, width, band).data;
      for (const cell of cells) {
        const value = decodeBarcode(pixels, width, band, cell);
        if (value === null) continue;
        this.cell = cell;
        this.st.cell_px = cell;
        // the wall clock when this frame is (expected to be) on screen, in µs
        const shownUs = Math.round((performance.timeOrigin + (meta.expectedDisplayTime || now)) * 1000);
        const ms = ((((shownUs - value) % VALUE_MOD) + VALUE_MOD) % VALUE_MOD) / 1000;
        this.st.read++;
        this.st.last_ms = ms;
        this.samples.push(ms);
        if (this.samples.length > 18000) this.samples.shift(); // 10 min at 30 fps
        return;
      }
    }

    // the panel shows the last 10 s (300 frames at 30 fps); count is every sample kept
    summarise() {
      const sorted = this.samples.slice(-300).sort((a, b) => a - b);
      Object.assign(this.st, {
        count: this.samples.length,
        p50_ms: percentile(sorted, 0.5),
        p95_ms: percentile(sorted, 0.95),
        p99_ms: percentile(sorted, 0.99),
        max_ms: sorted.length ? sorted[sorted.length - 1] : null,
      });
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Page

  const stage = $('stage');
  const videoUp = $('video-upscaled');
  const videoSrc = $('video-source');
  let streamName = streamFromUrl();
  let upscaled = null;
  let source = null;
  const probes = [];
  const spark = [];
  let lastPoll = null;
  let lastFrames = null;

  function streamFromUrl() {
    const m = location.pathname.match(/^\/view\/([^/]+)/);
    if (m) return decodeURIComponent(m[1]);
    return params.get('stream');
  }

  function whepUrl(name, rendition) {
    const base = `${location.origin}/whep/${encodeURIComponent(name)}`;
    return rendition === 'source' ? `${base}/source` : base;
  }

  function ensurePlayers() {
    if (!streamName) return;
    if (!upscaled) {
      upscaled = new WhepPlayer(whepUrl(streamName), videoUp, stats.upscaled, true);
      upscaled.start();
    }
    const wantSource = stats.mode !== 'upscaled';
    if (wantSource && !source) {
      source = new WhepPlayer(whepUrl(streamName, 'source'), videoSrc, stats.source);
      source.start();
    } else if (!wantSource && source) {
      source.stop();
      source = null;
      stats.source = Object.assign(playerStats(), { connection: 'stopped' });
    }
    if (PROBE && !probes.length) {
      stats.probe = {};
      probes.push(new BarcodeProbe(videoUp, 'upscaled'));
      probes.push(new BarcodeProbe(videoSrc, 'source'));
      // for benchmarks: start a measurement window, then fetch its raw samples (ms, oldest first)
      window.livevsrProbe = {
        reset() { probes.forEach((p) => { p.samples = []; p.summarise(); }); },
        samples(key) { return [...probes[key === 'source' ? 1 : 0].samples]; },
      };
    }
  }

  function setMode(mode) {
    if (!['upscaled', 'compare', 'side'].includes(mode)) mode = 'upscaled';
    stats.mode = mode;
    stage.dataset.mode = mode;
    document.querySelectorAll('.modes button').forEach((b) => {
      b.setAttribute('aria-pressed', String(b.dataset.mode === mode));
    });
    const url = new URL(location.href);
    if (mode === 'upscaled') url.searchParams.delete('mode'); else url.searchParams.set('mode', mode);
    history.replaceState(null, '', url);
    ensurePlayers();
  }

  // Compare divider: drag anywhere on the picture, or use the arrow keys on the divider
  function setSplit(percent) {
    const p = Math.max(0, Math.min(100, percent));
    stage.style.setProperty('--pos', `${p}%`);
    $('divider').setAttribute('aria-valuenow', String(Math.round(p)));
  }
  stage.addEventListener('pointerdown', (ev) => {
    if (stats.mode !== 'compare') return;
    try { stage.setPointerCapture(ev.pointerId); } catch (_) { /* a synthetic pointer */ }
    const move = (e) => {
      const rect = stage.getBoundingClientRect();
      setSplit((100 * (e.clientX - rect.left)) / rect.width);
    };
    move(ev);
    const up = () => {
      stage.removeEventListener('pointermove', move);
      stage.removeEventListener('pointerup', up);
      stage.removeEventListener('pointercancel', up);
    };
    stage.addEventListener('pointermove', move);
    stage.addEventListener('pointerup', up);
    stage.addEventListener('pointercancel', up);
  });
  $('divider').addEventListener('keydown', (ev) => {
    const now = Number($('divider').getAttribute('aria-valuenow'));
    if (ev.key === 'ArrowLeft') setSplit(now - 5);
    else if (ev.key === 'ArrowRight') setSplit(now + 5);
    else return;
    ev.preventDefault();
  });

  document.querySelectorAll('.modes button').forEach((b) => {
    b.addEventListener('click', () => setMode(b.dataset.mode));
  });
  // Browsers only autoplay muted video: sound is one click (or "m") away.
  const soundButton = $('sound');
  soundButton.addEventListener('click', () => {
    videoUp.muted = !videoUp.muted;
    if (!videoUp.muted) videoUp.play().catch(() => {});
    soundButton.setAttribute('aria-pressed', String(!videoUp.muted));
    soundButton.textContent = videoUp.muted ? 'Sound off' : 'Sound on';
  });
  $('fullscreen').addEventListener('click', () => {
    if (document.fullscreenElement) document.exitFullscreen(); else stage.requestFullscreen().catch(() => {});
  });
  document.addEventListener('keydown', (ev) => {
    if (ev.target instanceof HTMLSelectElement || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const modes = { 1: 'upscaled', 2: 'compare', 3: 'side' };
    if (modes[ev.key]) setMode(modes[ev.key]);
    else if (ev.key === 'f') $('fullscreen').click();
    else if (ev.key === 'm') soundButton.click();
  });
  $('stream-select').addEventListener('change', (ev) => {
    const url = new URL(`/view/${encodeURIComponent(ev.target.value)}`, location.origin);
    url.search = location.search;
    url.searchParams.delete('stream');
    location.href = url.toString();
  });
  addEventListener('pagehide', () => {
    if (upscaled) upscaled.stop();
    if (source) source.stop();
  });

  // ---------------------------------------------------------------------------------------------
  // Stats panel

  const fmt = (x, digits = 0) => (x === null || x === undefined || Number.isNaN(x) ? '–' : x.toFixed(digits));
  const size = (r) => (r ? `${r.width}×${r.height}` : '–');

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  function showMessage(kind, title, lines) {
    const box = $('message');
    if (!kind) { box.hidden = true; return; }
    box.hidden = false;
    box.dataset.kind = kind;
    const key = JSON.stringify([kind, title, lines]);
    if (box.dataset.key === key) return;
    box.dataset.key = key;
    box.replaceChildren();
    const h = document.createElement('h3');
    h.textContent = title;
    box.append(h);
    for (const line of lines) {
      const p = document.createElement('p');
      // a line is a list of [text, isCode] parts, so nothing from the server is parsed as HTML
      for (const [text, code] of line) {
        const node = document.createElement(code ? 'code' : 'span');
        node.textContent = text;
        p.append(node);
      }
      box.append(p);
    }
  }

  // The server wants a viewer token: ask for it once, in the message box (built once, so typing survives polls)
  function showTokenForm() {
    const box = $('message');
    box.hidden = false;
    if (box.dataset.key === 'token') return;
    box.dataset.key = 'token';
    box.dataset.kind = 'info';
    const form = document.createElement('form');
    form.id = 'token-form';
    const h = document.createElement('h3');
    h.textContent = 'This server needs a viewer token';
    const p = document.createElement('p');
    p.textContent = token ? 'The token given was not accepted. Ask the operator for http.viewer_token.'
      : 'Ask the operator for the viewer token (http.viewer_token in config.yaml).';
    const input = document.createElement('input');
    input.type = 'password';
    input.id = 'token-input';
    input.autocomplete = 'off';
    input.placeholder = 'viewer token';
    const button = document.createElement('button');
    button.type = 'submit';
    button.textContent = 'Watch';
    form.append(h, p, input, document.createTextNode(' '), button);
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      token = input.value.trim();
      storage('set', token);
      box.dataset.key = '';
      for (const player of [upscaled, source]) if (player) player.connect();
    });
    box.replaceChildren(form);
    input.focus();
  }

  function updateMessage(s) {
    if (!s && stats.unauthorized) {
      showTokenForm();
      return;
    }
    if (!s) {
      if (stats.apiError) {
        showMessage('error', 'Cannot reach the livevsr server', [[[stats.apiError, false]], [['Retrying every second.', false]]]);
      }
      return;
    }
    if (s.state === 'idle') {
      const ingest = (s.ingest && (s.ingest.rtmp_url || s.ingest.rtmp)) || `rtmp://${location.hostname}:1935/live`;
      showMessage('idle', 'Waiting for a publisher', [
        [['In OBS: Settings → Stream → Service ', false], ['Custom', true]],
        [['Server ', false], [ingest, true]],
        [['Stream Key: the key of stream ', false], [s.name, true], [' (streams[].key in config.yaml)', false]],
        [['The picture starts here by itself once frames arrive.', false]],
      ]);
    } else if (s.state === 'error') {
      const title = s.refused ? 'The publish was refused' : 'The stream stopped with an error';
      showMessage('error', title, [
        [[s.reason || 'no reason given', true]],
        [['The server keeps running: fix the cause and publish again.', false]],
      ]);
    } else if (s.state === 'starting') {
      showMessage('info', 'Starting…', [[[`Engine ${(s.engine && s.engine.name) || ''} is getting ready.`, false]]]);
    } else if (!videoUp.videoWidth) {
      const err = stats.upscaled.lastError;
      showMessage('info', 'Connecting to the live stream…', err ? [[[`last attempt: ${err}`, false]]] : []);
    } else {
      showMessage(null);
    }
  }

  function renderStream(s, dtS) {
    const state = s ? s.state : 'unknown';
    $('state-badge').dataset.state = state;
    setText('state-badge', state);
    setText('stream-name', streamName || '');
    if (!s) return;
    // a server that lists its renditions and has no "source" cannot show the original
    const noSource = Array.isArray(s.renditions) && !s.renditions.includes('source');
    document.querySelectorAll('.modes button:not([data-mode=upscaled])').forEach((b) => {
      b.disabled = noSource;
      if (noSource) b.title = 'The original is not encoded on this server (encoder.source_rendition: false)';
    });
    if (noSource && stats.mode !== 'upscaled') setMode('upscaled');
    setText('st-state', s.reason ? `${s.state} — ${s.reason}` : s.state);
    setText('st-engine', (s.engine && s.engine.name) || '–');
    setText('st-engine-reason', (s.engine && s.engine.reason) || '–');
    const load = s.engine && s.engine.load;
    setText('st-engine-load', load == null ? '–' : `${Math.round(load * 100)} %`);
    // live sizing: what the engine was given and why, and whether the output keeps the input's fps
    const sc = s.scaling;
    const via = sc && sc.downscaled ? ` → ${size(sc.engine_input)}` : '';
    setText('st-res', s.input ? `${size(s.input)}${via} → ${size(s.output)}` : '–');
    const sizing = sc ? [sc.downscaled ? `downscaled for the engine: ${sc.reason}` : sc.reason, sc.frame_rate] : [];
    setText('st-scaling', sizing.filter(Boolean).join('. ') || '–');
    $('st-scaling').classList.toggle('warn', Boolean(sc && sc.frame_rate));
    const f = s.frames || {};
    let fpsIn = s.input ? s.input.fps : null;
    let fpsOut = s.output ? s.output.fps : null;
    // counters restart with each publish: a drop in them is a new publisher, not a negative rate
    if (lastFrames && dtS > 0 && s.state === 'live' && f.received >= lastFrames.received) {
      fpsIn = (f.received - lastFrames.received) / dtS;
      fpsOut = (f.encoded - lastFrames.encoded) / dtS;
    }
    lastFrames = f;
    setText('st-fps', s.input ? `${fmt(fpsIn, 1)} / ${fmt(fpsOut, 1)}` : '–');
    setText('st-frames', `${f.received ?? 0} in · ${f.upscaled ?? 0} upscaled · ${f.encoded ?? 0} out`);
    const drops = Object.entries(f.dropped || {}).filter(([, n]) => n > 0);
    const total = drops.reduce((a, [, n]) => a + n, 0);
    setText('st-dropped', total ? `${total} (${drops.map(([c, n]) => `${c} ${n}`).join(', ')})` : '0');
    const all = s.frames_total;
    if (all) {  // this publish in the text, every publish since the server started on hover
      const allDropped = Object.values(all.dropped || {}).reduce((a, n) => a + n, 0);
      const title = `this publish; since the server started: ${all.received} in · ${all.encoded} out · ${allDropped} dropped`;
      $('st-frames').title = $('st-dropped').title = title;
    }
    setText('st-viewers', String(s.viewers ?? 0));

    const body = $('st-latency');
    const lat = s.latency_ms || {};
    const rows = STAGES.filter((k) => lat[k]).map((k) => {
      const tr = document.createElement('tr');
      if (k === 'total') tr.className = 'total';
      tr.title = `p99 ${fmt(lat[k].p99, 1)} ms`;
      for (const t of [k, fmt(lat[k].p50, 1), fmt(lat[k].p95, 1)]) {
        const td = document.createElement('td');
        td.textContent = t;
        tr.append(td);
      }
      return tr;
    });
    body.replaceChildren(...rows);
    if (lat.total) {
      spark.push([lat.total.p50, lat.total.p95]);
      if (spark.length > SPARK_POINTS) spark.shift();
    }
    drawSparkline();
  }

  function drawSparkline() {
    const canvas = $('sparkline');
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 260;
    const h = canvas.clientHeight || 48;
    if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    if (spark.length < 2) return;
    const max = Math.max(1, ...spark.map(([, p95]) => p95 || 0)) * 1.1;
    const line = (idx, color) => {
      ctx.beginPath();
      spark.forEach((pt, i) => {
        const x = w - ((spark.length - 1 - i) / (SPARK_POINTS - 1)) * w; // newest at the right edge
        const y = h - ((pt[idx] || 0) / max) * (h - 10) - 1;
        if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      });
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.5;
      ctx.stroke();
    };
    line(1, 'rgba(245,166,35,.6)');
    line(0, '#4aa3ff');
    ctx.fillStyle = '#8a93a0';
    ctx.font = '10px system-ui, sans-serif';
    const [p50, p95] = spark[spark.length - 1];
    ctx.fillText(`total p50 ${fmt(p50, 0)} · p95 ${fmt(p95, 0)} ms`, 2, 10);
  }

  function renderPlayer() {
    const u = stats.upscaled;
    const conn = source ? `${u.connection} (original: ${stats.source.connection})` : u.connection;
    setText('pl-conn', u.lastError && u.connection !== 'connected' ? `${conn} (${u.lastError})` : conn);
    setText('pl-size', u.videoWidth ? `${u.videoWidth}×${u.videoHeight}` : '–');
    setText('pl-fps', fmt(u.fps, 1));
    setText('pl-bitrate', u.bitrate_bps ? `${fmt(u.bitrate_bps / 1e6, 2)} Mb/s` : '–');
    setText('pl-jitter', u.jitterBuffer_ms === null ? '–' : `${fmt(u.jitterBuffer_ms, 0)} ms`);
    setText('pl-dropped', `${u.framesDropped} / ${u.freezeCount}`);
    setText('label-upscaled', videoUp.videoWidth ? `Upscaled ${videoUp.videoWidth}×${videoUp.videoHeight}` : 'Upscaled');
    setText('label-source', videoSrc.videoWidth ? `Original ${videoSrc.videoWidth}×${videoSrc.videoHeight}` : 'Original');
    if (stats.probe) {
      const p = stats.probe.upscaled;
      const s = stats.probe.source;
      const g2g = p && p.count ? `p50 ${fmt(p.p50_ms, 0)} · p95 ${fmt(p.p95_ms, 0)} ms` : (p && p.error) || 'no barcode yet';
      setText('pl-g2g', g2g);
      const probe = $('probe');
      probe.hidden = false;
      let text = `glass-to-glass upscaled ${fmt(p && p.last_ms, 0)} ms (p95 ${fmt(p && p.p95_ms, 0)})`;
      if (source && s && s.count) text += ` · original ${fmt(s.last_ms, 0)} ms (p95 ${fmt(s.p95_ms, 0)})`;
      setText('probe', text);
    }
  }

  function renderPicker(streams) {
    const picker = $('picker');
    picker.hidden = streams.length < 2;
    const select = $('stream-select');
    const key = streams.map((s) => `${s.name}:${s.state}`).join(',');
    if (select.dataset.key === key) return;
    select.dataset.key = key;
    select.replaceChildren(...streams.map((s) => {
      const o = document.createElement('option');
      o.value = s.name;
      o.textContent = `${s.name} (${s.state})`;
      o.selected = s.name === streamName;
      return o;
    }));
  }

  async function poll() {
    const t = performance.now();
    const dtS = lastPoll === null ? 0 : (t - lastPoll) / 1000;
    lastPoll = t;
    let s = null;
    try {
      const res = await fetch('/api/streams', { cache: 'no-store', headers: authHeaders() });
      stats.unauthorized = res.status === 401;
      if (!res.ok) throw new Error(`/api/streams answered ${res.status}`);
      const body = await res.json();
      stats.apiError = null;
      stats.version = body.version;
      setText('version', body.version ? `livevsr ${body.version}` : '');
      const streams = body.streams || [];
      if (!streamName && streams.length) streamName = streams[0].name;
      stats.stream = streamName;
      renderPicker(streams);
      s = streams.find((x) => x.name === streamName) || null;
      if (!s && streamName) {
        showMessage('error', `No stream named “${streamName}”`, [[
          ['Streams on this server: ', false], [streams.map((x) => x.name).join(', ') || 'none', true],
        ]]);
      }
    } catch (err) {
      stats.apiError = err && err.message ? err.message : String(err);
    }
    stats.api = s;
    if (s) {
      stats.state = s.state;
      stats.reason = s.reason || '';
      stats.engine = s.engine || null;
      ensurePlayers();
    }
    const live = !!s && s.state === 'live';
    await Promise.all([upscaled, source].filter(Boolean).map((p) => p.tick(dtS, live)));
    probes.forEach((p) => p.summarise());
    renderStream(s, dtS);
    renderPlayer();
    if (s || stats.apiError) updateMessage(s);
    setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - t)));
  }

  videoUp.addEventListener('resize', renderPlayer);
  videoSrc.addEventListener('resize', renderPlayer);
  setMode(params.get('mode') || 'upscaled');
  ensurePlayers();
  poll();
})();
