// Live mode: the microphone, or a song file played in real time, goes through an AudioWorklet
// (live-worklet.js) that cuts it into 20 ms blocks; each block is sent as f32le to the server's
// WebSocket (/v1/models/NAME/versions/V:stream), and each separated block that comes back is
// mixed by the balance slider and played by the same worklet. #live[data-state] says where it
// is (idle, connecting, live, stopping, stopped, error). With ?record=1 in the address the page
// keeps what it sent and received in window.liveRecording, for the browser test.
// Uses $ and modelInfo from app.js.
"use strict";

const BLOCK_SECONDS = 0.02;
// The most playback the worklet queues: room for a round trip's jitter, and a bound on what a stall adds.
const MAX_QUEUED_SECONDS = 0.1;
const MEASURED_BLOCKS = 50;  // the measured latency is the median over this many recent blocks
const RECORD = new URLSearchParams(location.search).has("record");
let session = null;

function showLive(state, text) {
  $("live").dataset.state = state;
  $("live-status").textContent = text;
  $("live-start").disabled = ["connecting", "live", "stopping"].includes(state);
  $("live-stop").disabled = !["connecting", "live"].includes(state);
}

// Accompaniment alone at 0 (karaoke), vocals alone at 1, both whole at 0.5: the mix, delayed.
function gains() {
  const balance = Number($("balance").value);
  return { vocals: Math.min(1, 2 * balance), accompaniment: Math.min(1, 2 - 2 * balance) };
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

// At the model's rate if the browser can, so that the server resamples nothing; a browser that
// refuses that rate, or a microphone at another rate in it (Firefox), gets its own rate.
function openContext(rate, stream) {
  const attempt = (options) => {
    const context = new AudioContext({ latencyHint: "interactive", ...options });
    try {
      return { context, microphone: stream && context.createMediaStreamSource(stream) };
    } catch (error) {
      context.close();
      throw error;
    }
  };
  try {
    return attempt({ sampleRate: rate });
  } catch {
    return attempt({});
  }
}

async function songSource(context) {
  const file = $("live-file").files[0];
  if (!file) throw new Error("choose a song file first");
  const source = context.createBufferSource();
  source.buffer = await context.decodeAudioData(await file.arrayBuffer());
  source.onended = () => { if (session && session.source === source) stopLive(); };  // the song is over
  return source;
}

async function startLive() {
  showLive("connecting", "Connecting…");
  try {
    const model = await modelInfo;
    // Unprocessed: echo cancellation, noise suppression and gain control are made for speech.
    const stream = $("live-source").value === "microphone" ? await navigator.mediaDevices.getUserMedia(
      { audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } }) : null;
    const { context, microphone } = openContext(model.facts.sample_rate, stream);
    const live = session = { context, stream, announced: null, sentAt: [], measured: [], queued: 0, stopping: false };
    live.source = microphone || await songSource(context);
    await context.audioWorklet.addModule("/static/live-worklet.js");
    const channels = model.facts.channels || 2;
    const blockSize = Math.round(context.sampleRate * BLOCK_SECONDS);
    live.worklet = new AudioWorkletNode(context, "live-separation", {
      outputChannelCount: [channels], channelCount: channels, channelCountMode: "explicit",
      processorOptions: { blockSize, channels, maxQueued: Math.round(context.sampleRate * MAX_QUEUED_SECONDS) },
    });
    live.worklet.port.onmessage = (event) => sendBlock(live, event.data);
    live.worklet.connect(context.destination);
    if (RECORD) window.liveRecording = { sent: [], vocals: [], accompaniment: [], announced: null, measuredMs: [] };
    openSocket(live, model, { sample_rate: context.sampleRate, channels, block_size: blockSize, format: "f32le" });
  } catch (error) {
    endLive("error", `Error: ${error.message}`);
  }
}

