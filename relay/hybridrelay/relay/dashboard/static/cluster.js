// The Cluster page: the relay's nodes (this one first), their load, which node holds which
// hybrid connection's listeners, and draining a node (and taking that back). Reads GET /nodes
// and posts POST /nodes/{id}/drain and /undrain. Without [cluster] the one node is "local".
import { api, age, el, enc, errorLine, isOperator, live, table } from "./lib.js";

async function cluster(main, view) {
  main.append(el("h1", { text: "Cluster" }), el("p", {
    class: "note",
    text: "Relay nodes sharing this relay's Redis, from their heartbeats. Draining a node makes it " +
      "refuse new listeners and senders and sends its listeners to the other nodes (1001); its open " +
      "streams run to their end. Stop it once they are gone, or Undrain it to have it serve again.",
  }));
  const message = el("p", { class: "error", role: "alert" });
  const nodes = el("div", { id: "node-list" });
  const holders = el("div", { id: "node-listeners" });
  main.append(message, nodes, el("h2", { text: "Which node holds which listener" }), holders);
  // Nodes whose Drain was clicked once: the button asks for a second click (no dialog),
  // and the every-2-s redraw keeps asking.
  const confirming = new Set();
  let redraw = async () => {};

  // Undrain needs no confirming: it only lets new work in again.
  const undrainButton = (node) => el("button", {
    type: "button", text: "Undrain",
    onclick: (event) => {
      event.target.disabled = true;
      api("POST", `nodes/${enc(node.id)}/undrain`).then(() => redraw()).catch(errorLine(message));
    },
  });

  const drainButton = (node) => {
    if (!isOperator()) return null;
    if (node.draining) return undrainButton(node);
    const asking = confirming.has(node.id);
    return el("button", {
      type: "button", class: "danger", text: asking ? "Confirm drain" : "Drain",
      onclick: (event) => {
        if (!asking) {
          confirming.add(node.id);
          event.target.textContent = "Confirm drain";
          redraw();
          return;
        }
        event.target.disabled = true;
        confirming.delete(node.id);
        api("POST", `nodes/${enc(node.id)}/drain`).then(() => redraw()).catch(errorLine(message));
      },
    });
  };

  const draw = async () => {
    const doc = await api("GET", "nodes");
    const rows = doc.value.map((node) => el("tr", { "data-node": node.id },
      el("td", {}, el("code", { text: node.id }), node.id === doc.self ? " (this node)" : ""),
      el("td", { class: "volatile", text: node.address }),
      el("td", { class: "listeners", text: node.listeners }),
      el("td", { class: "streams", text: node.streams }),
      el("td", { class: "pending", text: node.pendingRendezvous }),
      el("td", { class: `status status-${node.draining ? "draining" : "serving"}`, text: node.draining ? "draining" : "serving" }),
      el("td", { class: "volatile", text: age(node.startedAt), title: node.startedAt }),
      el("td", {}, drainButton(node))));
    const held = doc.value.flatMap((node) => node.hybridConnections.map((hc) => el("tr", { "data-holder": `${node.id}/${hc.name}` },
      el("td", {}, el("a", { href: "#/hc/" + enc(hc.name), text: hc.name })),
      el("td", {}, el("code", { text: node.id })),
      el("td", { class: "listeners", text: hc.listeners }))));
    holders.replaceChildren(table(["Hybrid connection", "Node", "Listeners"], held, "No listener connected"));
    return table(["Node", "Address", "Listeners", "Streams", "Waiting senders", "Status", "Up", ""], rows, "No node");
  };
  redraw = async () => {
    try { nodes.replaceChildren(await draw()); } catch (error) { errorLine(message)(error); }
  };
  await live(view, nodes, draw);
}

export { cluster };
