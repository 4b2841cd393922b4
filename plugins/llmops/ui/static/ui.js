// llmops ui: the charts (vega-lite specs compiled and drawn here, offline) and the playground.
"use strict";

function drawCharts(root) {
  for (const figure of (root || document).querySelectorAll("figure[data-vega]")) {
    if (figure.dataset.drawn) continue;
    const spec = JSON.parse(figure.querySelector("script[type='application/json']").textContent);
    const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), {
      renderer: "svg", container: figure.querySelector(".vega"), hover: true,
    });
    view.runAsync().then(() => { figure.dataset.drawn = "true"; });
  }
}

async function askOne(side, service, question) {
  const panel = document.getElementById("answer-" + side);
  const text = panel.querySelector(".text"), status = panel.querySelector(".status");
  const sources = panel.querySelector(".sources"), rate = panel.querySelector(".rate");
  panel.hidden = false; panel.dataset.state = "asking"; panel.dataset.requestId = "";
  text.textContent = ""; sources.textContent = ""; rate.hidden = true;
  panel.querySelector(".rated").textContent = "";
  panel.querySelector(".release").textContent = service;
  status.textContent = "asking " + service + "…";
  const reply = await fetch("/playground/ask", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({service: service, question: question}),
  });
  if (!reply.ok) {
    status.textContent = "error " + reply.status + ": " + (await reply.text());
    panel.dataset.state = "error"; return;
  }
  const reader = reply.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, cut); buffer = buffer.slice(cut + 1);
      if (line.trim()) show(panel, service, JSON.parse(line));
    }
  }
}

function show(panel, service, event) {
  const status = panel.querySelector(".status");
  if (event.type === "meta") {
    panel.querySelector(".release").textContent = event.service + " · " + (event.release || "?");
    status.textContent = "answering…";
  } else if (event.type === "sources") {
    const list = panel.querySelector(".sources");
    for (const s of event.sources) {
      const item = document.createElement("li");
      item.className = "source";
      item.innerHTML = "<b></b> <span class='score'></span><div class='excerpt'></div>";
      item.querySelector("b").textContent = s.path + " #" + s.chunk;
      item.querySelector(".score").textContent = "score " + Number(s.score).toFixed(3);
      item.querySelector(".excerpt").textContent = s.text;
      list.appendChild(item);
    }
  } else if (event.type === "token") {
    panel.querySelector(".text").textContent += event.text;
  } else if (event.type === "done") {
    status.textContent = "request " + event.request_id;
    panel.dataset.requestId = event.request_id || "";
    panel.dataset.service = service;
    panel.dataset.state = "done";
    panel.querySelector(".rate").hidden = !event.request_id;
  } else if (event.type === "error") {
    status.textContent = "error " + event.status + ": " + event.error;
    panel.dataset.state = "error";
  }
}

async function rate(panel, rating) {
  const reply = await fetch("/playground/feedback", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({service: panel.dataset.service, request_id: panel.dataset.requestId, rating: rating}),
  });
  const body = await reply.json().catch(() => ({}));
  panel.querySelector(".rated").textContent = reply.ok ? "thanks: rated " + (rating > 0 ? "good" : "bad")
    : "not rated (" + reply.status + "): " + (body.error || JSON.stringify(body));
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts(document);
  const form = document.getElementById("ask");
  if (!form) return;
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const question = document.getElementById("question").value;
    const left = document.getElementById("left").value, right = document.getElementById("right").value;
    askOne("left", left, question);
    if (right) askOne("right", right, question); else document.getElementById("answer-right").hidden = true;
  });
  for (const panel of document.querySelectorAll(".answer")) {
    panel.querySelector(".up").addEventListener("click", () => rate(panel, 1));
    panel.querySelector(".down").addEventListener("click", () => rate(panel, -1));
  }
});
