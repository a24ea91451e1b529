// The dashboards' charts: a Streamlit component (st.components.v2) drawing a spec built by
// monitor/webui/charts.py with uPlot (vendored in ./uplot, served by Streamlit's static file route).
// uPlot draws on a canvas and writes its title and legend as textContent: text from the store
// (model names, span names, buckets) shows exactly as stored and never becomes markup.
// Line charts: one series per group over a time axis spanning the selected range; the legend shows
// each series' value under the cursor. Bar charts: vertical or horizontal, over times or
// categories, each bar from y0 to y1 (stacked, grouped or on a base: the spec says where).

const PALETTE = ["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880",
                 "#FF97FF", "#FECB52"];
let loading = null;
const load = (url) => (loading ||= import(url).then((m) => m.default, (err) => {
  loading = null; // the next chart (or rerun) tries again
  throw err;
}));

const num = new Intl.NumberFormat("en", { maximumSignificantDigits: 4 });
const pad = (n) => String(n).padStart(2, "0");

function fmtValue(spec, v) {
  if (v == null || Number.isNaN(v)) return "--";
  return spec.percent ? `${(v * 100).toFixed(1)}%` : num.format(v);
}

function fmtTime(t, full) {
  const d = new Date(t * 1000);
  const day = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  const hm = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  return full ? `${day} ${hm}:${pad(d.getUTCSeconds())}` : [day, hm];
}

function timeTicks(u, splits, axisIdx, space, incr) {
  return splits.map((t) => {
    const [day, hm] = fmtTime(t, false);
    return incr >= 86400 || hm === "00:00" ? day.slice(5) : hm;
  });
}

// Bars as rectangles from y0 to y1 of the spec (not uPlot's data: that holds each bar's own
// length, which the legend shows), centred on their category or time bucket. ``ref.spec`` is
// read at every draw: a rerun with new figures updates the chart in place.
function barPaths(ref, horizontal) {
  return (u, si) => {
    const spec = ref.spec;
    const s = spec.series[si - 1];
    const xs = u.data[0];
    const fill = new Path2D();
    const groups = spec.mode === "group" ? spec.series.length : 1;
    const slot = spec.mode === "group" ? si - 1 : 0;
    const band = Math.abs(u.valToPos(spec.band, "x", true) - u.valToPos(0, "x", true)) * 0.8;
    const w = Math.max(1, band / groups);
    for (let i = 0; i < xs.length; i++) {
      const a = s.y0[i], b = s.y1[i];
      if (a == null || b == null) continue;
      const c = u.valToPos(xs[i], "x", true) - band / 2 + slot * w;
      const p0 = u.valToPos(a, "y", true), p1 = u.valToPos(b, "y", true);
      if (horizontal) fill.rect(Math.min(p0, p1), c, Math.max(1, Math.abs(p1 - p0)), w);
      else fill.rect(c, Math.min(p0, p1), w, Math.max(1, Math.abs(p1 - p0)));
    }
    return { stroke: fill, fill };
  };
}

// The chart's options from the spec it is created with; what may change with the next rerun's
// figures (ranges, values, labels' text) is read from ``ref.spec`` when uPlot asks.
function options(uPlot, ref, width) {
  const spec = ref.spec;
  const bar = spec.kind === "bar";
  const horizontal = bar && spec.orientation === "h";
  const categories = spec.labels != null;
  const fmt = (u, v) => fmtValue(ref.spec, v);
  const xValue = categories ? (u, v) => (v == null ? "--" : ref.spec.labels[v] ?? "")
                            : (u, v) => (v == null ? "--" : fmtTime(v, true));
  const series = [{ label: spec.x_title || (categories ? " " : "time (UTC)"), value: xValue }];
  spec.series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    series.push(bar
      ? { label: s.name, stroke: color, fill: color, width: 0, points: { show: false },
          paths: barPaths(ref, horizontal), value: fmt }
      : { label: s.name, stroke: color, width: 1.5, spanGaps: true,
          points: { show: spec.markers, size: 5 }, value: fmt });
  });
  const x = { time: !categories, range: () => [ref.spec.x_min, ref.spec.x_max] };
  if (horizontal) Object.assign(x, { ori: 1, dir: -1 });
  const y = { range: () => [ref.spec.y_min, ref.spec.y_max] };
  if (horizontal) y.ori = 0;
  const xAxis = { label: spec.x_title || undefined, values: categories
      ? (u, splits) => splits.map((v) => (Number.isInteger(v) ? ref.spec.labels[v] ?? "" : ""))
      : timeTicks };
  if (categories) xAxis.splits = () => ref.spec.labels.map((_, i) => i);
  const yAxis = { label: spec.y_title || undefined, values: (u, splits) => splits.map((v) => fmtValue(ref.spec, v)) };
  if (horizontal) { xAxis.side = 3; yAxis.side = 2; yAxis.space = 70; xAxis.size = spec.axis_size; }
  else yAxis.size = 60;
  return {
    title: spec.title, width, height: spec.height, series, scales: { x, y }, axes: [xAxis, yAxis],
    // ticks on whole UTC hours and days, whatever the browser's time zone (the labels say UTC)
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    legend: { show: spec.series.length > 0 || bar },
    cursor: { points: { show: !bar }, drag: { x: false, y: false } },
  };
}

