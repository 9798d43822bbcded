// twostream scene-graph viewer: inlined into every page by twostream/viz/html.py. Reads the page's JSON
// (#twostream-data), draws each view's graph as SVG and highlights a node's region on a canvas. Text from the data
// is only ever written with textContent.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("twostream-data").textContent);
  var SVGNS = "http" + "://www.w3.org/2000/svg";  // an XML namespace name, not a resource the page loads
  var GRAPH_W = 520, GRAPH_H = 420;
  var viewsApi = [];

  function svgEl(tag, attrs, parent) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function htmlEl(tag, cls, text, parent) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = text; }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function decodeRle(rle, n) {
    var out = new Int32Array(n), p = 0;
    for (var k = 0; k < rle.length; k += 2) { out.fill(rle[k], p, p + rle[k + 1]); p += rle[k + 1]; }
    return out;
  }
  function pct(x) { return (100 * x).toFixed(x < 0.01 ? 2 : 1) + " %"; }
  function signed(x) { return (x >= 0 ? "+" : "") + x.toFixed(3); }
  function maxAbs(values) {
    var m = 1e-12;
    (values || []).forEach(function (x) { m = Math.max(m, Math.abs(x)); });
    return m;
  }
  // importance colour: red for evidence for the explained scene, blue against, towards grey as it shrinks
  function impColour(x, m) {
    var t = Math.pow(Math.min(Math.abs(x) / m, 1), 0.7), a = [200, 200, 200];
    var b = x >= 0 ? [214, 39, 40] : [31, 119, 180];
    return "rgb(" + a.map(function (c, k) { return Math.round(c + t * (b[k] - c)); }).join(",") + ")";
  }

  function setupView(section, v, vi) {
    // positions are fractions of the image; pixels are reported at the image's size, boundaries at the graph's
    var H = v.image_size[0], W = v.image_size[1], GH = v.graph_size[0], GW = v.graph_size[1];
    var box = section.querySelector(".imgbox");
    var canvas = section.querySelector("canvas.region");
    var marks = section.querySelector("svg.marks");
    var graph = section.querySelector(".graphbox svg");
    var info = section.querySelector(".info");
    var seg = section.querySelector("img.seg");
    var map = null, mw = 0, mh = 0;
    if (v.node_map) {
      mw = v.node_map.width; mh = v.node_map.height;
      map = decodeRle(v.node_map.rle, mw * mh);
      canvas.width = mw; canvas.height = mh;
    } else {
      canvas.width = 1000; canvas.height = Math.max(1, Math.round(1000 * H / W));
    }
    var n = v.nodes.length;
    var ex = v.explanation;
    var nodeScores = ex && ex.node_scores, edgeScores = ex && ex.edge_scores;
    var maxNode = maxAbs(nodeScores), maxEdge = maxAbs(edgeScores);
    var sizeBy = nodeScores ? "importance" : "area";
    var maxB = 1;
    v.edges.forEach(function (e) { maxB = Math.max(maxB, e[2]); });

    // drawing on the image: coordinates in image pixels (viewBox), edges width ~ sqrt(boundary)
    var iw = Math.max(W, 1), ih = Math.max(H, 1), unit = Math.max(iw, ih) / 100;
    marks.setAttribute("viewBox", "0 0 " + iw + " " + ih);
    marks.setAttribute("preserveAspectRatio", "none");
    // graph on its own: spring layout or centroids, node radius ~ sqrt(area)
    graph.setAttribute("viewBox", "0 0 " + GRAPH_W + " " + GRAPH_H);
    var layers = {};
    [marks, graph].forEach(function (svg) {
      layers[svg === marks ? "m" : "g"] = {edges: svgEl("g", {"class": "edges"}, svg),
                                           nodes: svgEl("g", {"class": "nodes"}, svg),
                                           labels: svgEl("g", {"class": "labels"}, svg)};
    });
    if (n === 0) {
      var t = svgEl("text", {x: GRAPH_W / 2, y: GRAPH_H / 2, "class": "empty"}, graph);
      t.textContent = "no objects (empty scene graph)";
    }
    var edgeEls = [], nodeEls = [], labelEls = [], textEls = [];
    function graphXY(node, mode) {
      var p = mode === "centroid" ? node.centroid : node.layout;
      var pad = 40;
      return [pad + p[0] * (GRAPH_W - 2 * pad), pad + p[1] * (GRAPH_H - 2 * pad)];
    }
    function radius(node) {
      if (sizeBy === "importance") { return 6 + 34 * Math.sqrt(Math.abs(nodeScores[node.id]) / maxNode); }
      return 7 + 46 * Math.sqrt(node.area);
    }
    function nodeNumbers(i) {
      var parts = [];
      if (nodeScores) { parts.push("score " + signed(nodeScores[i])); }
      if (ex && ex.node_occlusion) { parts.push("occlusion Δp " + signed(ex.node_occlusion[i])); }
      if (ex && ex.node_confidence) { parts.push("confidence " + ex.node_confidence[i].toFixed(2)); }
      return parts.join(", ");
    }
    v.edges.forEach(function (e, k) {
      var w = Math.sqrt(e[2] / maxB);
      var a = v.nodes[e[0]], b = v.nodes[e[1]];
      var lm = svgEl("line", {"class": "edge", "data-edge": k, x1: a.centroid[0] * iw, y1: a.centroid[1] * ih,
                              x2: b.centroid[0] * iw, y2: b.centroid[1] * ih, "stroke-width": (0.2 + 0.9 * w) * unit},
                     layers.m.edges);
      var lg = svgEl("line", {"class": "edge", "data-edge": k, "stroke-width": 1 + 7 * w}, layers.g.edges);
      if (edgeScores) {  // width ~ |importance|, colour = its sign; hovering shows the numbers
        lg.setAttribute("stroke-width", 1.5 + 8 * Math.abs(edgeScores[k]) / maxEdge);
        lg.style.stroke = impColour(edgeScores[k], maxEdge);
        var et = svgEl("title", {}, lg);
        et.textContent = a.short + " – " + b.short + ": score " + signed(edgeScores[k]) +
          (ex.edge_occlusion ? ", occlusion Δp " + signed(ex.edge_occlusion[k]) : "");
        lg.dataset.score = String(edgeScores[k]);
      }
      edgeEls.push([lm, lg]);
    });
    v.nodes.forEach(function (node, i) {
      var cm = svgEl("circle", {"class": "node", "data-node": i, cx: node.centroid[0] * iw,
                                cy: node.centroid[1] * ih, r: 1.1 * unit, fill: node.color}, layers.m.nodes);
      var cg = svgEl("circle", {"class": "node", "data-node": i, r: radius(node), fill: node.color}, layers.g.nodes);
      var title = svgEl("title", {}, cg);
      title.textContent = node.name + (ex ? " — " + nodeNumbers(i) : "");
      if (nodeScores) {
        cg.style.stroke = impColour(nodeScores[i], maxNode);
        cg.style.strokeWidth = "3px";
        cg.dataset.score = String(nodeScores[i]);
      }
      // the label goes below its marker, above it near the bottom edge, and leans inwards near the sides
      var cx = node.centroid[0], cy = node.centroid[1];
      var anchor = cx < 0.12 ? "start" : cx > 0.88 ? "end" : "middle";
      var tm = svgEl("text", {x: cx * iw, y: cy * ih + (cy > 0.9 ? -2.6 : 2.6) * unit, "font-size": 2.6 * unit,
                              "stroke-width": 0.6 * unit, "text-anchor": anchor}, layers.m.labels);
      tm.textContent = node.short;
      var tg = svgEl("text", {"font-size": 13}, layers.g.labels);
      tg.textContent = node.short;
      nodeEls.push([cm, cg]);
      labelEls.push(tg);
      textEls.push([tm, tg]);
    });
    function layout(mode) {
      v.nodes.forEach(function (node, i) {
        var p = graphXY(node, mode);
        nodeEls[i][1].setAttribute("r", radius(node));
        nodeEls[i][1].setAttribute("cx", p[0]); nodeEls[i][1].setAttribute("cy", p[1]);
        labelEls[i].setAttribute("x", p[0]); labelEls[i].setAttribute("y", p[1]);
      });
      v.edges.forEach(function (e, k) {
        var a = graphXY(v.nodes[e[0]], mode), b = graphXY(v.nodes[e[1]], mode);
        var l = edgeEls[k][1];
        l.setAttribute("x1", a[0]); l.setAttribute("y1", a[1]); l.setAttribute("x2", b[0]); l.setAttribute("y2", b[1]);
      });
    }
    layout("spring");

    var sticky = -1;
    var ctx = canvas.getContext("2d");
    function drawRegion(i) {
      var cw = canvas.width, ch = canvas.height;
      ctx.clearRect(0, 0, cw, ch);
      canvas.dataset.node = String(i);
      if (i < 0) { canvas.dataset.regionPixels = "0"; return; }
      var img = ctx.createImageData(cw, ch), d = img.data, count = 0;
      var neighbour = new Uint8Array(n + 1);
      v.nodes[i].neighbours.forEach(function (nb) { neighbour[nb[0]] = 1; });
      if (map) {
        // the node's region clear, its outline in the accent colour; neighbours lightly, everything else darkly dimmed
        for (var y = 0, p = 0; y < ch; y++) {
          for (var x = 0; x < cw; x++, p++) {
            var id = map[p], o = 4 * p;
            if (id === i) {
              count++;
              var edge = x === 0 || y === 0 || x === cw - 1 || y === ch - 1 || map[p - 1] !== i ||
                         map[p + 1] !== i || map[p - cw] !== i || map[p + cw] !== i;
              if (edge) { d[o] = 255; d[o + 1] = 207; d[o + 2] = 51; d[o + 3] = 255; }
            } else {
              d[o + 3] = id >= 0 && neighbour[id] ? 80 : 175;
            }
          }
        }
        ctx.putImageData(img, 0, 0);
      } else {
        // without a node map only the bounding box is known
        var bb = v.nodes[i].bbox;
        ctx.fillStyle = "rgba(0,0,0,0.6)";
        ctx.fillRect(0, 0, cw, ch);
        ctx.clearRect(bb[0] * cw, bb[1] * ch, (bb[2] - bb[0]) * cw, (bb[3] - bb[1]) * ch);
        ctx.strokeStyle = "#ffcf33"; ctx.lineWidth = Math.max(2, cw / 300);
        ctx.strokeRect(bb[0] * cw, bb[1] * ch, (bb[2] - bb[0]) * cw, (bb[3] - bb[1]) * ch);
        count = Math.round((bb[2] - bb[0]) * cw * (bb[3] - bb[1]) * ch);
      }
      canvas.dataset.regionPixels = String(count);
    }
    function showInfo(i) {
      info.textContent = "";
      if (i < 0) {
        htmlEl("p", "hint", n ? "Hover or click a node, or a region of the image." : "This graph has no nodes.", info);
        return;
      }
      var node = v.nodes[i];
      var h3 = htmlEl("h3", null, null, info);
      var sw = htmlEl("span", "swatch", null, h3);
      sw.style.background = node.color;
      htmlEl("span", null, node.short, h3);
      var tbl = htmlEl("table", null, null, info);
      function row(k, val) {
        var tr = htmlEl("tr", null, null, tbl);
        htmlEl("td", null, k, tr);
        htmlEl("td", null, val, tr);
      }
      row("class", node.name.split(";").join(", ") + " (id " + node.label + ", " +
          (node.stuff ? "stuff" : "thing") + ")");
      row("node", "#" + node.id);
      if (nodeScores) { row("importance", signed(nodeScores[i]) + " (for " + ex.scene + ")"); }
      if (ex && ex.node_occlusion) { row("occlusion", "Δp " + signed(ex.node_occlusion[i]) + " when removed"); }
      if (ex && ex.node_confidence) { row("confidence", ex.node_confidence[i].toFixed(2) + " (segmenter)"); }
      row("area", pct(node.area) + " of the image");
      row("centroid", "x " + Math.round(node.centroid[0] * W) + ", y " + Math.round(node.centroid[1] * H) + " px");
      row("bbox", "x " + Math.round(node.bbox[0] * W) + "–" + Math.round(node.bbox[2] * W) + ", y " +
          Math.round(node.bbox[1] * H) + "–" + Math.round(node.bbox[3] * H) + " px");
      var scale = GH === H && GW === W ? "" : " of the " + GW + "×" + GH + " map";
      htmlEl("div", "hint", node.neighbours.length + " neighbour" + (node.neighbours.length === 1 ? "" : "s") +
             " (shared boundary, px" + scale + "):", info);
      var ul = htmlEl("ul", "neighbours", null, info);
      node.neighbours.forEach(function (nb) {
        var li = htmlEl("li", null, v.nodes[nb[0]].short + " — " + Math.round(nb[1]), ul);
        li.dataset.node = String(nb[0]);
        li.addEventListener("click", function () { select(nb[0], true); });
      });
    }
    function highlight(i) {
      var neighbour = {};
      if (i >= 0) { v.nodes[i].neighbours.forEach(function (nb) { neighbour[nb[0]] = true; }); }
      nodeEls.forEach(function (els, j) {
        els.forEach(function (e) {
          e.classList.toggle("selected", j === i);
          e.classList.toggle("neighbour", !!neighbour[j]);
          e.classList.toggle("dimmed", i >= 0 && j !== i && !neighbour[j]);
        });
      });
      textEls.forEach(function (els, j) {
        els.forEach(function (e) { e.classList.toggle("dimmed", i >= 0 && j !== i && !neighbour[j]); });
      });
      edgeEls.forEach(function (els, k) {
        var e = v.edges[k], on = i >= 0 && (e[0] === i || e[1] === i);
        els.forEach(function (l) { l.classList.toggle("active", on); l.classList.toggle("dimmed", i >= 0 && !on); });
      });
      drawRegion(i);
      showInfo(i);
      section.dataset.selected = String(i);
      // in comparison, mark the nodes of the same class in the other views
      var label = i >= 0 ? v.nodes[i].label : -1;
      viewsApi.forEach(function (api, k) { if (k !== vi) { api.markClass(label); } });
    }
    function select(i, makeSticky) { if (makeSticky) { sticky = i; } highlight(i); }
    function markClass(label) {
      nodeEls.forEach(function (els, j) {
        els.forEach(function (e) { e.classList.toggle("same-class", label >= 0 && v.nodes[j].label === label); });
      });
    }
    nodeEls.forEach(function (els, i) {
      els[1].addEventListener("mouseenter", function () { highlight(i); });
      els[1].addEventListener("mouseleave", function () { highlight(sticky); });
      els[1].addEventListener("click", function (ev) { ev.stopPropagation(); select(sticky === i ? -1 : i, true); });
    });
    graph.addEventListener("click", function () { select(-1, true); });
    function nodeAt(ev) {
      var r = box.getBoundingClientRect();
      var fx = (ev.clientX - r.left) / r.width, fy = (ev.clientY - r.top) / r.height;
      if (map) {
        var x = Math.min(mw - 1, Math.max(0, Math.floor(fx * mw)));
        var y = Math.min(mh - 1, Math.max(0, Math.floor(fy * mh)));
        return map[y * mw + x];
      }
      var best = -1, bestArea = 2;
      v.nodes.forEach(function (node, j) {
        var b = node.bbox;
        // the smallest box under the pointer: the most specific object
        if (fx >= b[0] && fx < b[2] && fy >= b[1] && fy < b[3] && node.area < bestArea) {
          best = j; bestArea = node.area;
        }
      });
      return best;
    }
    var hovered = -2;
    box.addEventListener("mousemove", function (ev) {
      var i = nodeAt(ev);
      if (i !== hovered) { hovered = i; highlight(i >= 0 ? i : sticky); }
    });
    box.addEventListener("mouseleave", function () { hovered = -2; highlight(sticky); });
    box.addEventListener("click", function (ev) { select(nodeAt(ev), true); });
    var opacity = section.querySelector("input.opacity");
    if (opacity && seg) {
      opacity.addEventListener("input", function () { seg.style.opacity = opacity.value / 100; });
      seg.style.opacity = opacity.value / 100;
    }
    var lay = section.querySelector("select.layout");
    if (lay) { lay.addEventListener("change", function () { layout(lay.value); }); }
    var size = section.querySelector("select.size");
    if (size) {
      if (!nodeScores) { size.disabled = true; size.value = "area"; }
      size.addEventListener("change", function () { sizeBy = size.value; layout(lay ? lay.value : "spring"); });
    }
    var cam = section.querySelector("img.cam"), camOpacity = section.querySelector("input.cam-opacity");
    if (cam && camOpacity) {
      camOpacity.addEventListener("input", function () { cam.style.opacity = camOpacity.value / 100; });
      cam.style.opacity = camOpacity.value / 100;
    }
    var showMarks = section.querySelector("input.show-marks");
    if (showMarks) {
      showMarks.addEventListener("change", function () { marks.style.display = showMarks.checked ? "" : "none"; });
    }
    highlight(-1);
    return {select: select, markClass: markClass};
  }

  var sections = document.querySelectorAll("section.view");
  var photo = sections[0].querySelector("img.photo");
  sections.forEach(function (s) { s.querySelector("img.photo").src = photo.src; });
  DATA.views.forEach(function (v, k) { viewsApi.push(setupView(sections[k], v, k)); });
  var buttons = document.querySelectorAll(".tabs button");
  function activate(k) {
    document.body.classList.toggle("all", k < 0);
    sections.forEach(function (s, j) { s.classList.toggle("active", j === k); });
    buttons.forEach(function (b) { b.classList.toggle("active", Number(b.dataset.tab) === k); });
  }
  buttons.forEach(function (b) { b.addEventListener("click", function () { activate(Number(b.dataset.tab)); }); });
  activate(0);
  window.twostreamViewer = {select: function (view, node) { viewsApi[view].select(node, true); }, activate: activate};
  document.body.dataset.ready = "1";
})();
