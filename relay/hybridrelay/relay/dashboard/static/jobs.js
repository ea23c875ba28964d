// The Jobs page: bulk export and import of device identities (the management API's /jobs)
// with their progress, live. An export's output and an import's errors are JSON Lines
// files the operator downloads (an export holds every device's keys: viewers get none).
import { ApiError, age, api, el, enc, errorLine, hooks, isOperator, live, state, table } from "./lib.js";

// POST a file as the import body: request() in lib.js sends JSON, this sends the bytes.
async function startImport(file) {
  const response = await fetch("api/jobs/import", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/x-ndjson", "X-CSRF-Token": state.session.csrfToken },
    body: file,
  });
  const text = await response.text();
  const doc = text ? JSON.parse(text) : null;
  if (response.status === 401) hooks.unauthorized();
  if (!response.ok) throw new ApiError(response.status, doc);
  return doc;
}

function progress(job) {
  const done = job.status === "completed" ? 100 : job.progress;
  return el("span", { class: "progress" },
    el("progress", { max: 100, value: done, "aria-label": `${job.jobId} progress` }), ` ${done}%`);
}

function outcome(job) {
  if (job.status === "failed") return job.failureReason || "failed";
  if (job.type === "import") return `${job.succeeded} applied, ${job.failed} refused`;
  return `${job.deviceCount} devices written`;
}

function files(job) {
  if (!isOperator() || job.status !== "completed") return null;
  if (job.type === "export") return el("a", { href: `api/jobs/${enc(job.jobId)}/output`, download: `export-${job.jobId}.jsonl`, text: "Output" });
  if (job.failed) return el("a", { href: `api/jobs/${enc(job.jobId)}/errors`, download: `errors-${job.jobId}.jsonl`, text: "Errors" });
  return null;
}

async function jobs(main, view) {
  main.append(el("h1", { text: "Jobs" }), el("p", {
    class: "note",
    text: "Export writes every device identity (keys included) as JSON Lines; import applies a JSON Lines " +
      "file line by line (importMode: create, update, updateIfMatchETag, delete, deleteIfMatchETag). " +
      "This node keeps its newest 100 jobs in memory.",
  }));
  const message = el("p", { class: "error", role: "alert" });
  const list = el("div", { id: "job-list" });
  let redraw = async () => {};
  if (isOperator()) {
    const file = el("input", { id: "import-file", type: "file", accept: ".jsonl,.ndjson,application/x-ndjson" });
    main.append(el("div", { class: "inline" },
      el("button", {
        type: "button", id: "start-export", text: "Start export",
        onclick: () => { message.textContent = ""; api("POST", "jobs/export").then(() => redraw()).catch(errorLine(message)); },
      }),
      el("form", {
        class: "inline", id: "import-form",
        onsubmit: (event) => {
          event.preventDefault();
          message.textContent = "";
          if (!file.files.length) { message.textContent = "Choose a JSON Lines file first."; return; }
          startImport(file.files[0]).then(() => { file.value = ""; return redraw(); }).catch(errorLine(message));
        },
      }, el("label", {}, "Import ", file), el("button", { type: "submit", text: "Start import" }))));
  }
  main.append(message, list);
  const draw = async () => {
    const doc = await api("GET", "jobs");
    const rows = doc.value.map((job) => el("tr", { "data-job": job.jobId, "data-type": job.type, "data-status": job.status },
      el("td", {}, el("code", { class: "volatile", text: job.jobId })),
      el("td", { text: job.type }),
      el("td", { class: `status status-${job.status}`, text: job.status }),
      el("td", {}, progress(job)),
      el("td", { class: "outcome", text: outcome(job) }),
      el("td", { class: "volatile", text: age(job.startTime), title: job.startTime }),
      el("td", {}, files(job))));
    return table(["Job", "Type", "Status", "Progress", "Outcome", "Started", ""], rows, "No job yet");
  };
  redraw = async () => {
    try { list.replaceChildren(await draw()); } catch (error) { errorLine(message)(error); }
  };
  await live(view, list, draw);
}

export { jobs };