// Whether a chart drawn for spec ``a`` can show spec ``b`` by taking its data: the same kind,
// title, size, series and categories (a refresh of the same page with newer figures).
function sameShape(a, b) {
  const keys = ["kind", "title", "height", "percent", "markers", "orientation", "mode", "x_title", "y_title",
                "axis_size"];
  return keys.every((k) => a[k] === b[k]) && !!a.hover === !!b.hover &&
    (a.labels == null) === (b.labels == null) && (a.labels == null || a.labels.length === b.labels.length) &&
    a.series.length === b.series.length && a.series.every((s, i) => s.name === b.series[i].name);
}

function data(spec) {
  return [spec.x, ...spec.series.map((s) => s.y)];
}

// Extra columns of the bar under the cursor ("kind=SERVER · status=OK"), below the legend.
function hoverLine(ref, el) {
  if (!ref.spec.hover) return [];
  const line = document.createElement("div");
  line.className = "mon-chart-hover";
  el.appendChild(line);
  return [(u) => {
    const i = u.cursor.idx;
    const hover = ref.spec.hover;
    const row = i == null || !hover ? null : hover.rows[i];
    line.textContent = row ? hover.columns.map((c, j) => `${c}=${row[j] ?? ""}`).join(" · ") : "";
  }];
}

export default function (component) {
  const { data: spec, parentElement } = component;
  let el = parentElement.querySelector("div.mon-chart");
  if (!el) {
    el = document.createElement("div");
    el.className = "mon-chart";
    parentElement.appendChild(el);
  }
  // a rerun (the Overview's refresh every few seconds) calls this again on the same element: a
  // chart of the same shape takes the new figures in place (no redraw from scratch, the cursor
  // stays); any other goes, with its resize observer, and a new one is drawn
  const prev = el._mon;
  if (prev && prev.chart && sameShape(prev.ref.spec, spec)) {
    prev.ref.spec = spec;
    prev.chart.setData(data(spec));
    el.setAttribute("data-drawn", "1");
    return prev.cleanup;
  }
  if (prev) prev.dispose();
  const state = { chart: null, observer: null, gone: false, ref: { spec } };
  state.dispose = () => {
    state.gone = true;
    if (state.observer) state.observer.disconnect();
    if (state.chart) state.chart.destroy();
    state.chart = state.observer = null;
  };
  state.cleanup = () => {
    state.dispose();
    if (el._mon === state) el._mon = null;
  };
  el._mon = state;
  el.removeAttribute("data-drawn");
  load(new URL(spec.lib, document.baseURI).href).then((uPlot) => {
    if (state.gone) return;
    el.replaceChildren();
    const width = () => Math.max(240, el.clientWidth || parentElement.clientWidth || 600);
    const opts = options(uPlot, state.ref, width());
    opts.hooks = { setCursor: hoverLine(state.ref, el) };
    const chart = (state.chart = new uPlot(opts, data(spec), el));
    if (spec.hover) el.appendChild(el.querySelector(".mon-chart-hover"));
    state.observer = new ResizeObserver(() => {
      if (Math.abs(chart.width - width()) > 2) chart.setSize({ width: width(), height: chart.height });
    });
    state.observer.observe(el);
    el.setAttribute("data-drawn", "1");
  }).catch((err) => {
    if (state.gone) return;
    el.textContent = `chart unavailable: ${err}. The dashboards serve their chart library from app/static: ` +
      "start them with `monitor dashboard` or `monitor up`, or set server.enableStaticServing = true.";
    el.setAttribute("data-drawn", "error");
  });
  return state.cleanup;
}
