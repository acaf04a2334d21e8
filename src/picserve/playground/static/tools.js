// Upscale (ResizeImage) and Remove background (RemoveBackground, RemoveBackgroundsInBatch). A gallery
// image is sent by its TaskUID (`task:<TaskUID>/<index>`, picserve's chaining extension): the server
// takes the bytes from its own store. The tools panel sends images of this device as base64 data URIs.
// Their tasks are followed and shown by gallery.js like generations (`form.tool` says which).

import { $, clearErrorsIn, clearFieldError, IMAGE_TYPES, announce, dropTarget, h, readImage } from "./dom.js";

/** The upscaler that is no model: a plain resample, always available. */
export const LANCZOS = "Lanczos";
/** RemoveBackgroundsInBatch's limit, and so the panel's */
export const MAX_IMAGES = 16;

/** An earlier result, named instead of sent: the `index`-th image (0-based) of a finished task. */
export function taskRef(uid, index) {
  return `task:${uid}/${index}`;
}

/** The usable models of a ListModels map (those without a Problem), by ModelCode. */
export function usable(table) {
  return Object.values(table || {})
    .filter((m) => !m.Problem)
    .sort((a, b) => a.ModelCode.localeCompare(b.ModelCode));
}

function upscalerLabel(model) {
  const about = [model.Scale ? `${model.Scale}×` : null, model.Architecture].filter(Boolean).join(", ");
  return `${model.ModelCode}${about ? ` · ${about}` : ""}${model.IsDefault ? " (default)" : ""}`;
}

function backgroundLabel(model) {
  return `${model.ModelCode}${model.Session ? ` · ${model.Session}` : ""}${model.IsDefault ? " (default)" : ""}`;
}

/** `select`'s options: the one the user chose where it is still offered, else `fallback`. */
export function fill(select, options, fallback) {
  const previous = select.dataset.chosen;
  select.replaceChildren(...options.map(([value, label]) => h("option", { value }, label)));
  const values = options.map(([value]) => value);
  select.value = values.includes(previous) ? previous : values.includes(fallback) ? fallback : values[0] || "";
}

/** An API Message's field → the panel's control (RawImages[3] → the images). */
const PANEL_FIELDS = [
  [/^(Image|RawImages?)\b/, "tools-image"],
  [/^Scale/, "tools-scale"],
  [/^Width/, "tools-width"],
  [/^Height/, "tools-height"],
  [/^UpscaleModel/, "tools-upscaler"],
  [/^BackgroundModel/, "tools-background-model"],
  [/^ErodeSize/, "tools-erode"],
  [/^ForegroundThreshold/, "tools-foreground"],
  [/^BackgroundThreshold/, "tools-background"],
  [/^HairOptimization/, "tools-hair"],
  [/^OnlyMask/, "tools-only-mask"],
];

function panelControlFor(path) {
  return PANEL_FIELDS.find(([pattern]) => pattern.test(path))?.[1] || null;
}

class FieldError extends Error {
  constructor(id, message) {
    super(message);
    this.id = id;
  }
}

export class Tools {
  /**
   * `client()`: the connected Client or null; `connect()`: connects, resolves to whether it did;
   * `tasks`: gallery.js's Tasks; `showError(error, { controlFor, fallback })` and
   * `showFieldError(id, message)`: app.js's, which show a message by its field.
   */
  constructor({ client, connect, tasks, showError, showFieldError }) {
    this.client = client;
    this.connect = connect;
    this.tasks = tasks;
    this.showError = showError;
    this.showFieldError = showFieldError;
    /** the panel's images: [{ name, dataUrl, width, height }] */
    this.files = [];
    this.setModels(null);
    this.wire();
  }

  /** Whether `target` is in the tools panel (a paste there is its image, Ctrl+Enter no generation). */
  owns(target) {
    return target instanceof Node && $("tools").contains(target);
  }

  /** ListModels' upscalers and background models into the pickers (null: not connected yet). */
  setModels(models) {
    const connected = models !== null;
    const upscalers = usable(models?.UpscaleModels);
    const backgrounds = usable(models?.BackgroundModels);
    const upscalerOptions = [
      ...upscalers.map((m) => [m.ModelCode, upscalerLabel(m)]),
      [LANCZOS, "Lanczos (no model: a plain resample)"],
    ];
    // the server's default: the one marked so (a sidecar, a setting, or the only one), else Lanczos
    const upscaler = upscalers.find((m) => m.IsDefault)?.ModelCode || LANCZOS;
    fill($("tools-upscaler"), upscalerOptions, upscaler);
    fill($("quick-upscaler"), upscalerOptions, upscaler);

    const backgroundOptions = backgrounds.map((m) => [m.ModelCode, backgroundLabel(m)]);
    const background = backgrounds.find((m) => m.IsDefault)?.ModelCode || backgrounds[0]?.ModelCode || "";
    if (!connected) backgroundOptions.push(["", "Connect to list the models"]);
    else if (!backgrounds.length) backgroundOptions.push(["", "No background model on this server"]);
    fill($("tools-background-model"), backgroundOptions, background);
    fill($("quick-background-model"), backgroundOptions, background);
    $("quick-background-field").hidden = backgrounds.length < 2; // one (or none): nothing to choose
    const cutout = backgrounds.length > 0;
    $("tools-no-background").hidden = !connected || cutout;
    for (const control of $("tools-cutout-set").querySelectorAll("input, select, button")) {
      control.disabled = connected && !cutout;
    }
    this.tasks.setTools({ cutout });
  }

