// The playground: sends POST /v1/generate with "stream": true and shows the text as the
// server-sent events arrive, each generated character coloured by its log-probability.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), modelInfo: $("model-info"), prime: $("prime"),
  temperature: $("temperature"), topP: $("top-p"), length: $("length"), seed: $("seed"),
  generate: $("generate"), stop: $("stop"), status: $("status"), output: $("output"),
  hover: $("hover"), keyRow: $("key-row"), apiKey: $("api-key"), saveKey: $("save-key"),
};
let models = [];
const hoverHint = ui.hover.textContent;  // said again for each new text
let running = null; // the AbortController of the request being streamed

function headers() {
  const h = { "Content-Type": "application/json", "Accept": "text/event-stream" };
  const key = localStorage.getItem("charrnn-api-key");
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function needKey() {
  ui.keyRow.hidden = false;
  setStatus(localStorage.getItem("charrnn-api-key")
    ? "the API key given is not this server's: enter the right one"
    : "this server needs an API key");
}

function setStatus(text) { ui.status.textContent = text; }

// ---- models -----------------------------------------------------------------------------
async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) return needKey();
  if (!response.ok) return setStatus("cannot list the models: HTTP " + response.status);
  const body = await response.json();
  models = body.models;
  ui.model.replaceChildren(...models.map((m) => new Option(m.name, m.name, m.default, m.default)));
  const most = Math.min(body.limits.max_length, 2000);
  ui.length.max = String(most);
  if (Number(ui.length.value) > most) ui.length.value = String(most);
  showValue(ui.length);
  describeModel();
}

function describeModel() {
  const m = models.find((x) => x.name === ui.model.value);
  if (!m) return;
  const loss = m.best_val_loss == null ? "" : `, best val loss ${m.best_val_loss.toFixed(3)} nats/char`;
  ui.modelInfo.textContent = `${m.cell} ${m.num_layers}×${m.hidden_size}, ` +
    `${m.vocab_size} characters${loss}`;
}

// ---- sliders ------------------------------------------------------------------------------
function showValue(input) { $(input.id + "-value").textContent = input.value; }
const sliders = [ui.temperature, ui.topP, ui.length];
for (const input of sliders) {
  input.addEventListener("input", () => showValue(input));
}
// Back to the page: the browser restores the sliders but not their labels.
window.addEventListener("pageshow", () => sliders.forEach(showValue));

// ---- generating ---------------------------------------------------------------------------
// The request's JSON. A seed of digits is written as typed: as a JavaScript number, one
// above 2^53 would be rounded and give another text than the seed asked for.
function request() {
  const body = {
    prime: ui.prime.value, model: ui.model.value || null, stream: true, logprobs: true,
    temperature: Number(ui.temperature.value), length: Number(ui.length.value),
  };
  const topP = Number(ui.topP.value);
  if (topP < 1) body.top_p = topP;
  const seed = ui.seed.value.trim();
  if (/^[0-9]+$/.test(seed)) return JSON.stringify(body).slice(0, -1) + `,"seed":${seed}}`;
  if (seed !== "") body.seed = Number(seed);  // the server says what is wrong with it
  return JSON.stringify(body);
}

async function generate() {
  if (running) running.abort();
  const controller = new AbortController();
  running = controller;
  ui.generate.disabled = true;
  ui.stop.disabled = false;
  ui.output.classList.remove("error");
  const prime = document.createElement("span");
  prime.className = "prime";
  prime.textContent = ui.prime.value;
  ui.output.replaceChildren(prime);
  explained = null;
  ui.hover.textContent = hoverHint;  // not a character of the text now replaced
  const started = performance.now();
  let chars = 0;
  let answered = false;
  setStatus("waiting for the first characters…");
  try {
    const response = await fetch("/v1/generate", {
      method: "POST", headers: headers(), body: request(),
      signal: controller.signal,
    });
    answered = true;
    if (!response.ok) return showError(response);
    for await (const [event, data] of serverEvents(response, controller.signal)) {
      if (event === "delta") {
        chars += appendText(data.samples);
        const seconds = (performance.now() - started) / 1000;
        setStatus(`${chars} characters, ${Math.round(chars / seconds)} chars/s`);
      } else if (event === "done") {
        const reason = data.samples.map((s) => s.finish_reason).join(", ");
        setStatus(`done: ${data.usage.generated_chars} characters (${reason})`);
      } else if (event === "error") {
        setStatus("error: " + data.error.message);
      }
    }
    if (controller.signal.aborted) setStatus(`stopped after ${chars} characters`);
  } catch (error) {
    if (controller.signal.aborted) setStatus(`stopped after ${chars} characters`);
    else if (error instanceof TypeError) {  // fetch's own failures: the network, the server
      setStatus(answered ? `lost the connection to the server after ${chars} characters`
        : "cannot reach the server: is it still running?");
    } else setStatus("error: " + error.message);
  } finally {
    if (running === controller) {
      running = null;
      const hadFocus = document.activeElement === ui.stop;
      ui.generate.disabled = false;
      ui.stop.disabled = true;
      if (hadFocus) ui.generate.focus();  // a disabled Stop would drop it to the page
    }
  }
}

