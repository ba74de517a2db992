(function () {
  "use strict";
  // Every model text reaches the page through textContent / text nodes, never as markup.
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var prompts = data.prompts, samples = data.samples;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function lower(s) { return (s || "").toLowerCase(); }

  // ---- long texts fold; a character diff marks what only one side has --------------------------
  var FOLD_CHARS = 700, FOLD_LINES = 12, DIFF_CELLS = 2500000;

  function foldable(content, length, lines) {
    var box = el("div");
    box.appendChild(content);
    if (length > FOLD_CHARS || lines > FOLD_LINES) {
      content.classList.add("fold");
      var more = el("button", "more", "show all (" + length + " chars)");
      more.type = "button";
      more.addEventListener("click", function () {
        var folded = content.classList.toggle("fold");
        more.textContent = folded ? "show all (" + length + " chars)" : "fold";
      });
      box.appendChild(more);
    }
    return box;
  }

  function textBlock(text, mask, tag) {
    var pre = el("div", "text");
    if (!mask) { pre.textContent = text; }
    else {
      var i = 0;
      while (i < text.length) {
        var j = i;
        while (j < text.length && mask[j] === mask[i]) j++;
        var part = text.slice(i, j);
        pre.appendChild(mask[i] ? el(tag, null, part) : document.createTextNode(part));
        i = j;
      }
    }
    return foldable(pre, text.length, text.split("\n").length);
  }

  // LCS over characters between the common prefix and suffix; too long a middle is marked whole.
  function charDiff(a, b) {
    var ma = new Uint8Array(a.length), mb = new Uint8Array(b.length);
    var p = 0, min = Math.min(a.length, b.length);
    while (p < min && a[p] === b[p]) p++;
    var s = 0;
    while (s < min - p && a[a.length - 1 - s] === b[b.length - 1 - s]) s++;
    var A = a.slice(p, a.length - s), B = b.slice(p, b.length - s), n = A.length, m = B.length, i, j;
    if (n * m > DIFF_CELLS) {
      for (i = 0; i < n; i++) ma[p + i] = 1;
      for (j = 0; j < m; j++) mb[p + j] = 1;
      return [ma, mb];
    }
    var w = m + 1, dp = new Uint16Array((n + 1) * w);
    for (i = n - 1; i >= 0; i--) {
      for (j = m - 1; j >= 0; j--) {
        dp[i * w + j] = A[i] === B[j] ? dp[(i + 1) * w + j + 1] + 1 : Math.max(dp[(i + 1) * w + j], dp[i * w + j + 1]);
      }
    }
    if (dp[0] < 0.3 * Math.max(n, m)) {  // little in common: a different answer, not an edit of it
      for (i = 0; i < n; i++) ma[p + i] = 1;
      for (j = 0; j < m; j++) mb[p + j] = 1;
      return [ma, mb];
    }
    i = 0; j = 0;
    while (i < n && j < m) {
      if (A[i] === B[j]) { i++; j++; }
      else if (dp[(i + 1) * w + j] >= dp[i * w + j + 1]) { ma[p + i] = 1; i++; }
      else { mb[p + j] = 1; j++; }
    }
    for (; i < n; i++) ma[p + i] = 1;
    for (; j < m; j++) mb[p + j] = 1;
    return [absorb(ma), absorb(mb)];
  }

  // Unchanged runs of under 4 characters between changes read as noise: mark them changed.
  function absorb(mask) {
    var k = 0;
    while (k < mask.length) {
      if (mask[k]) { k++; continue; }
      var start = k;
      while (k < mask.length && !mask[k]) k++;
      if (start > 0 && k < mask.length && k - start < 4) for (var t = start; t < k; t++) mask[t] = 1;
    }
    return mask;
  }

  function verdictTags(v, into) {
    if (v.correct !== null) into.appendChild(el("span", "v " + (v.correct ? "yes" : "no") + "-correct", v.correct ? "correct" : "wrong"));
    if (v.refused !== null) into.appendChild(el("span", "v " + (v.refused ? "yes" : "no") + "-refused", v.refused ? "refused" : "answered"));
    if (v.reward !== null) into.appendChild(el("span", "v", "reward " + v.reward.toFixed(3)));
  }

  function promptCell(td, promptIndex, gold) {
    td.appendChild(textBlock(prompts[promptIndex]));
    if (gold) td.appendChild(el("div", "gold", "gold: " + gold));
  }

  // ---- a paginated list with a text filter ---------------------------------------------------
  function Pager(prefix, pageSize) {
    this.page = 0; this.size = pageSize; this.items = [];
    this.prev = document.getElementById(prefix + "prev");
    this.next = document.getElementById(prefix + "next");
    this.label = document.getElementById(prefix + "page");
    var self = this;
    this.prev.addEventListener("click", function () { self.go(self.page - 1); });
    this.next.addEventListener("click", function () { self.go(self.page + 1); });
  }
  Pager.prototype.pages = function () { return Math.max(1, Math.ceil(this.items.length / this.size)); };
  Pager.prototype.go = function (page) {
    this.page = Math.max(0, Math.min(this.pages() - 1, page));
    this.label.textContent = "page " + (this.page + 1) + " of " + this.pages();
    this.prev.disabled = this.page === 0;
    this.next.disabled = this.page >= this.pages() - 1;
    this.draw(this.items.slice(this.page * this.size, (this.page + 1) * this.size));
  };

  // ---- side by side ------------------------------------------------------------------------------
  var blockSelect = document.getElementById("sbs-block"), outcome = document.getElementById("sbs-outcome");
  var sbsSearch = document.getElementById("sbs-search"), sbsCount = document.getElementById("sbs-count");
  var sbsBody = document.querySelector("#sbs tbody"), sbs = new Pager("sbs-", 20);
  var sideSection = document.getElementById("side-by-side");
  data.blocks.forEach(function (b, k) { var o = el("option", null, b.name); o.value = String(k); blockSelect.appendChild(o); });
  if (!data.blocks.length) sideSection.hidden = true;

  function fillOutcomes() {
    var block = data.blocks[+blockSelect.value];
    outcome.textContent = "";
    var all = el("option", null, "all (" + block.pairs.length + ")"); all.value = ""; outcome.appendChild(all);
    block.outcomes.forEach(function (o) { var opt = el("option", null, o[1] + " (" + o[3] + ")"); opt.value = o[0]; opt.setAttribute("data-bit", String(o[2])); outcome.appendChild(opt); });
    document.getElementById("sbs-a").textContent = "A: " + block.a;
    document.getElementById("sbs-b").textContent = "B: " + block.b;
  }
  function pairText(p) { return p[3] || (p[3] = sampleText(samples[p[0]]) + "\n" + lower(samples[p[1]].out)); }
  function applySbs() {
    if (!data.blocks.length) return;
    var block = data.blocks[+blockSelect.value], q = lower(sbsSearch.value);
    var want = outcome.value ? +outcome.selectedOptions[0].getAttribute("data-bit") : 0;
    sbs.items = block.pairs.filter(function (p) {
      return (!want || (p[2] & want)) && (!q || pairText(p).indexOf(q) >= 0);
    });
    sbsCount.textContent = sbs.items.length + " of " + block.pairs.length + " pairs";
    sbs.go(0);
  }
  sbs.draw = function (items) {
    sbsBody.textContent = "";
    items.forEach(function (p) {
      var a = samples[p[0]], b = samples[p[1]], tr = el("tr", "pair"), tdp = el("td"), ta = el("td"), tb = el("td");
      tdp.appendChild(el("div", "small", a.set + " #" + a.i));
      promptCell(tdp, a.p, a.gold);
      var masks = a.out === b.out ? [null, null] : charDiff(a.out, b.out);
      verdictTags(a.v, ta); verdictTags(b.v, tb);
      ta.appendChild(textBlock(a.out, masks[0], "del"));
      tb.appendChild(textBlock(b.out, masks[1], "ins"));
      tr.appendChild(tdp); tr.appendChild(ta); tr.appendChild(tb);
      sbsBody.appendChild(tr);
    });
  };
  blockSelect.addEventListener("change", function () { fillOutcomes(); applySbs(); });
  outcome.addEventListener("change", applySbs);
  sbsSearch.addEventListener("input", applySbs);
  if (data.blocks.length) { fillOutcomes(); applySbs(); }

  // ---- every sample: filters, pages, permalinks, keys ---------------------------------------------
  var filters = document.getElementById("sample-filters"), search = document.getElementById("search");
  var count = document.getElementById("count"), body = document.querySelector("#sample-table tbody"), list = new Pager("", 50);
  var selects = [], selected = -1;
  data.options.forEach(function (o) {
    var label = el("label", null, o[0] + " "), s = el("select");
    s.setAttribute("data-filter", o[0]);
    var all = el("option", null, "all"); all.value = ""; s.appendChild(all);
    o[1].forEach(function (v) { var opt = el("option", null, v); opt.value = v; s.appendChild(opt); });
    label.appendChild(s);
    filters.insertBefore(label, search.parentNode);
    selects.push(s);
    s.addEventListener("change", apply);
  });
  function sampleText(s) { return s._text || (s._text = lower(prompts[s.p] + "\n" + s.out + "\n" + s.gold)); }
  function apply() {
    var q = lower(search.value), active = selects.filter(function (s) { return s.value; });
    list.items = [];
    for (var k = 0; k < samples.length; k++) {
      var s = samples[k], ok = true;
      for (var f = 0; f < active.length && ok; f++) ok = s[active[f].getAttribute("data-filter")] === active[f].value;
      if (ok && q) ok = sampleText(s).indexOf(q) >= 0;
      if (ok) list.items.push(k);
    }
    count.textContent = list.items.length + " of " + samples.length + " samples" +
      (data.total > samples.length ? " (" + (data.total - samples.length) + " more not loaded: max_samples)" : "");
    selected = -1;
    list.go(0);
  }
  list.draw = function (items) {
    body.textContent = "";
    items.forEach(function (k) {
      var s = samples[k], tr = el("tr", "sample"), id = el("td"), who = el("td"), tdp = el("td"), out = el("td"), sc = el("td", "small");
      tr.setAttribute("data-k", String(k));
      var a = el("a", "perma", "#"); a.href = "#sample=" + encodeURIComponent(s.id); a.title = "permalink: " + s.id;
      id.appendChild(a); id.appendChild(el("div", "small", String(s.i)));
      who.appendChild(el("div", null, s.system)); who.appendChild(el("div", "small", s.set + (s.category ? " · " + s.category : "")));
      promptCell(tdp, s.p, s.gold);
      out.appendChild(textBlock(s.out));
      verdictTags(s.v, sc);
      sc.appendChild(el("div", null, s.scores));
      [id, who, tdp, out, sc].forEach(function (td) { tr.appendChild(td); });
      body.appendChild(tr);
    });
    mark();
  };
  function mark() {
    Array.prototype.forEach.call(body.querySelectorAll("tr.sel"), function (r) { r.classList.remove("sel"); });
    var row = selected >= 0 && body.querySelector('tr[data-k="' + selected + '"]');
    if (row) { row.classList.add("sel"); return row; }
    return null;
  }
  function select(k, scroll) {
    var pos = list.items.indexOf(k);
    if (pos < 0) return;
    selected = k;
    var page = Math.floor(pos / list.size);
    if (page !== list.page) list.go(page); else mark();
    var row = mark();
    if (row && scroll) row.scrollIntoView({block: "center"});
    history.replaceState(null, "", "#sample=" + encodeURIComponent(samples[k].id));
  }
  function openHash() {
    var h = location.hash;
    if (h.indexOf("#sample=") !== 0) return;
    var id = decodeURIComponent(h.slice(8)), k = -1;
    for (var i = 0; i < samples.length; i++) if (samples[i].id === id) { k = i; break; }
    if (k < 0) { count.textContent = "sample " + id + " is not in this page"; return; }
    if (list.items.indexOf(k) < 0) { selects.forEach(function (s) { s.value = ""; }); search.value = ""; apply(); }
    if (document.activeElement && document.activeElement.blur) document.activeElement.blur();  // keys go to the list
    select(k, true);
  }
  search.addEventListener("input", apply);
  window.addEventListener("hashchange", openHash);
  document.addEventListener("keydown", function (e) {
    var t = e.target.tagName;
    if (t === "INPUT" || t === "SELECT" || t === "TEXTAREA" || e.ctrlKey || e.metaKey || e.altKey) return;
    var pos = list.items.indexOf(selected);
    if (e.key === "j") select(list.items[Math.min(list.items.length - 1, pos + 1)], true);
    else if (e.key === "k" && pos > 0) select(list.items[pos - 1], true);
    else if (e.key === "n") { list.go(list.page + 1); selected = -1; }
    else if (e.key === "p") { list.go(list.page - 1); selected = -1; }
    else if (e.key === "/") { e.preventDefault(); search.focus(); }
    else return;
  });
  apply();
  openHash();
})();