  // ------------------------------------------------------------ submitting

  /** Submit one tool task; its TaskUID (null when refused: the refusal is shown). */
  async submit(kind, params, form, { button, controlFor, fallback }) {
    if (!this.client() && !(await this.connect())) return null;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      const client = this.client();
      const uid = kind === "upscale" ? await client.resizeImage(params) : await client.removeBackground(params);
      this.tasks.add(uid, form);
      announce(`Task ${uid} submitted: ${kind === "upscale" ? "an upscale" : "a cut-out"}.`);
      return uid;
    } catch (error) {
      this.showError(error, { controlFor, fallback });
      return null;
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  /** A gallery image's Upscale or Remove background: by its TaskUID, with the gallery's choices. */
  async fromGallery(kind, { ref, label, button }) {
    const fallback = $("gallery-error");
    fallback.textContent = "";
    const options = { button, controlFor: () => null, fallback };
    if (kind === "upscale") {
      const scale = Number($("quick-scale").value);
      const model = $("quick-upscaler").value || LANCZOS;
      const form = { tool: "upscale", ref, source: label, scale, model };
      return this.submit(kind, { Image: ref, Scale: scale, UpscaleModel: model }, form, options);
    }
    const model = $("quick-background-model").value;
    const params = { RawImage: ref };
    if (model) params.BackgroundModel = model;
    return this.submit(kind, params, { tool: "cutout", ref, source: label, model }, options);
  }

  // ------------------------------------------------------------ the panel

  clearErrors() {
    clearErrorsIn($("tools"), "tools-error");
  }

  clearError(control) {
    clearFieldError(control);
  }

  /** The panel's images: PNG, JPEG or WebP files, up to 16 (FileList or array). */
  async setFiles(list) {
    this.clearError($("tools-image"));
    const files = [...(list || [])];
    try {
      if (!files.length) throw new Error("Choose an image (PNG, JPEG or WebP)");
      if (files.length > MAX_IMAGES) throw new Error(`${files.length} files: at most ${MAX_IMAGES} at a time`);
      const bad = files.find((f) => !IMAGE_TYPES.has(f.type));
      if (bad) throw new Error(`${bad.name} is not a PNG, JPEG or WebP image`); // before reading any
      const read = [];
      for (const file of files) read.push(await readImage(file));
      this.files = read;
    } catch (error) {
      this.files = [];
      $("tools-image").value = "";
      this.showFiles();
      this.showFieldError("tools-image", error.message);
      return;
    }
    this.showFiles();
    this.syncSize();
    const first = this.files[0];
    announce(
      this.files.length === 1
        ? `Image ${first.name}, ${first.width} × ${first.height}, ready to upscale or cut out.`
        : `${this.files.length} images ready to upscale or cut out.`,
    );
  }

  showFiles() {
    const first = this.files[0];
    $("tools-name").textContent = !first
      ? ""
      : this.files.length === 1
        ? `${first.name}, ${first.width} × ${first.height}.`
        : `${this.files.length} images: ${this.files.map((f) => f.name).join(", ")}.`;
    $("tools-previews").replaceChildren(
      ...this.files.map((f) => h("li", {}, h("img", { src: f.dataUrl, alt: `${f.name}, ${f.width} × ${f.height}` }))),
    );
  }

  bySize() {
    return $("tools-by-size").checked;
  }

  /** Scale mode: the output size shown (greyed) in Width and Height; size mode: those fields editable. */
  syncSize() {
    const bySize = this.bySize();
    $("tools-scale").disabled = bySize;
    $("tools-width").disabled = !bySize;
    $("tools-height").disabled = !bySize;
    $("tools-keep-ratio").disabled = !bySize;
    const first = this.files[0];
    if (!first) return;
    if (!bySize) {
      const scale = Number($("tools-scale").value);
      if (Number.isFinite(scale) && scale > 0) {
        $("tools-width").value = Math.round(first.width * scale);
        $("tools-height").value = Math.round(first.height * scale);
      }
    } else if (!$("tools-width").value || !$("tools-height").value) {
      $("tools-width").value = first.width * 2;
      $("tools-height").value = first.height * 2;
    }
  }

  /** In size mode with "keep the aspect ratio", one side follows the other (the first image's shape). */
  followRatio(changed) {
    const first = this.files[0];
    if (!first || !this.bySize() || !$("tools-keep-ratio").checked) return;
    const value = Number($(changed).value);
    if (!Number.isFinite(value) || value <= 0) return;
    if (changed === "tools-width") $("tools-height").value = Math.round((value * first.height) / first.width);
    else $("tools-width").value = Math.round((value * first.width) / first.height);
  }

  number(id, label) {
    const raw = $(id).value.trim();
    const value = Number(raw);
    if (raw === "" || !Number.isFinite(value)) throw new FieldError(id, `${label}: enter a number`);
    return value;
  }

  needFiles() {
    if (!this.files.length) throw new FieldError("tools-image", "Choose an image to work on first");
  }

  /** The panel's checks before anything is sent: a field's error by the field, else under the panel. */
  checked(build) {
    this.clearErrors();
    try {
      return build();
    } catch (error) {
      if (error instanceof FieldError) this.showFieldError(error.id, error.message);
      else $("tools-error").textContent = error.message;
      return null;
    }
  }

  /** Upscale each image of the panel: one ResizeImage each (Scale, or Width and Height). */
  async upscale() {
    const requests = this.checked(() => {
      this.needFiles();
      const model = $("tools-upscaler").value || LANCZOS;
      if (!this.bySize()) {
        const scale = this.number("tools-scale", "Scale");
        return this.files.map((f) => [
          { Image: f.dataUrl, Scale: scale, UpscaleModel: model },
          { tool: "upscale", source: f.name, scale, model },
        ]);
      }
      const width = this.number("tools-width", "Output width");
      const height = this.number("tools-height", "Output height");
      const keep = $("tools-keep-ratio").checked;
      return this.files.map((f) => {
        // several images keep their own shapes at the width asked for
        const tall = keep && this.files.length > 1 ? Math.round((width * f.height) / f.width) : height;
        return [
          { Image: f.dataUrl, Width: width, Height: tall, UpscaleModel: model },
          { tool: "upscale", source: f.name, width, height: tall, model },
        ];
      });
    });
    if (!requests) return;
    const options = { button: $("tools-upscale"), controlFor: panelControlFor, fallback: $("tools-error") };
    for (const [params, form] of requests) {
      if (!(await this.submit("upscale", params, form, options))) return;
    }
  }

  /** Cut out the panel's images: one RemoveBackground, or one RemoveBackgroundsInBatch for several. */
  async cutout() {
    const request = this.checked(() => {
      this.needFiles();
      const model = $("tools-background-model").value;
      const onlyMask = $("tools-only-mask").checked;
      const params = {
        ErodeSize: this.number("tools-erode", "Erode size"),
        ForegroundThreshold: this.number("tools-foreground", "Foreground threshold"),
        BackgroundThreshold: this.number("tools-background", "Background threshold"),
        HairOptimization: $("tools-hair").value,
        OnlyMask: onlyMask,
      };
      if (model) params.BackgroundModel = model;
      const names = this.files.map((f) => f.name);
      if (this.files.length === 1) params.RawImage = this.files[0].dataUrl;
      else params.RawImages = this.files.map((f) => f.dataUrl);
      return [params, { tool: "cutout", source: names.join(", "), sources: names, model, onlyMask }];
    });
    if (!request) return;
    const [params, form] = request;
    await this.submit("cutout", params, form, { button: $("tools-cutout"), controlFor: panelControlFor, fallback: $("tools-error") });
  }

  wire() {
    for (const id of ["tools-upscaler", "quick-upscaler", "tools-background-model", "quick-background-model"]) {
      $(id).addEventListener("change", () => {
        $(id).dataset.chosen = $(id).value;
      });
    }
    $("tools-image").addEventListener("change", () => this.setFiles($("tools-image").files));
    for (const id of ["tools-by-scale", "tools-by-size"]) $(id).addEventListener("change", () => this.syncSize());
    $("tools-scale").addEventListener("input", () => this.syncSize());
    $("tools-width").addEventListener("input", () => this.followRatio("tools-width"));
    $("tools-height").addEventListener("input", () => this.followRatio("tools-height"));
    $("tools-upscale").addEventListener("click", () => this.upscale());
    $("tools-cutout").addEventListener("click", () => this.cutout());
    const panel = $("tools");
    panel.addEventListener("input", (event) => this.clearError(event.target));
    panel.addEventListener("change", (event) => this.clearError(event.target));
    // files dropped anywhere on the panel
    dropTarget(panel, $("tools-drop"), (files) => {
      panel.open = true;
      this.setFiles(files);
    });
  }
}