async function showError(response) {
  let message = "HTTP " + response.status;
  try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
  if (response.status === 401) return needKey();
  ui.output.classList.add("error");
  ui.output.textContent = message;
  setStatus("refused: HTTP " + response.status);
}

// Yields [event, data] for each server-sent event of a streamed response.
async function* serverEvents(response, signal) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}));
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) yield [event, JSON.parse(data)];
    }
  }
}

// Each character of the first sample as a span coloured by its log-probability.
function appendText(samples) {
  const sample = samples.find((s) => s.index === 0);
  if (!sample) return 0;
  const fragment = document.createDocumentFragment();
  const chars = Array.from(sample.text);
  chars.forEach((ch, i) => {
    const span = document.createElement("span");
    span.className = "c";
    span.textContent = ch;
    const lp = sample.logprobs ? sample.logprobs[i] : undefined;
    if (lp !== undefined) {
      span.dataset.lp = lp;
      span.style.background = colour(lp);
    }
    fragment.append(span);
  });
  ui.output.append(fragment);
  return chars.length;
}

// Likely characters faint green, unlikely ones red: full red at 5 nats (p < 0.7%) or less.
function colour(logprob) {
  const t = Math.min(1, -logprob / 5);
  return `hsla(${Math.round(130 * (1 - t))}, 80%, 50%, ${(0.12 + 0.5 * t).toFixed(2)})`;
}

// A generated character's probability, shown below the text: under the mouse, where tapped
// (a touch screen has no hover), or moved to with the arrow keys while the text has focus.
let explained = null;  // the character span whose probability is shown

function explain(span) {
  if (!span || span.dataset.lp === undefined) return;
  if (explained) explained.classList.remove("current");
  explained = span;
  span.classList.add("current");
  const lp = Number(span.dataset.lp);
  const shown = JSON.stringify(span.textContent);
  ui.hover.textContent = `${shown}: probability ${(100 * Math.exp(lp)).toFixed(2)}% ` +
    `as drawn (log-probability ${lp.toFixed(3)} nats)`;
}

const spanAt = (event) => event.target.closest && event.target.closest(".c");
ui.output.addEventListener("mouseover", (event) => explain(spanAt(event)));
ui.output.addEventListener("click", (event) => explain(spanAt(event)));
ui.output.addEventListener("keydown", (event) => {
  const spans = Array.from(ui.output.querySelectorAll(".c[data-lp]"));
  if (spans.length === 0) return;
  const at = explained && explained.isConnected ? spans.indexOf(explained) : -1;
  const moves = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: spans.length - 1 };
  if (!(event.key in moves)) return;
  event.preventDefault();
  const to = at < 0 && event.key === "ArrowLeft" ? spans.length - 1 : moves[event.key];
  explain(spans[Math.max(0, Math.min(spans.length - 1, to))]);
  explained.scrollIntoView({ block: "nearest" });
});

ui.generate.addEventListener("click", generate);
ui.stop.addEventListener("click", () => { if (running) running.abort(); });
ui.model.addEventListener("change", describeModel);
ui.prime.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) generate();
});
function useKey() {
  localStorage.setItem("charrnn-api-key", ui.apiKey.value);
  ui.keyRow.hidden = true;
  setStatus("");
  loadModels();
}
ui.saveKey.addEventListener("click", useKey);
ui.apiKey.addEventListener("keydown", (event) => { if (event.key === "Enter") useKey(); });

loadModels();
