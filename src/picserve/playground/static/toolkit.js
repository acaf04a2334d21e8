// Restore faces, cut out by clicks, describe and new background: RestoreFaces, ExtractContents,
// DescribeImages and GenerateBackgrounds, and GenerateImagesSDXL's FaceRestore (the generate form's
// "Restore faces"). Each shows only where the server lists a model of its kind in ListModels
// (FaceModels and FaceDetectModels, SegmentModels, CaptionModels; a new background needs only a main
// model). The panel works on one image: a file of this device (sent as a data URI) or a gallery image
// (sent by its TaskUID, `task:<TaskUID>/<index>`). Its tasks are followed by gallery.js like the others
// (`form.tool`: "faces", "extract", "describe", "background").

import { $, clearErrorsIn, clearFieldError, FieldError, IMAGE_TYPES, announce, clamp, dropTarget, h, imageSize, readImage } from "./dom.js";
import { fill, usable } from "./tools.js";

/** the points one ExtractContents list may hold */
export const MAX_POINTS = 64;

/** the gallery's tool buttons this module answers */
export const TOOLKIT_KINDS = new Set(["faces", "points", "describe", "background"]);

/** An API Message's field → the panel's control. */
const PANEL_FIELDS = [
  [/^RawImage/, "toolkit-image"],
  [/^(IncludePointList|ExcludePointList)/, "toolkit-picker"],
  [/^RestoreStrength/, "toolkit-face-strength"],
  [/^FaceModel/, "toolkit-face-model"],
  [/^FaceDetectModel/, "toolkit-face-detect-model"],
  [/^SegmentModel/, "toolkit-segment-model"],
  [/^ErodeSize/, "toolkit-erode"],
  [/^ForegroundThreshold/, "toolkit-foreground"],
  [/^BackgroundThreshold/, "toolkit-background"],
  [/^HairOptimization/, "toolkit-hair"],
  [/^OnlyMask/, "toolkit-only-mask"],
  [/^TranslateDescription/, "toolkit-language"],
  [/^CaptionModel/, "toolkit-caption-model"],
  [/^ImageList\[1\]|^BackgroundImage2Image\.(ImageIndex|ResizeMode|DeepFusion)/, "toolkit-bg-image"],
  [/^BackgroundImage2Image\.ReferStrength/, "toolkit-bg-strength"],
  [/^TransparentForeground\.Scale/, "toolkit-bg-scale"],
  [/^ImageList|^TransparentForeground/, "toolkit-image"],
  [/^PositivePrompts/, "toolkit-bg-prompt"],
];

/** What the submitted task is, for the announcement. */
const WHAT = {
  RestoreFaces: "a face restoration",
  ExtractContents: "a cut-out by clicks",
  DescribeImages: "a description",
  GenerateBackgrounds: "a new background",
};

/** The Client's method for each action. */
const METHODS = {
  RestoreFaces: "restoreFaces",
  ExtractContents: "extractContents",
  DescribeImages: "describeImages",
  GenerateBackgrounds: "generateBackgrounds",
};

function modelLabel(model) {
  const about = model.Architecture || model.Session || "";
  return `${model.ModelCode}${about ? ` · ${about}` : ""}${model.IsDefault ? " (default)" : ""}`;
}