// Every handler is tied to its session: a closed session's late messages are dropped.
function openSocket(live, model, start) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = live.socket = new WebSocket(
    `${scheme}://${location.host}/v1/models/${encodeURIComponent(model.name)}/versions/${model.version}:stream`);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => socket.send(JSON.stringify(start));
  socket.onmessage = (event) => {
    if (live !== session) return;
    if (typeof event.data === "string") goLive(live, JSON.parse(event.data));
    else playAnswer(live, event.data);
  };
  socket.onclose = (event) => {
    if (live !== session) return;
    if (live.stopping && event.code === 1000) endLive("stopped", "Stopped");
    else endLive("error", `Error: ${event.reason || "the connection closed"} (close ${event.code})`);
  };
}

// The server's announcement (its delay and latency): from now on the input flows.
function goLive(live, announced) {
  live.announced = announced;
  if (RECORD) window.liveRecording.announced = announced;
  live.source.connect(live.worklet);
  if (live.source.start) live.source.start();
  showLive("live", `Live at ${announced.sample_rate} Hz, in blocks of ${announced.block_size} frames`);
  showLatency(live);
}

function sendBlock(live, { block, queued }) {
  if (live !== session || live.stopping || live.socket.readyState !== WebSocket.OPEN) return;
  live.socket.send(block);
  live.sentAt.push(performance.now());
  live.queued = queued;
  if (RECORD) window.liveRecording.sent.push(block);
}

// One answer: the vocals block then the accompaniment block (after the end: the tail, the same way).
function playAnswer(live, data) {
  const samples = new Float32Array(data);
  const vocals = samples.subarray(0, samples.length / 2), accompaniment = samples.subarray(samples.length / 2);
  const { vocals: vocalsGain, accompaniment: accompanimentGain } = gains();
  const mixed = new Float32Array(vocals.length);
  for (let i = 0; i < mixed.length; i++) mixed[i] = vocalsGain * vocals[i] + accompanimentGain * accompaniment[i];
  live.worklet.port.postMessage(mixed, [mixed.buffer]);
  if (RECORD) {
    window.liveRecording.vocals.push(vocals);
    window.liveRecording.accompaniment.push(accompaniment);
  }
  if (live.sentAt.length) measure(live, performance.now() - live.sentAt.shift());
}

// End to end for a sample: the announced latency (the server's delay and one block of capture),
// its block's round trip, the playback queued ahead of its answer, and the audio output's own latency.
function measure(live, roundTripMs) {
  const { context, announced, measured } = live;
  const queueMs = 1000 * live.queued / context.sampleRate;
  const outputMs = 1000 * (context.baseLatency + (context.outputLatency || 0));
  measured.push({ totalMs: announced.latency_ms + roundTripMs + queueMs + outputMs, roundTripMs });
  measured.splice(0, measured.length - MEASURED_BLOCKS);
  if (RECORD) window.liveRecording.measuredMs.push(measured.at(-1).totalMs);
  if (measured.length % 10 === 0) showLatency(live);
}

function showLatency({ announced, measured }) {
  let text = `Latency: ${announced.latency_ms} ms announced by the server (its delay and one block)`;
  if (measured.length) {
    text += `; ${Math.round(median(measured.map((m) => m.totalMs)))} ms measured end to end, with a round trip ` +
      `of ${Math.round(median(measured.map((m) => m.roundTripMs)))} ms (medians of the last ${measured.length} blocks)`;
  }
  $("live-latency").textContent = text;
}

// Stop: the input ends, the server is asked for its tail, and it closes the stream (1000).
function stopLive() {
  const live = session;
  if (!live || live.stopping) return;
  live.stopping = true;
  live.source.disconnect();
  if (live.announced && live.socket.readyState === WebSocket.OPEN) {
    showLive("stopping", "Stopping…");
    live.socket.send(JSON.stringify({ end: true }));
  } else {
    endLive("stopped", "Stopped");
  }
}

function endLive(state, text) {
  if (session) {
    const { context, stream, socket } = session;
    session = null;
    if (stream) stream.getTracks().forEach((track) => track.stop());
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close();
    context.close();
  }
  showLive(state, text);
}

$("live-source").addEventListener("change", () => { $("live-song").hidden = $("live-source").value !== "song"; });
$("live-form").addEventListener("submit", (event) => {
  event.preventDefault();
  startLive();
});
$("live-stop").addEventListener("click", stopLive);
