// The site loads no widget manager (it would come from a CDN, and a static page cannot
// recompute a widget anyway). Where a notebook output holds a widget, say where it runs,
// so that no output area is left blank. The figure the widget draws at its default
// settings is printed by the plain call just above it.
document.addEventListener("DOMContentLoaded", function () {
  var selector = 'script[type="application/vnd.jupyter.widget-view+json"]';
  document.querySelectorAll(selector).forEach(function (script) {
    var note = document.createElement("p");
    note.className = "widget-fallback";
    note.textContent =
      "Interactive control: it runs when the notebook runs (Jupyter, or Colab with the " +
      "rocket button at the top of the page). The figure above shows its default settings.";
    script.parentNode.insertBefore(note, script.nextSibling);
  });
});
