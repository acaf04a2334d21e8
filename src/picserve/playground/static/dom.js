// Small DOM helpers. Text always goes in as text (textContent), never as HTML.

/** `h("button", { class: "x", type: "button", onclick }, "Label")` → an element. Properties that
 * start with `on` become listeners; `dataset` (less its null entries) and `attrs` objects are
 * applied; null children skipped. */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") element.addEventListener(key.slice(2), value);
    else if (key === "class") element.className = value;
    else if (key === "dataset") {
      for (const [name, v] of Object.entries(value)) if (v !== null && v !== undefined) element.dataset[name] = v;
    }
    else if (key === "attrs") for (const [name, v] of Object.entries(value)) element.setAttribute(name, v);
    else if (key in element && typeof value !== "string") element[key] = value;
    else element.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

export const $ = (id) => document.getElementById(id);

/** Hide every field error inside `root` (an element, or the document), drop its controls'
 * aria-invalid, and empty the summary line `summaryId`. */
export function clearErrorsIn(root, summaryId) {
  for (const element of root.querySelectorAll(".field-error")) {
    element.hidden = true;
    element.textContent = "";
  }
  for (const element of root.querySelectorAll("[aria-invalid]")) element.removeAttribute("aria-invalid");
  $(summaryId).textContent = "";
}

/** Take `control`'s error away (its aria-invalid, and `errorFor(control)`, by default the element
 * `<control id>-error`), once the user changed it. */
export function clearFieldError(control, errorFor = (c) => $(`${c.id}-error`)) {
  if (!control?.hasAttribute?.("aria-invalid")) return;
  control.removeAttribute("aria-invalid");
  const error = errorFor(control);
  if (error) {
    error.hidden = true;
    error.textContent = "";
  }
}

/** Say `message` to screen readers (the page's polite live region). */
export function announce(message) {
  const region = $("announcer");
  if (!region) return;
  region.textContent = "";
  // a new text node after a tick, so the same message twice is announced twice
  setTimeout(() => {
    region.textContent = message;
  }, 30);
}

export function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

/** A chosen file as a data URI. */
export function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/** A data URI's image size, as the browser decodes it. */
export function imageSize(dataUrl) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve({ width: image.naturalWidth, height: image.naturalHeight });
    image.onerror = () => reject(new Error("the file is not an image this browser can read"));
    image.src = dataUrl;
  });
}

/** The image types the API takes (PNG, JPEG, WebP), by their MIME types. */
export const IMAGE_TYPES = new Set(["image/png", "image/jpeg", "image/webp"]);

/** A chosen image file read for a request: { name, dataUrl, width, height }. Rejects with a message
 * naming the file when it is not a PNG, JPEG or WebP image, or the browser cannot decode it. */
export async function readImage(file) {
  if (!file || !IMAGE_TYPES.has(file.type)) throw new Error(`${file ? file.name : "That"} is not a PNG, JPEG or WebP image`);
  const dataUrl = await readFile(file);
  try {
    return { name: file.name, dataUrl, ...(await imageSize(dataUrl)) };
  } catch (error) {
    throw new Error(`${file.name}: ${error.message}`);
  }
}

/** A problem with one control, found before anything is sent: shown by the control `id`. */
export class FieldError extends Error {
  constructor(id, message) {
    super(message);
    this.id = id;
  }
}

/** Files dropped on `target` go to `onFiles(files)`; `zone` is highlighted while they are dragged over.
 * Targets may nest (a control unit inside the settings form): the innermost takes the drop, and the
 * outer ones leave it alone and drop their highlight. */
export function dropTarget(target, zone, onFiles) {
  target.addEventListener("dragover", (event) => {
    if (![...event.dataTransfer.types].includes("Files") || event.dropClaimed) {
      zone.classList.remove("dragging");
      return;
    }
    event.preventDefault();
    event.dropClaimed = true;
    zone.classList.add("dragging");
  });
  target.addEventListener("dragleave", (event) => {
    if (!target.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  target.addEventListener("drop", (event) => {
    zone.classList.remove("dragging");
    if (event.dropClaimed || !event.dataTransfer.files.length) return;
    event.preventDefault();
    event.dropClaimed = true;
    onFiles(event.dataTransfer.files);
  });
}
