// fnet explorer: filter the network cards and the long tables; nothing is loaded from anywhere.
(function () {
  "use strict";
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.card"));
  var filter = document.getElementById("filter");
  var count = document.getElementById("shown");

  function applyCardFilter() {
    var words = (filter.value || "").toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    cards.forEach(function (card) {
      var text = card.getAttribute("data-search") || "";
      var keep = words.every(function (w) { return text.indexOf(w) >= 0; });
      card.classList.toggle("hidden", !keep);
      if (keep) { shown += 1; }
    });
    if (count) { count.textContent = shown + " of " + cards.length + " networks"; }
  }

  if (filter) { filter.addEventListener("input", applyCardFilter); }
  applyCardFilter();

  Array.prototype.forEach.call(document.querySelectorAll("input.tfilter"), function (input) {
    var table = document.querySelector('table[data-table="' + input.getAttribute("data-table") + '"]');
    if (!table) { return; }
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    input.addEventListener("input", function () {
      var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      rows.forEach(function (row) {
        var text = row.textContent.toLowerCase();
        row.style.display = words.every(function (w) { return text.indexOf(w) >= 0; }) ? "" : "none";
      });
    });
  });

  var expand = document.getElementById("expand");
  if (expand) {
    expand.addEventListener("click", function () {
      var all = document.querySelectorAll("details");
      var open = !Array.prototype.every.call(all, function (d) { return d.open; });
      Array.prototype.forEach.call(all, function (d) { d.open = open; });
      expand.textContent = open ? "collapse all" : "expand all";
    });
  }
  document.documentElement.setAttribute("data-ready", "1");
})();
