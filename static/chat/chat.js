// Only what htmx cannot express: Enter sends, Shift+Enter is a newline.
document.addEventListener("keydown", (event) => {
  const box = event.target;
  if (event.key === "Enter" && !event.shiftKey && box.matches && box.matches(".composer textarea")) {
    event.preventDefault();
    box.form.requestSubmit();
  }
});
