// Draws a playbook's steps and arcs as an SVG graph, nodes coloured by step status.
// Layout: each step in the column of its longest distance from the entry step.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const NODE_W = 150, NODE_H = 36, GAP_X = 70, GAP_Y = 24, PAD = 16;
const STATUS_COLOURS = {
  done: "#2e9e5b", failed: "#d14343", running: "#2f6fd6", queued: "#8fb3ee",
  retrying: "#e59a2c", pending: "#c3c8d1", cancelled: "#8a6bbf",
};

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function layers(graph) {
  const depth = {};
  const entry = (graph.nodes.find((n) => n.is_entry) || graph.nodes[0] || {}).name;
  for (const node of graph.nodes) depth[node.name] = 0;
  // Longest path by relaxation, bounded by the node count (arcs may form cycles).
  for (let round = 0; round < graph.nodes.length; round++) {
    let changed = false;
    for (const edge of graph.edges) {
      if (edge.target === entry || depth[edge.source] === undefined) continue;
      if (depth[edge.target] < depth[edge.source] + 1 && depth[edge.source] + 1 < graph.nodes.length) {
        depth[edge.target] = depth[edge.source] + 1;
        changed = true;
      }
    }
    if (!changed) break;
  }
  return depth;
}

function drawGraph(container, graph) {
  const depth = layers(graph);
  const rows = {};
  const position = {};
  for (const node of graph.nodes) {
    const column = depth[node.name];
    rows[column] = (rows[column] || 0) + 1;
    position[node.name] = { x: PAD + column * (NODE_W + GAP_X),
                            y: PAD + (rows[column] - 1) * (NODE_H + GAP_Y) };
  }
  const columns = Math.max(1, ...Object.keys(rows).map(Number).map((c) => c + 1));
  const height = Math.max(1, ...Object.values(rows));
  const root = svg("svg", { width: PAD * 2 + columns * (NODE_W + GAP_X) - GAP_X,
                            height: PAD * 2 + height * (NODE_H + GAP_Y) - GAP_Y });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
                                 markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a93a3" }));
  defs.append(marker);
  root.append(defs);
  for (const edge of graph.edges) {
    const a = position[edge.source], b = position[edge.target];
    if (!a || !b) continue;
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    const back = x2 <= x1;
    const d = back
      ? `M${x1},${y1} C${x1 + 60},${y1 - 60} ${x2 - 60},${y2 - 60} ${x2},${y2}`
      : `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`;
    const path = svg("path", { d, class: "edge", "marker-end": "url(#arrow)" });
    if (edge.when) path.append(Object.assign(svg("title"), { textContent: edge.when }));
    root.append(path);
    if (edge.when) {
      const label = svg("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4, class: "edge-label",
                                  "text-anchor": "middle" });
      label.textContent = edge.when.length > 24 ? edge.when.slice(0, 22) + "…" : edge.when;
      root.append(label);
    }
  }
  for (const node of graph.nodes) {
    const p = position[node.name];
    const group = svg("g", { class: "node", "data-step": node.name, "data-status": node.status });
    group.append(svg("rect", { x: p.x, y: p.y, width: NODE_W, height: NODE_H, rx: 6,
                               fill: STATUS_COLOURS[node.status] || STATUS_COLOURS.pending,
                               stroke: node.is_entry ? "#1d2330" : "none" }));
    const text = svg("text", { x: p.x + NODE_W / 2, y: p.y + NODE_H / 2 + 4,
                               "text-anchor": "middle" });
    text.textContent = (node.has_loop ? "⟳ " : "") + node.name + " · " + node.kind;
    group.append(text);
    group.append(Object.assign(svg("title"), { textContent: `${node.name}: ${node.status}` }));
    root.append(group);
  }
  container.replaceChildren(root);
}