function preferred(models) {
  return models.find((m) => m.IsDefault)?.ModelCode || models[0]?.ModelCode || "";
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export class Toolkit {
  /**
   * `client()`: the connected Client or null; `connect()`: connects, resolves to whether it did;
   * `tasks`: gallery.js's Tasks; `showError(error, { controlFor, fallback })` and
   * `showFieldError(id, message)`: app.js's; `generation()`: the generate form's base fields for
   * GenerateBackgrounds (MainModel, NegativePrompts, Seed, BatchSize, TranslatePrompts; throws a
   * FieldError naming a form field); `formControlFor(path)`: the form's control of such a field.
   */
  constructor({ client, connect, tasks, showError, showFieldError, generation, formControlFor }) {
    this.client = client;
    this.connect = connect;
    this.tasks = tasks;
    this.showError = showError;
    this.showFieldError = showFieldError;
    this.generation = generation;
    this.formControlFor = formControlFor;
    /** the panel's image: { name, src, send, ref, width, height } (send: a data URI or a TaskUID reference) */
    this.image = null;
    /** the points of "cut out by clicks", in the image's pixels: [{ x, y, include }] */
    this.points = [];
    /** the keyboard's crosshair on the image, in its pixels */
    this.cursor = { x: 0, y: 0 };
    /** the optional background image of a new background: { name, dataUrl, width, height } */
    this.backgroundImage = null;
    this.can = { faces: false, segment: false, caption: false, background: false };
    /** the descriptions this page asked for and is still waiting for: their text becomes the prompt */
    this.describing = new Set();
    this.models = { faces: [], facedetect: [], segment: [], caption: [] };
    this.setModels(null);
    this.wire();
  }

  /** Whether `target` is in the panel (a paste there is its image, Ctrl+Enter no generation). */
  owns(target) {
    return target instanceof Node && $("toolkit").contains(target);
  }

  // ------------------------------------------------------------ what the server offers

  /** ListModels' face, segment and caption models into the pickers, and the controls shown (null: not
   * connected yet, nothing of these shown). */
  setModels(models) {
    const m = {
      faces: usable(models?.FaceModels),
      facedetect: usable(models?.FaceDetectModels),
      segment: usable(models?.SegmentModels),
      caption: usable(models?.CaptionModels),
    };
    this.models = m;
    this.can = {
      faces: m.faces.length > 0 && m.facedetect.length > 0,
      segment: m.segment.length > 0,
      caption: m.caption.length > 0,
      background: Object.keys(models?.MainModels || {}).length > 0,
    };
    // a picker only where there is a choice: with one model (or none) the request names none, the
    // server takes its default
    const pickers = [
      ["face-model", m.faces],
      ["face-detect-model", m.facedetect],
      ["toolkit-face-model", m.faces],
      ["toolkit-face-detect-model", m.facedetect],
      ["toolkit-segment-model", m.segment],
      ["toolkit-caption-model", m.caption],
    ];
    for (const [id, list] of pickers) {
      fill($(id), list.map((model) => [model.ModelCode, modelLabel(model)]), preferred(list));
      $(`${id}-field`).hidden = list.length < 2;
    }
    $("face-restore-field").hidden = !this.can.faces;
    this.faceRestoreToggled();
    $("toolkit-faces-set").hidden = !this.can.faces;
    $("toolkit-points-set").hidden = !this.can.segment;
    $("toolkit-describe-set").hidden = !this.can.caption;
    this.syncPicker();
    this.tasks.setTools({ ...this.can });
  }

  /** The chosen model of a picker, or "" where the server has no choice to make (one model, or none). */
  chosen(id) {
    return $(`${id}-field`).hidden ? "" : $(id).value;
  }

  /** The model a task will run with, for its caption: the chosen one, else the server's only one. */
  modelFor(id, kind) {
    return this.chosen(id) || preferred(this.models[kind]);
  }

  // ------------------------------------------------------------ the generate form's "Restore faces"

  faceRestoreToggled() {
    $("face-restore-options").hidden = !(this.can.faces && $("face-restore").checked);
  }

  /** GenerateImagesSDXL's FaceRestore from the form, or null when it is off (or the server has no face
   * models: the toggle is hidden then). Throws a FieldError for a bad strength. */
  faceRestore() {
    if (!this.can.faces || !$("face-restore").checked) return null;
    const fix = { RestoreStrength: this.number("face-strength", "Face restore strength") };
    if (this.chosen("face-model")) fix.FaceModel = this.chosen("face-model");
    if (this.chosen("face-detect-model")) fix.FaceDetectModel = this.chosen("face-detect-model");
    return fix;
  }

  /** The form's face settings, for "reuse these settings". */
  snapshot() {
    return $("face-restore").checked ? { strength: $("face-strength").value } : null;
  }

  restore(saved) {
    $("face-restore").checked = Boolean(saved);
    if (saved?.strength !== undefined) $("face-strength").value = saved.strength;
    this.faceRestoreToggled();
  }

  // ------------------------------------------------------------ the panel's image

  /** An image of this device, as the panel's image. */
  async setFile(file) {
    this.clearError($("toolkit-image"));
    try {
      if (!file) throw new Error("Choose an image (PNG, JPEG or WebP)");
      const read = await readImage(file);
      this.setImage({ name: read.name, src: read.dataUrl, send: read.dataUrl, ref: null, width: read.width, height: read.height });
      announce(`Image ${read.name}, ${read.width} × ${read.height}, ready.`);
    } catch (error) {
      $("toolkit-image").value = "";
      this.showFieldError("toolkit-image", error.message);
    }
  }

  /** A gallery image as the panel's image: shown from its URL, sent by its TaskUID. */
  async useGallery({ ref, url, label }) {
    const { width, height } = await imageSize(url);
    $("toolkit-image").value = "";
    this.setImage({ name: label, src: url, send: ref, ref, width, height });
  }

  setImage(image) {
    this.image = image;
    this.points = [];
    this.cursor = { x: Math.floor(image.width / 2), y: Math.floor(image.height / 2) };
    const preview = $("toolkit-preview");
    preview.src = image.src;
    preview.alt = `${image.name}, ${image.width} × ${image.height}`;
    $("toolkit-picker").style.setProperty("--ratio", String(image.width / image.height));
    $("toolkit-picker").dataset.width = String(image.width);
    $("toolkit-picker").dataset.height = String(image.height);
    $("toolkit-view").hidden = false;
    $("toolkit-name").textContent = image.ref
      ? `Gallery image: ${image.name}, ${image.width} × ${image.height} (sent by its TaskUID).`
      : `${image.name}, ${image.width} × ${image.height}.`;
    this.clearError($("toolkit-image"));
    this.renderPoints();
  }

  async setBackgroundFile(file) {
    this.clearError($("toolkit-bg-image"));
    if (!file) return this.removeBackgroundImage();
    try {
      this.backgroundImage = await readImage(file);
      const b = this.backgroundImage;
      $("toolkit-bg-image-name").textContent = `${b.name}, ${b.width} × ${b.height}.`;
      $("toolkit-bg-image-remove").hidden = false;
    } catch (error) {
      this.removeBackgroundImage();
      this.showFieldError("toolkit-bg-image", error.message);
    }
  }

  removeBackgroundImage() {
    this.backgroundImage = null;
    $("toolkit-bg-image").value = "";
    $("toolkit-bg-image-name").textContent = "";
    $("toolkit-bg-image-remove").hidden = true;
  }

  // ------------------------------------------------------------ the points

  /** Whether clicks on the image add points (the server segments by points, and there is an image). */
  picking() {
    return this.can.segment && this.image !== null;
  }

  /** The image's pixel under a pointer event (the displayed image scaled to the image's own size). */
  pixelAt(event) {
    const box = $("toolkit-preview").getBoundingClientRect();
    const { width, height } = this.image;
    return {
      x: clamp(Math.floor(((event.clientX - box.left) / box.width) * width), 0, width - 1),
      y: clamp(Math.floor(((event.clientY - box.top) / box.height) * height), 0, height - 1),
    };
  }

  addPoint(x, y, include) {
    this.clearError($("toolkit-picker"));
    const others = this.points.filter((p) => !(p.x === x && p.y === y)); // a point again: its kind changes
    if (others.filter((p) => p.include === include).length >= MAX_POINTS) {
      this.showFieldError("toolkit-picker", `At most ${MAX_POINTS} ${include ? "include" : "exclude"} points`);
      return;
    }
    this.points = [...others, { x, y, include }];
    this.cursor = { x, y };
    this.renderPoints(`${include ? "Include" : "Exclude"} point at ${x}, ${y}.`);
  }

  undoPoint() {
    if (!this.points.length) return;
    const last = this.points.pop();
    this.renderPoints(`Removed the ${last.include ? "include" : "exclude"} point at ${last.x}, ${last.y}.`);
  }

  clearPoints() {
    this.points = [];
    this.renderPoints("Points cleared.");
  }

  /** The dots over the image (green: include, red: exclude) and the count line (read out as it changes). */
  renderPoints(last = "") {
    const image = this.image;
    const at = (element, x, y) => {
      element.style.left = `${((x + 0.5) / image.width) * 100}%`;
      element.style.top = `${((y + 0.5) / image.height) * 100}%`;
    };
    $("toolkit-dots").replaceChildren(
      ...this.points.map((p) => {
        const dot = h("li", { class: `point ${p.include ? "include" : "exclude"}`, dataset: { x: String(p.x), y: String(p.y) } });
        at(dot, p.x, p.y);
        return dot;
      }),
    );
    if (image) at($("toolkit-cursor"), this.cursor.x, this.cursor.y);
    const include = this.points.filter((p) => p.include).length;
    const exclude = this.points.length - include;
    $("toolkit-points").textContent = this.points.length
      ? `${plural(include, "include point")}, ${plural(exclude, "exclude point")}.${last ? ` ${last}` : ""}`
      : last || "No points yet.";
    $("toolkit-points-undo").disabled = !this.points.length;
    $("toolkit-points-clear").disabled = !this.points.length;
    this.syncPicker();
  }

  /** The image takes clicks and keys only where points can be picked. */
  syncPicker() {
    const picker = $("toolkit-picker");
    const picking = this.picking();
    picker.classList.toggle("picking", picking);
    picker.tabIndex = picking ? 0 : -1;
    picker.setAttribute("aria-label", picking ? "The image: click to add points" : "The image");
  }

  /** Keys on the image: arrows move the crosshair (Shift: five times as far), Enter or Space adds an
   * include point there (with Shift an exclude point), Backspace or Delete removes the last point. */
  pickerKey(event) {
    if (!this.picking() || event.ctrlKey || event.metaKey || event.altKey) return;
    const { width, height } = this.image;
    const step = Math.max(1, Math.round(Math.max(width, height) / 50)) * (event.shiftKey ? 5 : 1);
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (moves[event.key]) {
      const [dx, dy] = moves[event.key];
      this.cursor = { x: clamp(this.cursor.x + dx, 0, width - 1), y: clamp(this.cursor.y + dy, 0, height - 1) };
      this.renderPoints();
    } else if (event.key === "Enter" || event.key === " ") {
      this.addPoint(this.cursor.x, this.cursor.y, !event.shiftKey);
    } else if (event.key === "Backspace" || event.key === "Delete") {
      this.undoPoint();
    } else return;
    event.preventDefault();
    event.stopPropagation(); // not the mask painter's keys
  }

  // ------------------------------------------------------------ requests

  number(id, label) {
    const raw = $(id).value.trim();
    const value = Number(raw);
    if (raw === "" || !Number.isFinite(value)) throw new FieldError(id, `${label}: enter a number`);
    return value;
  }

  needImage() {
    if (!this.image) throw new FieldError("toolkit-image", "Choose an image to work on first (or use a gallery image's button)");
  }

  /** The panel's control of a refused field (none where that control is hidden: the message goes under
   * the panel), else the generate form's (a new background's MainModel, Seed, …). */
  controlFor(path) {
    const id = PANEL_FIELDS.find(([pattern]) => pattern.test(path))?.[1];
    if (id) return $(id) && !$(id).closest("[hidden]") ? id : null;
    return this.formControlFor(path);
  }

  clearErrors() {
    clearErrorsIn($("toolkit"), "toolkit-error");
  }

  clearError(control) {
    clearFieldError(control);
  }

  /** The panel's checks before anything is sent: a field's error by its field, else under the panel. */
  checked(build) {
    this.clearErrors();
    try {
      return build();
    } catch (error) {
      if (error instanceof FieldError) this.showFieldError(error.id, error.message);
      else $("toolkit-error").textContent = error.message;
      return null;
    }
  }

  /** Submit one task; its TaskUID (null when refused: the refusal is shown). */
  async submit(action, params, form, { button, controlFor, fallback }) {
    if (!this.client() && !(await this.connect())) return null;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      const uid = await this.client()[METHODS[action]](params);
      if (action === "DescribeImages") this.describing.add(uid);
      this.tasks.add(uid, form);
      announce(`Task ${uid} submitted: ${WHAT[action]}.`);
      return uid;
    } catch (error) {
      this.showError(error, { controlFor, fallback });
      return null;
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  panelOptions(button) {
    return { button, controlFor: (path) => this.controlFor(path), fallback: $("toolkit-error") };
  }

  faceParams(send) {
    const params = { RawImage: send, RestoreStrength: this.number("toolkit-face-strength", "Restore strength") };
    if (this.chosen("toolkit-face-model")) params.FaceModel = this.chosen("toolkit-face-model");
    if (this.chosen("toolkit-face-detect-model")) params.FaceDetectModel = this.chosen("toolkit-face-detect-model");
    return params;
  }

  describeParams(send) {
    const params = { ImageList: [send], TranslateDescription: $("toolkit-language").value };
    if (this.chosen("toolkit-caption-model")) params.CaptionModel = this.chosen("toolkit-caption-model");
    return params;
  }

  faceForm(params, ref, source) {
    return { tool: "faces", ref, source, strength: params.RestoreStrength, model: this.modelFor("toolkit-face-model", "faces") };
  }

  describeForm(params, ref, source) {
    return { tool: "describe", ref, source, language: params.TranslateDescription, model: this.modelFor("toolkit-caption-model", "caption") };
  }

  /** RestoreFaces of the panel's image. */
  async restoreFaces() {
    const request = this.checked(() => {
      this.needImage();
      const params = this.faceParams(this.image.send);
      return [params, this.faceForm(params, this.image.ref, this.image.name)];
    });
    if (request) await this.submit("RestoreFaces", ...request, this.panelOptions($("toolkit-faces")));
  }

  /** ExtractContents of the panel's image by its points. */
  async extract() {
    const request = this.checked(() => {
      this.needImage();
      const list = (include) => this.points.filter((p) => p.include === include).map((p) => ({ X: p.x, Y: p.y }));
      const include = list(true);
      const exclude = list(false);
      if (!include.length) throw new FieldError("toolkit-picker", "IncludePointList: click the object to cut out (a green point) first");
      const onlyMask = $("toolkit-only-mask").checked;
      const params = {
        RawImage: this.image.send,
        IncludePointList: include,
        ErodeSize: this.number("toolkit-erode", "Erode size"),
        ForegroundThreshold: this.number("toolkit-foreground", "Foreground threshold"),
        BackgroundThreshold: this.number("toolkit-background", "Background threshold"),
        HairOptimization: $("toolkit-hair").value,
        OnlyMask: onlyMask,
      };
      if (exclude.length) params.ExcludePointList = exclude;
      if (this.chosen("toolkit-segment-model")) params.SegmentModel = this.chosen("toolkit-segment-model");
      const model = this.modelFor("toolkit-segment-model", "segment");
      const form = { tool: "extract", ref: this.image.ref, source: this.image.name, model, onlyMask, include: include.length, exclude: exclude.length };
      return [params, form];
    });
    if (request) await this.submit("ExtractContents", ...request, this.panelOptions($("toolkit-extract")));
  }

  /** DescribeImages of the panel's image; its text becomes the prompt when the task finishes (app.js). */
  async describe() {
    const request = this.checked(() => {
      this.needImage();
      const params = this.describeParams(this.image.send);
      return [params, this.describeForm(params, this.image.ref, this.image.name)];
    });
    if (request) await this.submit("DescribeImages", ...request, this.panelOptions($("toolkit-describe")));
  }

  /** GenerateBackgrounds: the panel's image as the transparent foreground, with the form's main model. */
  async newBackground() {
    const request = this.checked(() => {
      this.needImage();
      const prompt = $("toolkit-bg-prompt").value.trim();
      if (!prompt) throw new FieldError("toolkit-bg-prompt", "PositivePrompts: describe the background to paint");
      const foreground = { ImageIndex: 0 };
      const scale = $("toolkit-bg-scale").value.trim();
      if (scale !== "") foreground.Scale = this.number("toolkit-bg-scale", "Foreground scale");
      const params = { ...this.generation(), PositivePrompts: [prompt], ImageList: [this.image.send], TransparentForeground: foreground };
      if (this.backgroundImage) {
        params.ImageList.push(this.backgroundImage.dataUrl);
        params.BackgroundImage2Image = {
          ImageIndex: 1,
          ReferStrength: this.number("toolkit-bg-strength", "Background refer strength"),
          DeepFusion: $("toolkit-bg-fusion").checked,
        };
      }
      const form = {
        tool: "background",
        ref: this.image.ref,
        source: this.image.name,
        prompt,
        model: params.MainModel.ModelCode,
        backgroundImage: this.backgroundImage?.name || null,
      };
      return [params, form];
    });
    if (request) await this.submit("GenerateBackgrounds", ...request, this.panelOptions($("toolkit-bg-generate")));
  }

  /** Whether the description `uid` was asked for by this page (once: its text goes into the prompt when
   * it finishes; one that finished while the page was closed is only shown in the gallery). */
  awaited(uid) {
    return this.describing.delete(uid);
  }

  /** A gallery image's Restore faces or Describe (at once, by its TaskUID, with the panel's settings),
   * or its Cut out by clicks or New background (the image into the panel, to pick points or write
   * the background's prompt). */
  async fromGallery(kind, { ref, url, label, button }) {
    const fallback = $("gallery-error");
    fallback.textContent = "";
    if (kind === "faces" || kind === "describe") {
      let params;
      try {
        params = kind === "faces" ? this.faceParams(ref) : this.describeParams(ref);
      } catch (error) {
        fallback.textContent = error.message;
        return null;
      }
      const form = kind === "faces" ? this.faceForm(params, ref, label) : this.describeForm(params, ref, label);
      const options = { button, controlFor: () => null, fallback };
      return this.submit(kind === "faces" ? "RestoreFaces" : "DescribeImages", params, form, options);
    }
    try {
      await this.useGallery({ ref, url, label });
    } catch (error) {
      fallback.textContent = `Could not load that image: ${error.message}`;
      return null;
    }
    const panel = $("toolkit");
    panel.open = true;
    const target = kind === "points" ? $("toolkit-picker") : $("toolkit-bg-prompt");
    const section = kind === "points" ? $("toolkit-points-set") : $("toolkit-background-set");
    target.focus({ preventScroll: true });
    const reduce = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    section.scrollIntoView({ block: "nearest", behavior: reduce ? "auto" : "smooth" });
    $("toolkit-view").scrollIntoView({ block: "nearest", behavior: reduce ? "auto" : "smooth" });
    announce(
      kind === "points"
        ? `${label} is in the panel: click the object to cut out, then Extract.`
        : `${label} is in the panel: describe the new background, then Generate background.`,
    );
    return null;
  }

  wire() {
    for (const id of ["face-model", "face-detect-model", "toolkit-face-model", "toolkit-face-detect-model", "toolkit-segment-model", "toolkit-caption-model"]) {
      $(id).addEventListener("change", () => {
        $(id).dataset.chosen = $(id).value;
      });
    }
    $("face-restore").addEventListener("change", () => this.faceRestoreToggled());
    $("toolkit-image").addEventListener("change", () => {
      const file = $("toolkit-image").files[0];
      if (file) this.setFile(file);
    });
    $("toolkit-bg-image").addEventListener("change", () => this.setBackgroundFile($("toolkit-bg-image").files[0]));
    $("toolkit-bg-image-remove").addEventListener("click", () => {
      this.removeBackgroundImage();
      $("toolkit-bg-image").focus();
    });
    const picker = $("toolkit-picker");
    // a left click: an include point (with Shift an exclude point); a right click: an exclude point
    picker.addEventListener("click", (event) => {
      if (!this.picking()) return;
      const { x, y } = this.pixelAt(event);
      this.addPoint(x, y, !event.shiftKey);
    });
    picker.addEventListener("contextmenu", (event) => {
      if (!this.picking()) return;
      event.preventDefault();
      const { x, y } = this.pixelAt(event);
      this.addPoint(x, y, false);
    });
    picker.addEventListener("keydown", (event) => this.pickerKey(event));
    picker.addEventListener("focus", () => {
      $("toolkit-cursor").hidden = !this.picking();
    });
    picker.addEventListener("blur", () => {
      $("toolkit-cursor").hidden = true;
    });
    $("toolkit-points-undo").addEventListener("click", () => this.undoPoint());
    $("toolkit-points-clear").addEventListener("click", () => this.clearPoints());
    $("toolkit-faces").addEventListener("click", () => this.restoreFaces());
    $("toolkit-extract").addEventListener("click", () => this.extract());
    $("toolkit-describe").addEventListener("click", () => this.describe());
    $("toolkit-bg-generate").addEventListener("click", () => this.newBackground());
    const panel = $("toolkit");
    panel.addEventListener("input", (event) => this.clearError(event.target));
    panel.addEventListener("change", (event) => this.clearError(event.target));
    dropTarget(panel, $("toolkit-drop"), (files) => {
      panel.open = true;
      const file = [...files].find((f) => IMAGE_TYPES.has(f.type)) || files[0];
      this.setFile(file);
    });
    this.renderPoints();
  }
}
