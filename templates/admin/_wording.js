/* The follow-up editor's live preview: half a second after typing stops, the form goes to the preview
   address and the answer shows in the preview frame (the Preview button does the same without it). */
(function () {
  "use strict";
  var form = document.getElementById("wording-form");
  var button = document.getElementById("preview-button");
  if (!form || !button || !form.requestSubmit) {
    return;
  }
  var timer = null;
  form.addEventListener("input", function () {
    window.clearTimeout(timer);
    timer = window.setTimeout(function () { form.requestSubmit(button); }, 500);
  });
  if (form.hasAttribute("data-unsaved")) {  // wording that was refused: the frame shows it, not the saved one
    form.requestSubmit(button);
  }
})();
