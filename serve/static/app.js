// The upload page: send a song to /api/separate, poll its job until it is done, then
// play, draw and offer the two sources. body[data-state] says where the page is
// (idle, working, done, error), for people's styles and for the browser test.
"use strict";

const $ = (id) => document.getElementById(id);
const STATES = {
  queued: "Queued",
  decoding: "Decoding the song…",
  waiting: "Waiting for the model…",
  separating: "Separating",
  done: "Done",
};

async function answer(response) {
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showProgress(job) {
  $("progress").value = job.progress;
  const percent = job.state === "separating" ? ` ${Math.round(job.progress * 100)} %` : "";
  $("status").textContent = (STATES[job.state] || job.state) + percent;
}

// A min/max envelope per horizontal step, scaled to the source's own peak so quiet stems stay visible.
function drawEnvelope(canvas, peaks) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  const count = peaks.min.length;
  const scale = 1 / Math.max(1e-3, ...peaks.max.map(Math.abs), ...peaks.min.map(Math.abs));
  context.clearRect(0, 0, width, height);
  context.fillStyle = getComputedStyle(canvas).color;
  context.fillRect(0, height / 2, width, 1);
  for (let i = 0; i < count; i++) {
    const top = (1 - peaks.max[i] * scale) * height / 2;
    const bottom = (1 - peaks.min[i] * scale) * height / 2;
    context.fillRect(i * width / count, top, Math.max(1, width / count), Math.max(1, bottom - top));
  }
}

function showResults(job) {
  const stem = job.filename.replace(/\.[^.]*$/, "");
  for (const article of document.querySelectorAll("#results article")) {
    const source = article.dataset.source;
    article.querySelector("audio").src = job.results[source];
    const link = article.querySelector("a.download");
    link.href = job.results[source];
    link.download = `${stem}-${source}.wav`;
    drawEnvelope(article.querySelector("canvas"), job.peaks[source]);
  }
  $("results").hidden = false;
}

async function separate(file) {
  const form = new FormData();
  form.append("file", file);
  $("status").textContent = "Uploading…";
  let job = await answer(await fetch("/api/separate", { method: "POST", body: form }));
  while (job.state !== "done" && job.state !== "error") {
    showProgress(job);
    await new Promise((resolve) => setTimeout(resolve, 400));
    job = await answer(await fetch(`/api/jobs/${job.id}`));
  }
  if (job.state === "error") throw new Error(job.error);
  showProgress(job);
  showResults(job);
}

$("upload").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  $("start").disabled = true;
  $("results").hidden = true;
  $("job").hidden = false;
  document.body.dataset.state = "working";
  try {
    await separate(file);
    document.body.dataset.state = "done";
  } catch (error) {
    $("status").textContent = `Error: ${error.message}`;
    document.body.dataset.state = "error";
  } finally {
    $("start").disabled = false;
  }
});

// The served model (live.js streams to it, at its rate).
const modelInfo = fetch("/api/model").then(answer);
modelInfo.then((model) => {
  const facts = model.facts;
  const details = [facts.arch, facts.sample_rate && `${facts.sample_rate} Hz`,
    facts.channels && (facts.channels === 1 ? "mono" : "stereo")].filter(Boolean).join(", ");
  $("model").textContent = `Model ${model.name}, version ${model.version}` + (details ? ` (${details})` : "");
}).catch((error) => { $("model").textContent = `No model to separate with yet: ${error.message}`; });
